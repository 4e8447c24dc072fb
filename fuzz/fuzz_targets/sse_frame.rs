#![no_main]
//! Any text (and id) framed as an event-stream event, read back by a spec parser.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (Option<i64>, String)| palisade_fuzz::check_sse_frame(input.0, &input.1));
