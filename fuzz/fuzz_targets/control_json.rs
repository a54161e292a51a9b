//! Control JSON: parse any text as a client (and a server) message, validate what parses as the
//! server would, and check that parsed messages survive a serialise/parse round trip.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| mixer_protocol::fuzzing::control_json(data));
