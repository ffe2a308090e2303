#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(n) = ha_sidecar::parsers::wire_batch(data) {
        assert!(n <= data.len());
    }
});
