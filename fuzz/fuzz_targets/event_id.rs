#![no_main]
//! Any bytes as a Last-Event-ID header value.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| palisade_fuzz::check_event_id(data));
