#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(t) = std::str::from_utf8(data) {
        if let Some(n) = ha_sidecar::parsers::cursor(t) {
            assert!(n <= t.len());
        }
    }
});
