//! The model manifest (JSON beside the ONNX file): accepted manifests
//! describe a model lookout can feed.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lookout::model::manifest::Manifest;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(m) = Manifest::parse(text) {
        assert!(m.input_size() > 0);
        assert_eq!(m.sha256.len(), 64);
    }
});
