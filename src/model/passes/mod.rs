//! lookout's own passes over tract's optimized model, through tract's
//! public API only (model patches and ops of our own), so a tract upgrade
//! touches this folder and `tract.rs` and nothing else.
//!
//! Each pass keeps the model's outputs: tests/it/inference.rs compares the
//! model with and without them.

mod fold;
mod quantize;

use tract_onnx::prelude::*;

/// What the passes changed, for the load log and `lookout bench`.
#[derive(Debug, Clone, Default)]
pub struct PassReport {
    /// Constant subgraphs evaluated once at load instead of every run.
    pub folded: usize,
    /// tract `DynamicQuantizeLinearU8` nodes replaced by ours.
    pub quantizers: usize,
    /// ONNX quantized linear layers run by lookout's int8 kernel
    /// (`model/qlinear.rs`, applied before tract parses the graph).
    pub fused: crate::model::qlinear::Rewritten,
    /// What lookout changed in the ONNX graph so that other exports of the
    /// same layers match its patterns (`model/canon/`).
    pub canonical: crate::model::canon::Canonical,
    /// Self-attention blocks run as lookout's fused op
    /// (`model/attention`, also applied before tract parses the graph).
    pub attention: usize,
    /// Patch-embedding convolutions run as lookout's op (`model/patches.rs`).
    pub patches: usize,
}

/// Runs every pass on a model tract has already optimized.
pub(crate) fn run(model: &mut TypedModel) -> TractResult<PassReport> {
    let folded = fold::fold_small_constants(model)?;
    let quantizers = quantize::replace_dynamic_quantize(model)?;
    Ok(PassReport { folded, quantizers, ..Default::default() })
}
