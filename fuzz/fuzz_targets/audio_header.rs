//! Binary audio frames: `AudioFrame::parse` and `parse_pcm` accept exactly the frames the spec
//! allows, round-trip them byte for byte, and refuse the rest with the spec's error code.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| mixer_protocol::fuzzing::audio_frame(data));
