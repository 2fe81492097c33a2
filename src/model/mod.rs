//! The classifier seam and everything about model files: the `Classifier`
//! trait the daemon calls, labels, the exporter's manifest, and the tract
//! implementation. tract's API changes between releases, so every tract
//! type stays in `tract.rs`.

mod attention;
pub mod canon;
mod config;
pub mod install;
mod lines;
pub mod manifest;
mod onnx;
mod passes;
mod patches;
mod placeholder;
mod qgemm;
pub mod qlinear;
mod tract;
mod workers;

use std::path::{Path, PathBuf};

pub use self::config::ModelConfig;
pub use self::passes::PassReport;
#[doc(hidden)]
pub use self::qgemm::{bench_layer, int8_kernels, int8_peaks};

/// For `fuzz/fuzz_targets/onnx.rs`: lookout's own reading of an ONNX file
/// (the piecewise reader and the searches for the layers and blocks it
/// replaces), without tract. Returns how many int8 groups and attention
/// blocks it found.
#[doc(hidden)]
pub fn inspect_onnx(path: &Path) -> Result<(usize, usize), String> {
    let lazy = onnx::LazyModel::open(path).map_err(|e| e.to_string())?;
    let groups = qlinear::count(&lazy);
    let blocks = attention::count(&lazy);
    lazy.into_proto(&Default::default()).map_err(|e| e.to_string())?;
    Ok((groups, blocks))
}
pub use self::tract::{
    kernel_summary, lookout_attention, lookout_int8_kernel, LoadOptions, LoadReport, OpTime, TractClassifier,
    POOL_THREAD_PREFIX, TRACT_VERSION,
};

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{path}: cannot load the model: {reason}")]
    Load { path: PathBuf, reason: String },
    #[error("{path}: {reason}")]
    Shape { path: PathBuf, reason: String },
    #[error("{path}: has {labels} labels but the model outputs {outputs} classes; use the labels file exported with the model")]
    LabelCount { path: PathBuf, labels: usize, outputs: usize },
    #[error("{path}: cannot read the labels: {reason}")]
    Labels { path: PathBuf, reason: String },
    #[error("{path}: sha256 is {actual} but its manifest says {expected}; the manifest belongs to another model (copy both from the same export, or set model.verify_sha256 = false)")]
    Checksum { path: PathBuf, expected: String, actual: String },
    #[error("inference failed: {0}")]
    Run(String),
}

/// What the rest of the daemon knows about a loaded model.
#[derive(Debug, Clone, Default)]
pub struct ModelInfo {
    /// From the manifest, else the file name.
    pub name: String,
    /// From the manifest when there is one (and checked against the file).
    pub sha256: Option<String>,
    /// Square input side in pixels.
    pub input_size: u32,
    pub labels: Vec<String>,
    /// Width of the embedding output (the pooled features custom classes
    /// compare), when the model has one.
    pub embedding_width: Option<usize>,
}

/// A loaded image classifier. `input_mut` exposes the model's own input
/// buffer so preprocessing writes into it without a copy.
pub trait Classifier {
    fn info(&self) -> &ModelInfo;
    /// NCHW f32, `3 * input_size^2` values.
    fn input_mut(&mut self) -> &mut [f32];
    /// Runs the model on the input buffer; returns one logit per label.
    fn infer(&mut self) -> Result<Vec<f32>, ModelError>;
    /// The embedding the last successful `infer` computed (`embedding_width`
    /// values), for models that have one. A borrow of the classifier's own
    /// buffer, so asking costs nothing per frame.
    fn embedding(&self) -> Option<&[f32]> {
        None
    }
}

/// One label per line; a trailing newline is not an extra label.
pub fn load_labels(path: &Path) -> Result<Vec<String>, ModelError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ModelError::Labels { path: path.to_owned(), reason: e.to_string() })?;
    let labels: Vec<String> = text.lines().map(|l| l.trim_end_matches('\r').to_string()).collect();
    if let Some(n) = labels.iter().position(|l| l.trim().is_empty()) {
        return Err(ModelError::Labels { path: path.to_owned(), reason: format!("line {} is empty", n + 1) });
    }
    Ok(labels)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inspecting_the_digits_model_finds_its_layers_and_blocks() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        assert_eq!(inspect_onnx(&root.join("models/digits/digits-int8.onnx")), Ok((17, 4)));
        // The fuzz target's seed: one dynamically quantized Linear (onnxruntime).
        assert_eq!(inspect_onnx(&root.join("tests/fixtures/fuzz/onnx-qlinear.onnx")), Ok((1, 0)));
    }

    /// Inputs the fuzzer (fuzz/fuzz_targets/onnx.rs) found crashing, kept
    /// in tests/fixtures/fuzz/: each must now read without a panic.
    #[test]
    fn onnx_files_the_fuzzer_found_crashing_are_read() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        // onnx-qlinear.onnx with the Cast's output list emptied.
        let r = inspect_onnx(&root.join("tests/fixtures/fuzz/onnx-cast-without-output.onnx"));
        assert_eq!(r, Ok((0, 0)), "nothing to replace in a malformed layer");
    }

    #[test]
    fn labels_are_lines_and_blank_lines_are_errors() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("l.txt");
        std::fs::write(&p, "tench, Tinca tinca\r\ngoldfish\n").unwrap();
        assert_eq!(load_labels(&p).unwrap(), vec!["tench, Tinca tinca", "goldfish"]);
        std::fs::write(&p, "a\n\nb\n").unwrap();
        assert!(load_labels(&p).unwrap_err().to_string().contains("line 2 is empty"));
    }
}
