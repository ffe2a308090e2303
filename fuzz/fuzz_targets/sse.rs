#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first byte picks where the stream is cut into chunks.
    let (cut, bytes) = data.split_first().map_or((0, data), |(c, r)| (*c as usize, r));
    let cuts = [cut % (bytes.len() + 1)];
    let (msgs, data_bytes) = ha_sidecar::parsers::sse(bytes, &cuts);
    assert!(msgs <= bytes.len() / 2 + 1);
    // Invalid UTF-8 is replaced (U+FFFD, three bytes for one), as the SSE standard decodes.
    assert!(data_bytes <= 3 * bytes.len());
});
