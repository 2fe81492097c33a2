//! A faster ONNX `DynamicQuantizeLinear` (f32 -> u8, per tensor).
//!
//! tract's `DynamicQuantizeLinearU8` is a branchy scalar min/max fold and a
//! scalar quantize loop; in an int8 transformer it runs before every matmul
//! and took a fifth of the time. This op gives the same bytes: the same
//! min/max (starting from 0, NaN ignored), the same scale and zero point
//! formulas, and `x / scale` rounded half to even (the routines in
//! `model/qgemm`, which lookout's own int8 layers quantize with too), and
//! large tensors are split across the inference threads (`workers.rs`).

use crate::model::qgemm;
use crate::model::workers::{self, Workers};
use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;

/// Name of tract's op in `tract-onnx` (its type is private to that crate).
const TRACT_OP: &str = "DynamicQuantizeLinearU8";

#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub(crate) struct DynamicQuantizeU8;

impl Op for DynamicQuantizeU8 {
    fn name(&self) -> StaticName {
        "LookoutDynamicQuantizeU8".into()
    }

    op_as_typed_op!();
}

impl EvalOp for DynamicQuantizeU8 {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let input = inputs[0].cast_to::<f32>()?;
        let xs = input.try_as_plain_ram()?.as_slice::<f32>()?;
        let mut out = unsafe { Tensor::uninitialized_dt(u8::datum_type(), input.shape())? };
        let (scale, zero_point) = quantize(xs, out.try_as_plain_ram_mut()?.as_slice_mut::<u8>()?, &workers::current());
        Ok(tvec!(out.into_tvalue(), tensor0(scale).into_tvalue(), tensor0(zero_point).into_tvalue()))
    }
}

impl TypedOp for DynamicQuantizeU8 {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let mut quantized = inputs[0].clone();
        quantized.datum_type = u8::datum_type();
        quantized.konst = None;
        Ok(tvec!(quantized, f32::scalar_fact(), u8::scalar_fact()))
    }

    as_op!();
}

/// Replaces every tract `DynamicQuantizeLinearU8` by [`DynamicQuantizeU8`].
pub(crate) fn replace_dynamic_quantize(model: &mut TypedModel) -> TractResult<usize> {
    let ids: Vec<usize> = model.nodes.iter().filter(|n| n.op.name() == TRACT_OP).map(|n| n.id).collect();
    for &id in &ids {
        let node = &model.nodes[id];
        let patch = TypedModelPatch::replace_single_op(model, node, &node.inputs, DynamicQuantizeU8)?;
        patch.apply(model)?;
    }
    model.compact()?;
    Ok(ids.len())
}

/// Quantizes `xs` into `ys`; returns (scale, zero point) as ONNX defines them.
pub(crate) fn quantize(xs: &[f32], ys: &mut [u8], workers: &Workers) -> (f32, u8) {
    let (min, max) = qgemm::parallel_min_max(xs, workers, qgemm::min_max);
    let (scale, zp) = qgemm::scale_and_zero_point(min, max);
    let chunk = workers.share(xs.len(), xs.len());
    workers.each(xs.chunks(chunk).zip(ys.chunks_mut(chunk)), |(xs, ys)| qgemm::quantize_into(xs, ys, scale, zp));
    (scale, zp)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// tract-onnx's scalar reference, transcribed (its functions are private).
    fn reference(xs: &[f32]) -> (Vec<u8>, f32, u8) {
        let (min, max) = xs.iter().fold((0f32, 0f32), |(a, b), &v| {
            if v < a {
                (v, b)
            } else if v > b {
                (a, v)
            } else {
                (a, b)
            }
        });
        let scale = (max - min) / 255.0;
        let zp = (-min / scale).round_ties_even().clamp(0.0, 255.0) as u8;
        let ys = xs.iter().map(|x| (((x / scale).round_ties_even() as i32) + zp as i32).clamp(0, 255) as u8).collect();
        (ys, scale, zp)
    }

    fn check(xs: &[f32], workers: &Workers) {
        let (want, want_scale, want_zp) = reference(xs);
        let mut got = vec![0u8; xs.len()];
        let (scale, zp) = quantize(xs, &mut got, workers);
        assert_eq!((scale.to_bits(), zp), (want_scale.to_bits(), want_zp));
        let diff = got.iter().zip(&want).position(|(a, b)| a != b);
        assert_eq!(diff, None, "first difference at {diff:?} of {}", xs.len());
    }

    #[test]
    fn matches_the_onnx_examples() {
        // From the ONNX operator documentation, as in tract's own tests.
        let mut ys = [0u8; 6];
        let (scale, zp) = quantize(&[0., 2., -3., -2.5, 1.34, 0.5], &mut ys, &Workers::new(1, ""));
        assert_eq!(ys, [153, 255, 0, 26, 221, 179]);
        assert!((scale - 0.019_607_844).abs() < 1e-8);
        assert_eq!(zp, 153);
        let mut ys = [0u8; 3];
        quantize(&[-127., 128., 0.5], &mut ys, &Workers::new(1, ""));
        assert_eq!(ys, [0, 255, 127], "0.5 / 1.0 is a tie and rounds to even");
    }

    #[test]
    fn equals_the_scalar_reference_on_awkward_inputs_single_and_multi_threaded() {
        // A deterministic spread of magnitudes, ties and signs, long enough
        // to take the parallel path, and with an odd length for remainders.
        let mut xs: Vec<f32> = (0..(workers::PARALLEL_MIN * 3 + 7))
            .map(|i| {
                let t = (i as f32 * 0.618_034).fract() - 0.37;
                t * [1.0, 10.0, 0.01, 300.0][i % 4]
            })
            .collect();
        xs[5] = f32::NAN;
        xs[100] = -0.0;
        for workers in [Workers::new(1, ""), Workers::new(2, "test-w")] {
            check(&xs, &workers);
            check(&xs[..37], &workers);
            check(&[0.0; 40], &workers);
            check(&[-2.0, -1.0, -0.5], &workers);
            check(&[3.0, 1.5, 0.75, 0.375], &workers);
            // Exact ties on x / scale: scale is 1 when the range is 255.
            let ties: Vec<f32> = (0..256).map(|i| i as f32 - 127.5).chain([127.5]).collect();
            check(&ties, &workers);
        }
    }
}
