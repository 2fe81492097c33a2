//! Custom classes: a user's own scenes ("garage door open", "bins out")
//! taught from a few pictures, on the board, without training.
//!
//! The model's embedding output (the pooled features before its classifier
//! head, [`crate::model::Classifier::embedding`]) is computed for every
//! frame anyway. A class is the mean of its examples' embeddings, a view
//! belongs to the most similar class by cosine similarity, or is `unknown`
//! when far from every class ([`prototypes`]). Examples live in a folder
//! with the picture the model saw, so a model change re-embeds them
//! ([`store`]). [`eval`] measures how well the classes separate;
//! [`teach_files`] is the one path from image files to examples, for
//! `lookout teach` and `lookout eval`.

pub mod eval;
pub mod prototypes;
pub mod store;

use std::path::{Path, PathBuf};

pub use self::prototypes::{CustomMatch, Prototypes};
pub use self::store::{ClassStore, ClassSummary, Example};

use crate::frame::Frame;
use crate::model::Classifier;
use crate::preprocess::{ColorRange, PreprocessParams, Preprocessor};
use crate::snapshot::{self, SnapshotError};

/// The label a view far from every class gets; no class may take it.
pub const UNKNOWN: &str = "unknown";

/// The longest side of an example's stored picture, unless the model's
/// input is larger: enough for a later, larger model to re-embed from
/// (about 15 KB at quality 90).
pub const EXAMPLE_SIDE: u32 = 256;
pub const EXAMPLE_QUALITY: u8 = 90;

#[derive(Debug, thiserror::Error)]
pub enum CustomError {
    #[error("bad class name {0:?}: class names are 1-64 letters, digits, spaces, '-' or '_', not starting or ending with a space (\"unknown\" is reserved)")]
    BadName(String),
    #[error("no class {class:?} (classes: {known})")]
    NoClass { class: String, known: String },
    #[error("no example {0} (see the list of classes)")]
    NoExample(u64),
    #[error("cannot use this example: {0}")]
    BadEmbedding(String),
    #[error("model {model} has no embedding output, which custom classes compare; re-export it with tools/export_model.py (it writes one by default) and copy the .onnx with its manifest")]
    NoEmbedding { model: String },
    #[error("model {model} has no sha256 (no manifest beside it); custom classes need one to tell models apart: export it with tools/export_model.py")]
    NoModelHash { model: String },
    #[error("{path}: {reason}")]
    Io { path: PathBuf, reason: String },
    #[error("{path}: corrupt example file: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("{path}: cannot re-embed: {reason}; remove the example (forget) and teach it again")]
    Reembed { path: PathBuf, reason: String },
    #[error("{path}: {reason}")]
    Image { path: PathBuf, reason: String },
    #[error("{path}: cannot read image: {reason}")]
    Unreadable { path: PathBuf, reason: String },
    #[error("{0}")]
    Eval(String),
}

/// Class names become folder names, MQTT payloads and Home Assistant
/// states: short, letters and digits ("Tür offen" too), never a path. The
/// same rule as the `teach` command's (src/command.rs).
pub fn check_class_name(name: &str) -> Result<(), CustomError> {
    let ok = (1..=64).contains(&name.len())
        && name.trim() == name
        && name.chars().all(|c| c.is_alphanumeric() || " -_".contains(c))
        && name != UNKNOWN;
    if ok {
        Ok(())
    } else {
        Err(CustomError::BadName(name.to_owned()))
    }
}

/// Checks that `classifier` can serve custom classes; returns the model's
/// sha256, which the store keys embeddings by.
pub fn model_key(classifier: &dyn Classifier) -> Result<String, CustomError> {
    let info = classifier.info();
    if info.embedding_width.is_none() {
        return Err(CustomError::NoEmbedding { model: info.name.clone() });
    }
    info.sha256.clone().ok_or_else(|| CustomError::NoModelHash { model: info.name.clone() })
}

