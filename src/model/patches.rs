//! A ViT's patch embedding as one lookout op.
//!
//! The first layer of every ViT is a `Conv` whose stride is its kernel
//! (16 x 16 for ViT-B/16 and ViT-L/16): each output position sees its own
//! patch of the picture, so the convolution is a product of the weights
//! `[O, C * kh * kw]` with the patches `[C * kh * kw, positions]`. tract
//! runs it through its rayon pool, whose second thread is asleep when the
//! inference starts and whose core is held by lookout's spinning helpers
//! (`workers.rs`): it ran on one thread, 3.4 ms of the large model's 93.
//! [`rewrite`] puts a `LookoutPatches` node in its place that gathers the
//! patches once and splits the product over the workers by output channel,
//! with the fused attention's f32 tile (`attention::product`).
//!
//! Sums run over the patch in another order than other runtimes', so the
//! results agree to f32 rounding, not bit for bit.

use std::collections::HashSet;
use std::sync::Arc;

use tract_onnx::pb::{tensor_proto::DataType, NodeProto};
use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_hir::internal::*;

use super::attention;
use super::lines::Lines;
use super::onnx::{ints, GraphIndex, LazyModel};
use super::placeholder::{self, Payload};
use super::workers;
use super::workers::Disjoint;

/// The op type of the replacement node (registered with tract-onnx).
pub(crate) const OP_TYPE: &str = "LookoutPatches";

/// Output channels per tile of the product, as the tile is tall.
const ROWS: usize = 8;

/// One patch-embedding convolution's constants.
#[derive(Debug)]
pub(crate) struct Patches {
    channels: usize,
    /// Kernel (= stride) height and width.
    kernel: (usize, usize),
    outputs: usize,
    /// Values per patch, `channels * kh * kw`, rounded up to 16.
    depth: usize,
    /// `[outputs, depth]`, zero past `channels * kh * kw`.
    weights: Vec<f32>,
    bias: Option<Vec<f32>>,
}

/// The node name -> payload table for [`placeholder::attach`].
pub(crate) type Table = placeholder::Table<Patches>;

/// Replaces every patch-embedding convolution by a `LookoutPatches` node;
/// returns them by node name and the initializers they copied.
pub(crate) fn rewrite(lazy: &mut LazyModel) -> TractResult<(Table, HashSet<usize>)> {
    let found: Vec<(usize, usize, Option<usize>)> = {
        let g = GraphIndex::new(lazy);
        g.nodes().filter_map(|(i, _)| conv(&g, i)).collect()
    };
    let mut table = Table::new();
    let mut taken = HashSet::new();
    let mut replacements = vec![];
    for (i, (at, w, b)) in found.into_iter().enumerate() {
        let node = lazy.graph().node[at].clone();
        let wt = lazy.tensor(w)?;
        let &[outputs, channels, kh, kw] = wt.shape() else { unreachable!("conv() checked the rank") };
        let patch = channels * kh * kw;
        let depth = patch.next_multiple_of(16);
        let mut weights = vec![0f32; outputs * depth];
        for (row, src) in weights.chunks_exact_mut(depth).zip(wt.try_as_plain_ram()?.as_slice::<f32>()?.chunks(patch)) {
            row[..patch].copy_from_slice(src);
        }
        let bias = b.map(|b| lazy.tensor(b).and_then(|t| Ok(t.try_as_plain_ram()?.as_slice::<f32>()?.to_vec())));
        taken.insert(w);
        taken.extend(b);
        let name = format!("lookout_patches_{i}");
        let payload = Patches { channels, kernel: (kh, kw), outputs, depth, weights, bias: bias.transpose()? };
        table.insert(name.clone(), Arc::new(payload));
        let new = NodeProto {
            name,
            op_type: OP_TYPE.into(),
            input: vec![node.input[0].clone()],
            output: node.output.clone(),
            ..Default::default()
        };
        replacements.push((at, new, vec![at]));
    }
    lazy.replace_nodes(replacements);
    Ok((table, taken))
}

/// Node `i` as (node, weight initializer, bias initializer) when it is a
/// 2D `Conv` whose stride is its kernel: no padding, dilation or groups,
/// f32 constant weights and bias.
fn conv(g: &GraphIndex, i: usize) -> Option<(usize, usize, Option<usize>)> {
    let n = g.node(i);
    if n.op_type != "Conv" || !(2..=3).contains(&n.input.len()) || n.output.len() != 1 {
        return None;
    }
    let (w, wt) = g.init_of(&n.input[1], DataType::Float)?;
    let [_, _, kh, kw] = wt.dims[..] else { return None };
    let kernel = vec![kh, kw];
    let all = |name: &str, default: i64| ints(n, name).is_none_or(|v| v.iter().all(|&x| x == default));
    let plain = ints(n, "kernel_shape").is_none_or(|k| k == kernel)
        && ints(n, "strides") == Some(kernel)
        && all("pads", 0)
        && all("dilations", 1)
        && super::onnx::int(n, "group").unwrap_or(1) == 1
        && n.attribute.iter().find(|a| a.name == "auto_pad").is_none_or(|a| matches!(&a.s[..], b"NOTSET" | b"VALID"));
    if !plain || kh <= 0 || kw <= 0 {
        return None;
    }
    let b = match n.input.get(2).filter(|b| !b.is_empty()) {
        Some(name) => {
            let (b, bt) = g.init_of(name, DataType::Float)?;
            (bt.dims[..] == [wt.dims[0]]).then_some(Some(b))?
        }
        None => None,
    };
    Some((i, w, b))
}

