#![no_main]
//! Any bytes as one policy file (the first byte picks which), the others as shipped.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some((which, text)) = data.split_first() {
        palisade_fuzz::check_policy(*which as usize, text);
    }
});
