#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    assert!(ha_sidecar::parsers::outbox_segment(data) <= data.len());
    assert!(ha_sidecar::parsers::event_segment(data) <= data.len());
    assert!(ha_sidecar::parsers::journal(data) <= data.len());
});