impl Payload for Patches {
    const OP_TYPE: &'static str = OP_TYPE;

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        check_input_arity(inputs, 1)?;
        check_output_arity(outputs, 1)?;
        s.equals(&inputs[0].datum_type, f32::datum_type())?;
        s.equals(&outputs[0].datum_type, f32::datum_type())?;
        s.equals(&inputs[0].rank, 4)?;
        s.equals(&outputs[0].rank, 4)?;
        s.equals(&inputs[0].shape[1], self.channels.to_dim())?;
        s.equals(&outputs[0].shape[0], &inputs[0].shape[0])?;
        s.equals(&outputs[0].shape[1], self.outputs.to_dim())?;
        let (kh, kw) = (self.kernel.0 as u64, self.kernel.1 as u64);
        s.given(&inputs[0].shape[2], move |s, h| s.equals(&outputs[0].shape[2], h / kh))?;
        s.given(&inputs[0].shape[3], move |s, w| s.equals(&outputs[0].shape[3], w / kw))
    }

    fn op(self: Arc<Self>) -> Box<dyn TypedOp> {
        Box::new(PatchOp { patches: self })
    }
}

/// The typed op: `[N, C, H, W]` in, `[N, O, H / kh, W / kw]` out.
#[derive(Debug, Clone)]
pub(crate) struct PatchOp {
    patches: Arc<Patches>,
}

placeholder::same_payload!(PatchOp, patches, OP_TYPE);

impl EvalOp for PatchOp {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let p = &*self.patches;
        let &[n, c, h, w] = inputs[0].shape() else { bail!("{OP_TYPE} expects [N, C, H, W]") };
        ensure!(c == p.channels, "{OP_TYPE}: {c} channels, the weights have {}", p.channels);
        let (kh, kw) = p.kernel;
        let (oh, ow) = (h / kh, w / kw);
        let positions = oh * ow;
        let padded = positions.next_multiple_of(16);
        let x = inputs[0].try_as_plain_ram()?.as_slice::<f32>()?;
        let mut out = unsafe { Tensor::uninitialized::<f32>(&[n, p.outputs, oh, ow])? };
        let mut ram = out.try_as_plain_ram_mut()?;
        let o = ram.as_slice_mut::<f32>()?;
        let workers = workers::current();
        for (x, o) in x.chunks_exact(c * h * w).zip(o.chunks_exact_mut(p.outputs * positions)) {
            COLUMNS.with_borrow_mut(|cols| {
                // `[depth, padded]`: patch value d of position j, zero past both.
                cols.resize(p.depth * padded);
                let (patch, rest) = cols.split_at_mut(c * kh * kw * padded);
                rest.fill(0.0);
                for (d, row) in patch.chunks_exact_mut(padded).enumerate() {
                    let (ci, ky, kx) = (d / (kh * kw), d / kw % kh, d % kw);
                    for py in 0..oh {
                        let line = &x[(ci * h + py * kh + ky) * w..][..w];
                        for px in 0..ow {
                            row[py * ow + px] = line[px * kw + kx];
                        }
                    }
                    row[positions..].fill(0.0);
                }
                multiply(p, cols, o, positions, padded, &workers);
            });
        }
        Ok(tvec!(out.into_tvalue()))
    }
}

thread_local! {
    /// The gathered patches, and per thread a tile of products: reused
    /// across calls instead of allocated (and zeroed) per inference.
    static COLUMNS: std::cell::RefCell<Lines<f32>> = Default::default();
    static TILE: std::cell::RefCell<Lines<f32>> = Default::default();
}

/// `o[ch][j] = weights[ch] . cols[:, j] + bias[ch]`, output channels split
/// over the workers.
fn multiply(p: &Patches, cols: &[f32], o: &mut [f32], positions: usize, padded: usize, workers: &workers::Workers) {
    // Each part writes the rows of its own output channels.
    let out = Disjoint(o.as_mut_ptr());
    let groups = p.outputs.div_ceil(ROWS);
    workers.for_ranges(groups, p.outputs * p.depth * positions / 64, &|range| {
        TILE.with_borrow_mut(|tile| {
            tile.resize(ROWS * padded);
            for g in range {
                let rows = (p.outputs - g * ROWS).min(ROWS);
                let w = &p.weights[g * ROWS * p.depth..][..rows * p.depth];
                // SAFETY: the sizes are as `product` asks; this part
                // alone writes output channels g * ROWS .. + rows.
                unsafe {
                    attention::product(w, cols, tile, rows, padded, p.depth);
                    for r in 0..rows {
                        let ch = g * ROWS + r;
                        let bias = p.bias.as_ref().map_or(0.0, |b| b[ch]);
                        let dst = out.slice(ch * positions, positions);
                        for (d, &v) in dst.iter_mut().zip(&tile[r * padded..]) {
                            *d = v + bias;
                        }
                    }
                }
            }
        })
    });
}

