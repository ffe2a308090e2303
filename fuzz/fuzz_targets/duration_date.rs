#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(t) = std::str::from_utf8(data) {
        let _ = ha_sidecar::parsers::duration(t);
        let _ = ha_sidecar::parsers::date(t);
        let _ = ha_sidecar::parsers::events_log(t);
    }
});
