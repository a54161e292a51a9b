//! The HTTP request head read before a WebSocket upgrade: the route never depends on how the
//! bytes were split into reads, and agrees with the pure `parse_head`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| mixer::fuzzing::http_head(data));
