//! ONNX files as lookout reads them itself, before tract: the piecewise
//! protobuf reader (`src/model/onnx.rs`) and the searches for the int8
//! layers and attention blocks it replaces. Any byte string gives a result
//! or an error, never a panic, and whatever is found was in the file.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let path = DIR.get_or_init(|| tempfile::tempdir().unwrap()).path().join("model.onnx");
    std::fs::write(&path, data).unwrap();
    if let Ok((groups, blocks)) = lookout::model::inspect_onnx(&path) {
        // A group is at least four nodes, a block eleven, each a few bytes.
        assert!(groups * 4 <= data.len() && blocks * 11 <= data.len(), "{groups} groups, {blocks} blocks");
    }
});