/// Runs a frame through the real path (the model's preprocessing, one
/// inference); returns its embedding and the logits.
pub fn embed_frame(
    classifier: &mut dyn Classifier,
    pre: &mut Preprocessor,
    frame: &Frame,
) -> Result<(Vec<f32>, Vec<f32>), CustomError> {
    let image_err = |reason: String| CustomError::Image { path: frame.origin.clone().into(), reason };
    pre.run(frame, classifier.input_mut()).map_err(|e| image_err(e.to_string()))?;
    let logits = classifier.infer().map_err(|e| image_err(e.to_string()))?;
    let embedding = classifier
        .embedding()
        .ok_or_else(|| CustomError::NoEmbedding { model: classifier.info().name.clone() })?
        .to_vec();
    Ok((embedding, logits))
}

/// Reads an image file into an encoded frame.
pub fn read_image(path: &Path) -> Result<Frame, CustomError> {
    let data =
        std::fs::read(path).map_err(|e| CustomError::Unreadable { path: path.to_owned(), reason: e.to_string() })?;
    Ok(Frame::encoded(0, data, path.display().to_string()))
}

/// One example `teach` stored.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Taught {
    pub image: PathBuf,
    pub id: u64,
    pub jpeg_bytes: usize,
}

/// Teaches `class` from image files: every file is decoded, preprocessed
/// and run through the model before any is stored, so a bad file teaches
/// nothing.
pub fn teach_files(
    classifier: &mut dyn Classifier,
    pre: &mut Preprocessor,
    params: &PreprocessParams,
    store: &mut ClassStore,
    class: &str,
    images: &[PathBuf],
) -> Result<Vec<Taught>, CustomError> {
    check_class_name(class)?;
    let side = EXAMPLE_SIDE.max(classifier.info().input_size);
    let mut ready = Vec::with_capacity(images.len());
    for path in images {
        let frame = read_image(path)?;
        let (embedding, _) = embed_frame(classifier, pre, &frame)?;
        let image_err = |e: SnapshotError| CustomError::Image { path: path.clone(), reason: e.to_string() };
        let view =
            snapshot::view_rgb(&frame, ColorRange::Full, params.roi, params.crop_fraction, side).map_err(image_err)?;
        let jpeg = snapshot::jpeg(&view, EXAMPLE_QUALITY).map_err(image_err)?;
        ready.push((path, embedding, jpeg));
    }
    ready
        .into_iter()
        .map(|(path, embedding, jpeg)| {
            let id = store.add(class, &embedding, &jpeg)?;
            Ok(Taught { image: path.clone(), id, jpeg_bytes: jpeg.len() })
        })
        .collect()
}

/// Recomputes the examples another model computed (see
/// [`ClassStore::reembed`]) with `classifier`; returns how many. A stored
/// picture is the model's view already, so it is taken whole: the model's
/// filter and normalization, no region of interest or crop.
pub fn reembed(
    classifier: &mut dyn Classifier,
    params: &PreprocessParams,
    store: &mut ClassStore,
) -> Result<usize, CustomError> {
    if store.needs_reembed() == 0 {
        return Ok(0);
    }
    let whole = PreprocessParams { roi: None, crop_fraction: 1.0, ..params.clone() };
    let mut pre = Preprocessor::new(&whole, classifier.info().input_size, ColorRange::Full);
    store.reembed(|jpeg| {
        let frame = Frame::encoded(0, jpeg.to_vec(), "example");
        embed_frame(classifier, &mut pre, &frame).map(|(e, _)| e).map_err(|e| e.to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn class_names_are_plain_and_unknown_is_reserved() {
        for ok in ["open", "car-in", "bins_out", "A1", "door open", "Tür offen", &"x".repeat(64)] {
            assert!(check_class_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "unknown", " a", "a ", "a/b", "..", ".hidden", "a\nb", &"x".repeat(65)] {
            assert!(check_class_name(bad).is_err(), "{bad}");
        }
    }
}
