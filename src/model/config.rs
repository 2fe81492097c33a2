//! What the model is, as the config resolves it (`[model]`, filled in from
//! the model's manifest): the file, its labels, how to prepare its input,
//! how to run it.

use std::path::PathBuf;

use serde::Serialize;

use super::manifest::Manifest;
use crate::preprocess::PreprocessParams;

#[derive(Debug, Clone, Serialize)]
pub struct ModelConfig {
    pub path: PathBuf,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub manifest_path: Option<PathBuf>,
    /// The manifest as read, kept for the model name and sha256 it carries.
    #[serde(skip)]
    pub manifest: Option<Manifest>,
    /// `None` only for a bare ONNX file (`lookout bench --model`): its
    /// outputs are then named by their index. A config always has labels.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub labels: Option<PathBuf>,
    /// Square input side; `None` means "whatever the ONNX file declares".
    #[serde(skip_serializing_if = "Option::is_none")]
    pub input_size: Option<u32>,
    /// The model's preprocessing; the region of interest and centre crop
    /// here are the defaults of views without their own.
    pub preprocess: PreprocessParams,
    pub top_k: usize,
    /// Inference threads; 0 = one per core.
    pub threads: usize,
    pub verify_sha256: bool,
}

impl ModelConfig {
    /// A model file alone: no manifest, no labels, the default
    /// preprocessing, the input size the file declares.
    pub fn bare(path: PathBuf) -> ModelConfig {
        ModelConfig {
            path,
            manifest_path: None,
            manifest: None,
            labels: None,
            input_size: None,
            preprocess: PreprocessParams::default(),
            top_k: 5,
            threads: 0,
            verify_sha256: false,
        }
    }

    /// The model's name: the manifest's, else the file's stem.
    pub fn display_name(&self) -> String {
        match &self.manifest {
            Some(m) => m.name.clone(),
            None => self.path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default(),
        }
    }
}
