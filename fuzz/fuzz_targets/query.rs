#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(q) = std::str::from_utf8(data) {
        if let Ok(n) = ha_sidecar::parsers::query(q) {
            assert!(n <= q.len() + 1);
        }
    }
});
