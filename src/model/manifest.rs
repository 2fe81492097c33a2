//! The manifest the exporter (`tools/export_model.py`) writes beside each
//! ONNX file: where the model came from and how its input must be prepared.
//! Reading it means a user copies one folder to the board and the config
//! needs only the model's path.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::preprocess::PreprocessParams;

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("{path}: cannot read the model manifest: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error("{path}: invalid model manifest: {reason} (re-export the model with tools/export_model.py)")]
    Invalid { path: PathBuf, reason: String },
}

/// The fields lookout uses; other fields (exporter versions, parameter
/// counts) are for people and are ignored.
#[derive(Debug, Clone, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub name: String,
    #[serde(default)]
    pub source: String,
    pub input: InputSpec,
    pub output: OutputSpec,
    /// The second output: the pooled image features before the classifier
    /// head, which custom classes compare (src/custom/). Absent in models
    /// exported without it; custom classes then say so.
    #[serde(default)]
    pub embedding: Option<OutputSpec>,
    pub preprocess: PreprocessParams,
    /// Relative to the manifest's folder.
    pub labels: PathBuf,
    #[serde(default)]
    pub quantization: String,
    /// Hex sha256 of the ONNX file, checked at load so a manifest never
    /// describes a different model than the one that runs.
    pub sha256: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct InputSpec {
    pub name: String,
    pub shape: [u32; 4],
}

#[derive(Debug, Clone, Deserialize)]
pub struct OutputSpec {
    pub name: String,
    pub width: usize,
}

impl Manifest {
    /// `model.onnx` -> `model.manifest.json`.
    pub fn path_beside(model: &Path) -> PathBuf {
        model.with_extension("manifest.json")
    }

    pub fn load(path: &Path) -> Result<Manifest, ManifestError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ManifestError::Read { path: path.to_owned(), reason: e.to_string() })?;
        Manifest::parse(&text).map_err(|reason| ManifestError::Invalid { path: path.to_owned(), reason })
    }

    pub fn parse(text: &str) -> Result<Manifest, String> {
        let m: Manifest = serde_json::from_str(text).map_err(|e| e.to_string())?;
        if m.format != 1 {
            return Err(format!("format {} is not supported (this lookout reads format 1)", m.format));
        }
        let [n, c, h, w] = m.input.shape;
        if n != 1 || c != 3 || h != w || h == 0 {
            return Err(format!("input shape {:?} is not [1, 3, S, S]", m.input.shape));
        }
        if m.output.width == 0 {
            return Err("output width is 0".into());
        }
        if m.embedding.as_ref().is_some_and(|e| e.width == 0) {
            return Err("embedding width is 0".into());
        }
        if m.sha256.len() != 64 || !m.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err("sha256 is not 64 hex digits".into());
        }
        Ok(m)
    }

    pub fn input_size(&self) -> u32 {
        self.input.shape[2]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_bundled_manifests() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/digits");
        for name in ["digits-fp32", "digits-int8"] {
            let m = Manifest::load(&dir.join(format!("{name}.manifest.json"))).unwrap();
            assert_eq!(m.name, name);
            assert_eq!(m.input_size(), 32);
            assert_eq!(m.output.width, 10);
            assert_eq!(m.embedding.as_ref().map(|e| (e.name.as_str(), e.width)), Some(("embedding", 64)));
            assert_eq!(m.labels, Path::new("labels.txt"));
        }
    }

    #[test]
    fn rejects_what_lookout_cannot_run() {
        let good = r#"{"format":1,"name":"x","input":{"name":"pixel_values","shape":[1,3,8,8]},
            "output":{"name":"logits","width":2},"preprocess":{"resize":"bilinear","crop_fraction":1.0,
            "mean":[0.5,0.5,0.5],"std":[0.5,0.5,0.5]},"labels":"l.txt","sha256":"SHA"}"#;
        let sha = "0".repeat(64);
        assert!(Manifest::parse(&good.replace("SHA", &sha)).is_ok());
        for (from, to, why) in [
            ("\"format\":1", "\"format\":2", "format 2"),
            ("[1,3,8,8]", "[1,3,8,9]", "is not [1, 3, S, S]"),
            ("\"width\":2", "\"width\":0", "output width is 0"),
            ("\"preprocess\"", "\"embedding\":{\"name\":\"e\",\"width\":0},\"preprocess\"", "embedding width is 0"),
            ("SHA", "abc", "64 hex digits"),
            ("\"bilinear\"", "\"lanczos\"", "unknown variant"),
        ] {
            let text = good.replace(from, to).replace("SHA", &sha);
            let e = Manifest::parse(&text).unwrap_err();
            assert!(e.contains(why), "{from}->{to}: {e}");
        }
    }
}