impl TypedOp for PatchOp {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let p = &self.patches;
        let s = &inputs[0].shape;
        ensure!(s.len() == 4, "{OP_TYPE} expects [N, C, H, W], got {s:?}");
        ensure!(s[1] == p.channels.to_dim(), "{OP_TYPE}: {} channels, the weights have {}", s[1], p.channels);
        let (kh, kw) = (p.kernel.0 as u64, p.kernel.1 as u64);
        Ok(tvec!(f32::fact([s[0].clone(), p.outputs.to_dim(), s[2].clone() / kh, s[3].clone() / kw])))
    }

    fn cost(&self, inputs: &[&TypedFact]) -> TractResult<TVec<(Cost, TDim)>> {
        let p = &self.patches;
        let s = &inputs[0].shape;
        let macs = s[0].clone() * s[1].clone() * s[2].clone() * s[3].clone() * p.outputs;
        Ok(tvec!((Cost::FMA(f32::datum_type()), macs)))
    }

    as_op!();
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The convolution as ONNX defines it, naively, in f64; with each
    /// value, the sum of its terms' magnitudes (the scale of f32 rounding).
    fn reference(p: &Patches, x: &[f32], (n, h, w): (usize, usize, usize)) -> Vec<(f32, f64)> {
        let (c, (kh, kw)) = (p.channels, p.kernel);
        let (oh, ow) = (h / kh, w / kw);
        let mut out = vec![];
        for b in 0..n {
            for o in 0..p.outputs {
                for py in 0..oh {
                    for px in 0..ow {
                        let mut sum = p.bias.as_ref().map_or(0.0, |bias| bias[o] as f64);
                        let mut size = sum.abs();
                        for ci in 0..c {
                            for ky in 0..kh {
                                for kx in 0..kw {
                                    let wv = p.weights[o * p.depth + (ci * kh + ky) * kw + kx];
                                    let xv = x[((b * c + ci) * h + py * kh + ky) * w + px * kw + kx];
                                    sum += wv as f64 * xv as f64;
                                    size += (wv as f64 * xv as f64).abs();
                                }
                            }
                        }
                        out.push((sum as f32, size));
                    }
                }
            }
        }
        out
    }

    #[test]
    fn the_op_equals_the_convolution_to_f32_rounding() {
        if !attention::supported() {
            eprintln!("no lookout f32 product on this CPU");
            return;
        }
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut rnd = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        };
        // ViT's 16 x 16 patches (a 64 x 48 picture), a kernel whose patch is
        // not a multiple of 16 values and whose picture leaves a remainder,
        // two pictures, no bias; output channels around the tile's 8.
        for (n, c, (h, w), (kh, kw), outputs, bias, threads) in [
            (1usize, 3usize, (64usize, 48usize), (16usize, 16usize), 20usize, true, 2usize),
            (1, 3, (30, 29), (7, 7), 9, true, 1),
            (2, 1, (8, 8), (2, 2), 8, false, 2),
        ] {
            let patch = c * kh * kw;
            let depth = patch.next_multiple_of(16);
            let mut weights = vec![0f32; outputs * depth];
            weights.chunks_exact_mut(depth).for_each(|row| row[..patch].iter_mut().for_each(|v| *v = rnd()));
            let bias = bias.then(|| (0..outputs).map(|_| rnd()).collect());
            let p = Arc::new(Patches { channels: c, kernel: (kh, kw), outputs, depth, weights, bias });
            let x: Vec<f32> = (0..n * c * h * w).map(|_| rnd()).collect();
            let want = reference(&p, &x, (n, h, w));
            let op = PatchOp { patches: p };
            let input = Tensor::from_shape(&[n, c, h, w], &x).unwrap().into_tvalue();
            let facts = op.output_facts(&[&f32::fact([n, c, h, w])]).unwrap();
            let workers = Arc::new(workers::Workers::new(threads, "test-w"));
            let got = workers::install(&workers, || op.eval(&EvalContext::out_of_plan(), tvec!(input))).unwrap();
            assert_eq!(got[0].shape(), facts[0].shape.as_concrete().unwrap());
            assert_eq!(got[0].shape(), &[n, outputs, h / kh, w / kw]);
            let got = got[0].try_as_plain_ram().unwrap().as_slice::<f32>().unwrap().to_vec();
            // A sum of `depth` f32 terms is within depth * eps of their
            // magnitudes' sum (the standard bound); a misplaced value is off
            // by about the value itself.
            let bound = (depth + 1) as f64 * f32::EPSILON as f64;
            for (i, (&got, &(want, size))) in got.iter().zip(&want).enumerate() {
                let err = (got as f64 - want as f64).abs();
                assert!(err <= bound * size, "{kh}x{kw} patches, value {i}: {got} for {want} (bound {})", bound * size);
            }
        }
    }
}
