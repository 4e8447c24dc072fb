#![no_main]
//! Any bytes as an API body (the first byte picks which: pre-chat, message, typing, login).
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some((kind, body)) = data.split_first() {
        palisade_fuzz::check_api_body(*kind, body);
    }
});
