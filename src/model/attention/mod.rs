//! A ViT's self-attention block as one lookout op.
//!
//! torch exports `softmax(q k^T / sqrt(d) + bias) v` as eleven ONNX nodes:
//!
//! ```text
//! Qs = Mul(Transpose<0,2,1,3>(Reshape(q, [1, T, H, D])), c)
//! Kt = Mul(Transpose<0,2,3,1>(Reshape(k, [1, T, H, D])), c)
//! Vt = Transpose<0,2,1,3>(Reshape(v, [1, T, H, D]))
//! y  = Reshape(Transpose<0,2,1,3>(MatMul(Softmax(Add(MatMul(Qs, Kt), B)), Vt)), [1, T, H * D])
//! ```
//!
//! with `B` BEiT's relative position bias (`[1, H, T, T]`, a constant once
//! the exporter has folded it) or absent. tract runs that as two batched
//! f32 matmuls that pack both operands on every call and parallelise badly
//! at 197 x 64 per head: 40 ms of the large model's 150. [`rewrite`]
//! replaces each such block by one `LookoutAttention` node that works head
//! by head, heads spread over the pool's threads, each head's scores kept
//! in the core's cache from the product through the softmax to the output,
//! which is divided by each row's sum of exponentials as it is written.
//!
//! The scaling multiplies element by element before the product, as the
//! graph does; sums run in another order than other runtimes', so results
//! agree to f32 rounding, not bit for bit (tests/it/inference.rs holds the
//! whole model to the ONNX reference evaluator).

#[cfg(target_arch = "aarch64")]
mod aarch64;
#[cfg(target_arch = "x86_64")]
mod avx2;
mod bias;
#[cfg(target_arch = "x86_64")]
mod x86;

use std::collections::HashSet;
use std::sync::Arc;

use crate::model::lines::Lines;
use crate::model::workers::{self, Disjoint};
use tract_onnx::pb::{tensor_proto::DataType, NodeProto};
use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_hir::internal::*;

use super::onnx::{int, ints, GraphIndex, LazyModel};
use super::placeholder::{self, Payload};
use bias::Bias;

/// The op type of the replacement node (registered with tract-onnx).
pub(crate) const OP_TYPE: &str = "LookoutAttention";

/// What one block computes with.
#[derive(Debug)]
pub(crate) struct Block {
    #[cfg_attr(not(any(target_arch = "x86_64", target_arch = "aarch64")), allow(dead_code))]
    simd: Simd,
    head_dim: usize,
    q_scale: f32,
    k_scale: f32,
    /// `[H, T, T]`, when the block adds one.
    bias: Option<Bias>,
}

/// The node name -> block table for [`placeholder::attach`].
pub(crate) type Table = placeholder::Table<Block>;

/// The instruction set a block's steps run with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Simd {
    #[cfg(target_arch = "x86_64")]
    Avx512,
    /// x86 without AVX-512 (Zen 1-3, Haswell to Comet Lake, N100).
    #[cfg(target_arch = "x86_64")]
    Avx2,
    /// Every aarch64 CPU.
    #[cfg(target_arch = "aarch64")]
    Neon,
}

impl Simd {
    /// Every instruction set this CPU runs the block with, best first:
    /// none on 32-bit ARM or x86 without AVX2, where tract runs the
    /// eleven nodes.
    pub(crate) fn supported() -> Vec<Simd> {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            let avx512 = has!("avx512f").then_some(Simd::Avx512);
            let avx2 = (has!("avx2") && has!("fma")).then_some(Simd::Avx2);
            [avx512, avx2].into_iter().flatten().collect()
        }
        #[cfg(target_arch = "aarch64")]
        {
            vec![Simd::Neon]
        }
        #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
        {
            vec![]
        }
    }

    /// Once per process: `product` asks for every tile of the patch
    /// embedding, and `supported` builds a list each time.
    fn best() -> Option<Simd> {
        static BEST: std::sync::OnceLock<Option<Simd>> = std::sync::OnceLock::new();
        *BEST.get_or_init(|| Simd::supported().first().copied())
    }
}

/// Whether this CPU runs the fused block ([`Simd::supported`]).
pub(crate) fn supported() -> bool {
    Simd::best().is_some()
}

/// Calls one of the steps with the module of `simd`.
macro_rules! step {
    ($simd:expr, $f:ident($($arg:expr),*)) => {
        match $simd {
            #[cfg(target_arch = "x86_64")]
            Simd::Avx512 => x86::$f($($arg),*),
            #[cfg(target_arch = "x86_64")]
            Simd::Avx2 => avx2::$f($($arg),*),
            #[cfg(target_arch = "aarch64")]
            Simd::Neon => aarch64::$f($($arg),*),
        }
    };
}

/// `s[i][j] = sum_d a[i][d] * b[d][j]` for rows `0..t` and columns
/// `0..tp`: the scores' f32 tile, which `patches.rs` uses too.
///
/// # Safety
/// [`supported`] is true; `a` holds `t * hd` values, `b` `hd * tp`, `s`
/// `t * tp`; `tp` and `hd` are multiples of 16.
pub(crate) unsafe fn product(a: &[f32], b: &[f32], s: &mut [f32], t: usize, tp: usize, hd: usize) {
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    {
        let simd = Simd::best().expect("supported() is true");
        step!(simd, scores(a, b, s, false, t, tp, hd))
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    unreachable!("no fused attention on this architecture: {:?}", (a, b, s, t, tp, hd))
}

/// A matched block: node indexes and the tensors it reads.
struct Found {
    q: String,
    k: String,
    v: String,
    output: String,
    head_dim: usize,
    q_scale: f32,
    k_scale: f32,
    bias: Option<usize>,
    /// The node the new one takes the place of (the first of the block in
    /// graph order, so every reader of `output` still comes after it).
    at: usize,
    nodes: Vec<usize>,
}

/// Replaces every attention block by a `LookoutAttention` node; returns
/// the blocks by node name and the initializers they copied.
pub(crate) fn rewrite(lazy: &mut LazyModel) -> TractResult<(Table, HashSet<usize>)> {
    let Some(simd) = Simd::best() else { return Ok(Default::default()) };
    let found = find(lazy);
    let mut table = Table::new();
    let mut taken = HashSet::new();
    let mut replacements = vec![];
    for (i, f) in found.into_iter().enumerate() {
        let bias = match f.bias {
            Some(index) => {
                taken.insert(index);
                let t = lazy.tensor(index)?;
                let shape = t.shape();
                let (heads, tokens) = (shape[shape.len() - 3], shape[shape.len() - 1]);
                let values = t.try_as_plain_ram()?.as_slice::<f32>()?;
                // A bias of zeros (a BEiT whose table was never trained)
                // adds nothing. canon drops such an Add where the graph
                // declares the scores' shape; torch's legacy export does
                // not, and kept it costs a read of H x T x T floats per block.
                values.iter().any(|&x| x != 0.0).then(|| Bias::new(heads, tokens, values))
            }
            None => None,
        };
        let name = format!("lookout_attention_{i}");
        let block = Block { simd, head_dim: f.head_dim, q_scale: f.q_scale, k_scale: f.k_scale, bias };
        table.insert(name.clone(), Arc::new(block));
        let node = NodeProto {
            name,
            op_type: OP_TYPE.into(),
            input: vec![f.q, f.k, f.v],
            output: vec![f.output],
            ..Default::default()
        };
        replacements.push((f.at, node, f.nodes));
    }
    lazy.replace_nodes(replacements);
    Ok((table, taken))
}

/// How many blocks [`rewrite`] would replace.
pub(crate) fn count(lazy: &LazyModel) -> usize {
    find(lazy).len()
}

fn find(lazy: &LazyModel) -> Vec<Found> {
    let g = GraphIndex::new(lazy);
    g.nodes().filter_map(|(si, _)| block(&g, si)).collect()
}

/// The block whose softmax is node `si`, read backwards to the scores and
/// the three head splits, and forwards to the merge of the heads.
fn block(g: &GraphIndex, si: usize) -> Option<Found> {
    if !g.is(si, "Softmax", 1) {
        return None;
    }
    let softmax = g.node(si);
    if !matches!(int(softmax, "axis").unwrap_or(-1), -1 | 3) {
        return None;
    }
    let mut nodes = vec![si];
    // Scores, with or without the bias.
    let mut scores = g.private_producer(&softmax.input[0])?;
    let mut bias = None;
    if g.is(scores, "Add", 2) {
        let (s, _, b) = g.constant_and_other(scores, |n| g.init(n))?;
        let t = g.initializer(b);
        let ok_dims = matches!(t.dims[..], [1, h, n, m] | [h, n, m] if h > 0 && n == m);
        if t.data_type != DataType::Float as i32 || !ok_dims {
            return None;
        }
        bias = Some(b);
        nodes.push(scores);
        scores = g.private_producer(s)?;
    }
    if !g.is(scores, "MatMul", 2) {
        return None;
    }
    nodes.push(scores);
    let mm = g.node(scores);
    let (q, d, q_scale, qn) = head_split(g, &mm.input[0], &[0, 2, 1, 3])?;
    let (k, dk, k_scale, kn) = head_split(g, &mm.input[1], &[0, 2, 3, 1])?;
    // The weighted sum of values, back to [1, T, H * D].
    let pv = g.only_reader(&softmax.output[0]).filter(|&i| g.is(i, "MatMul", 2))?;
    let pvn = g.node(pv);
    if pvn.input[0] != softmax.output[0] {
        return None;
    }
    let (v, dv, v_scale, vn) = head_split(g, &pvn.input[1], &[0, 2, 1, 3])?;
    if d != dk || d != dv || v_scale != 1.0 {
        return None;
    }
    let tr = g.only_reader(&pvn.output[0]).filter(|&i| g.is(i, "Transpose", 1))?;
    if ints(g.node(tr), "perm")? != [0, 2, 1, 3] {
        return None;
    }
    let re = g.only_reader(&g.node(tr).output[0]).filter(|&i| g.is(i, "Reshape", 2))?;
    let shape = g.int64s(&g.node(re).input[1])?;
    if !matches!(shape[..], [0 | 1, t, c] if (t == -1 || t >= 0) && (c == -1 || c > 0)) {
        return None;
    }
    nodes.extend([pv, tr, re]);
    nodes.extend(qn);
    nodes.extend(kn);
    nodes.extend(vn);
    let at = *nodes.iter().min().expect("not empty");
    Some(Found { q, k, v, output: g.node(re).output[0].clone(), head_dim: d, q_scale, k_scale, bias, at, nodes })
}

/// `Transpose<perm>(Reshape(x, [1|0, T|0|-1, H|-1, D]))`, possibly then
/// `Mul` by a scalar: (x, D, scale, nodes).
fn head_split(g: &GraphIndex, name: &str, perm: &[i64]) -> Option<(String, usize, f32, Vec<usize>)> {
    let mut nodes = vec![];
    let mut at = g.private_producer(name)?;
    let mut scale = 1.0;
    if g.is(at, "Mul", 2) {
        let (x, _, c) = g.constant_and_other(at, |n| g.scalar(n))?;
        scale = c;
        nodes.push(at);
        at = g.private_producer(x)?;
    }
    if !g.is(at, "Transpose", 1) || ints(g.node(at), "perm")? != perm {
        return None;
    }
    nodes.push(at);
    let reshape = g.private_producer(&g.node(at).input[0])?;
    if !g.is(reshape, "Reshape", 2) {
        return None;
    }
    let n = g.node(reshape);
    let shape = g.int64s(&n.input[1])?;
    let [b, t, h, d] = shape[..] else { return None };
    let ok =
        matches!(b, 0 | 1) && (t == -1 || t >= 0) && (h == -1 || h > 0) && d > 0 && (d as usize).is_multiple_of(16);
    if !ok || d > 128 {
        return None;
    }
    nodes.push(reshape);
    Some((n.input[0].clone(), d as usize, scale, nodes))
}

impl Payload for Block {
    const OP_TYPE: &'static str = OP_TYPE;

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        check_input_arity(inputs, 3)?;
        check_output_arity(outputs, 1)?;
        for input in inputs {
            s.equals(&input.datum_type, f32::datum_type())?;
            s.equals(&input.shape, &inputs[0].shape)?;
        }
        s.equals(&outputs[0].datum_type, f32::datum_type())?;
        s.equals(&outputs[0].shape, &inputs[0].shape)?;
        Ok(())
    }

    fn op(self: Arc<Self>) -> Box<dyn TypedOp> {
        Box::new(Attention { block: self })
    }
}

/// The typed op: q, k, v `[1, T, H * D]` in, `[1, T, H * D]` out.
#[derive(Debug, Clone)]
pub(crate) struct Attention {
    block: Arc<Block>,
}

placeholder::same_payload!(Attention, block, OP_TYPE);

/// One head's operands and result, as slices of the block's tensors.
struct Dims {
    tokens: usize,
    width: usize,
    head_dim: usize,
}

impl EvalOp for Attention {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let shape = inputs[0].shape().to_vec();
        let [1, tokens, width] = shape[..] else { bail!("{OP_TYPE} expects [1, T, C], got {shape:?}") };
        let b = &self.block;
        let heads = width / b.head_dim;
        let slice = |i: usize| inputs[i].try_as_plain_ram().and_then(|v| v.as_slice::<f32>().map(|s| s.as_ptr()));
        let (q, k, v) = (slice(0)?, slice(1)?, slice(2)?);
        let mut out = unsafe { Tensor::uninitialized::<f32>(&shape)? };
        // Heads read the shared inputs and write their own columns of the output.
        let o = Disjoint(out.try_as_plain_ram_mut()?.as_slice_mut::<f32>()?.as_mut_ptr());
        let (q, k, v) = (Disjoint(q as *mut f32), Disjoint(k as *mut f32), Disjoint(v as *mut f32));
        let dims = Dims { tokens, width, head_dim: b.head_dim };
        let one = |h: usize| {
            // SAFETY: the inputs hold tokens x width values (checked by
            // output_facts), and head h writes only its own columns.
            unsafe { head(b, &dims, h, q, k, v, o) }
        };
        // Work in multiply-adds / 64, as the int8 layers count it.
        workers::current().for_ranges(heads, tokens * tokens * width / 32, &|range| range.for_each(one));
        Ok(tvec!(out.into_tvalue()))
    }
}

thread_local! {
    /// Per thread: the head's scaled queries, transposed scaled keys,
    /// scores and row sums (about 270 KB for ViT-L), reused across heads
    /// and calls.
    static SCRATCH: std::cell::RefCell<Lines<f32>> = Default::default();
}

unsafe fn head(b: &Block, d: &Dims, h: usize, q: Disjoint, k: Disjoint, v: Disjoint, out: Disjoint) {
    let (t, hd) = (d.tokens, d.head_dim);
    let tp = t.div_ceil(16) * 16;
    SCRATCH.with_borrow_mut(|scratch| {
        // The bias is written into the scores, which the product then adds
        // to; its last row may run on past them.
        scratch.resize(t * hd + hd * tp + t * tp + Bias::OVERRUN + t);
        let (qs, rest) = scratch.split_at_mut(t * hd);
        let (kt, rest) = rest.split_at_mut(hd * tp);
        let (s, sums) = rest.split_at_mut(t * tp + Bias::OVERRUN);
        let col = h * hd;
        let scales = (b.q_scale, b.k_scale);
        if let Some(bias) = &b.bias {
            bias.write(h, s, tp);
        }
        #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
        {
            step!(b.simd, operands(q.0.add(col), k.0.add(col), d.width, scales, qs, kt, t, tp, hd));
            step!(b.simd, scores(qs, kt, s, b.bias.is_some(), t, tp, hd));
            step!(b.simd, exp_rows(s, t, tp, sums));
            step!(b.simd, weighted_sum(s, sums, v.0.add(col), d.width, out.0.add(col), t, tp, hd));
        }
        #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
        {
            let _ = (q, k, v, out, s, sums, qs, kt, scales);
            unreachable!("no fused attention on this architecture");
        }
    })
}

impl TypedOp for Attention {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let shape = &inputs[0].shape;
        ensure!(inputs.iter().all(|i| i.shape == *shape), "{OP_TYPE}: q, k and v differ in shape");
        let dims: Vec<usize> =
            shape.iter().map(|d| d.to_usize().map_err(|e| format_err!("{e:?}"))).collect::<TractResult<_>>()?;
        let [1, tokens, width] = dims[..] else { bail!("{OP_TYPE} expects [1, T, C], got {shape:?}") };
        let b = &self.block;
        ensure!(width % b.head_dim == 0, "{OP_TYPE}: width {width} is not a multiple of {}", b.head_dim);
        if let Some(bias) = &b.bias {
            ensure!(
                bias.tokens == tokens && (bias.heads == 1 || bias.heads * b.head_dim == width),
                "{OP_TYPE}: the bias is for {} heads x {} tokens, the input is {tokens} x {width}",
                bias.heads,
                bias.tokens
            );
        }
        Ok(tvec!(f32::fact(shape.iter().cloned().collect::<TVec<_>>())))
    }

    fn cost(&self, inputs: &[&TypedFact]) -> TractResult<TVec<(Cost, TDim)>> {
        let t = inputs[0].shape[1].clone();
        let c = inputs[0].shape[2].clone();
        Ok(tvec!((Cost::FMA(f32::datum_type()), t.clone() * t * c * 2)))
    }

    as_op!();
}

/// The block as the ONNX graph defines it, naively, with `bias` its
/// `[heads, T, T]` values (`heads` 1 or all): the test oracle.
#[cfg(test)]
fn reference(
    b: &Block,
    bias: Option<&[f32]>,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    tokens: usize,
    width: usize,
) -> Vec<f32> {
    let hd = b.head_dim;
    let mut out = vec![0f32; tokens * width];
    for h in 0..width / hd {
        for i in 0..tokens {
            let mut s: Vec<f64> = (0..tokens)
                .map(|j| {
                    let dot: f64 = (0..hd)
                        .map(|d| {
                            let qv = q[i * width + h * hd + d] * b.q_scale;
                            let kv = k[j * width + h * hd + d] * b.k_scale;
                            qv as f64 * kv as f64
                        })
                        .sum();
                    let bias = bias.map_or(0.0, |bb| {
                        let head = if bb.len() == tokens * tokens { 0 } else { h };
                        bb[(head * tokens + i) * tokens + j]
                    });
                    dot + bias as f64
                })
                .collect();
            let max = s.iter().cloned().fold(f64::MIN, f64::max);
            s.iter_mut().for_each(|x| *x = (*x - max).exp());
            let sum: f64 = s.iter().sum();
            for d in 0..hd {
                let o: f64 = (0..tokens).map(|j| s[j] / sum * v[j * width + h * hd + d] as f64).sum();
                out[i * width + h * hd + d] = o as f32;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn the_op_equals_the_onnx_definition_to_f32_rounding() {
        if !supported() {
            eprintln!("no fused attention on this CPU");
        }
        for simd in Simd::supported() {
            equals_the_onnx_definition(simd);
        }
    }

    fn equals_the_onnx_definition(simd: Simd) {
        let mut seed = 0x1234_5678_9abc_def0u64;
        let mut rnd = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        };
        // Token counts around the tiles' edges; BEiT's 197 and 65.
        // Bias heads: 0 for none, 1 for one bias every head adds ([1, 1, T, T]);
        // relative: BEiT's, gathered by offset on a grid after the class token.
        for (tokens, heads, hd, bias_heads, relative, threads) in [
            (1, 1, 16, 1, false, 1),
            (17, 2, 32, 0, false, 1),
            (65, 4, 16, 4, false, 2),
            (197, 3, 64, 3, false, 2),
            (40, 2, 128, 2, false, 1),
            (33, 4, 16, 1, false, 2),
            (197, 3, 64, 3, true, 2),
            (65, 4, 16, 1, true, 1),
            (5, 2, 16, 2, true, 2),
        ] {
            let width = heads * hd;
            let q: Vec<f32> = (0..tokens * width).map(|_| rnd() * 2.0).collect();
            let k: Vec<f32> = (0..tokens * width).map(|_| rnd() * 2.0).collect();
            let v: Vec<f32> = (0..tokens * width).map(|_| rnd()).collect();
            let values: Vec<f32> = match relative {
                true => {
                    let table: Vec<f32> = (0..bias_heads * 4 * tokens).map(|_| rnd()).collect();
                    bias::beit(bias_heads, (tokens - 1).isqrt(), |h, at| table[h * 4 * tokens + at])
                }
                false => (0..bias_heads * tokens * tokens).map(|_| rnd()).collect(),
            };
            let bias = (bias_heads > 0).then(|| Bias::new(bias_heads, tokens, &values));
            assert_eq!(bias.as_ref().map(Bias::is_relative), (bias_heads > 0).then_some(relative));
            let block = Arc::new(Block { simd, head_dim: hd, q_scale: 0.35, k_scale: 0.35, bias });
            let want = reference(&block, (bias_heads > 0).then_some(&values[..]), &q, &k, &v, tokens, width);
            let op = Attention { block };
            let t = |x: &[f32]| Tensor::from_shape(&[1, tokens, width], x).unwrap().into_tvalue();
            let workers = Arc::new(workers::Workers::new(threads, "test-w"));
            let got = workers::install(&workers, || op.eval(&EvalContext::out_of_plan(), tvec!(t(&q), t(&k), t(&v))))
                .unwrap();
            let got = got[0].try_as_plain_ram().unwrap().as_slice::<f32>().unwrap().to_vec();
            let worst = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(worst < 2e-6, "{simd:?} tokens {tokens} heads {heads} d {hd}: max abs difference {worst}");
        }
    }

    #[test]
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    fn a_heads_operands_are_its_scaled_queries_and_transposed_keys() {
        let shapes = [(197usize, 64, 192), (16, 16, 48), (17, 32, 64), (1, 128, 128), (9, 16, 32)];
        for (simd, (t, hd, width)) in Simd::supported().into_iter().flat_map(|simd| shapes.map(|shape| (simd, shape))) {
            let tp = t.div_ceil(16) * 16;
            let q: Vec<f32> = (0..t * width).map(|i| i as f32 * 0.25 - 7.0).collect();
            let k: Vec<f32> = (0..t * width).map(|i| 3.0 - i as f32 * 0.5).collect();
            let col = width - hd;
            let (mut qs, mut kt) = (vec![f32::NAN; t * hd], vec![f32::NAN; hd * tp]);
            let (qp, kp) = (q[col..].as_ptr(), k[col..].as_ptr());
            unsafe { step!(simd, operands(qp, kp, width, (0.5, 0.125), &mut qs, &mut kt, t, tp, hd)) };
            for i in 0..t {
                for d in 0..hd {
                    assert_eq!(qs[i * hd + d], q[i * width + col + d] * 0.5, "{simd:?} t {t} q[{i}][{d}]");
                }
            }
            for j in 0..tp {
                for d in 0..hd {
                    let want = if j < t { k[j * width + col + d] * 0.125 } else { 0.0 };
                    assert_eq!(kt[d * tp + j], want, "{simd:?} t {t} k[{j}][{d}]");
                }
            }
        }
    }

    #[test]
    fn finds_every_block_of_the_digits_model() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/digits/digits-int8.onnx");
        let mut lazy = LazyModel::open(&path).unwrap();
        let before = lazy.graph().node.len();
        let (table, taken) = rewrite(&mut lazy).unwrap();
        // 4 blocks, each with its own relative position bias, 11 nodes each.
        assert_eq!(table.len(), 4);
        assert_eq!(taken.len(), 4);
        assert!(table.values().all(|b| b.head_dim == 16 && b.q_scale == 0.5 && b.k_scale == 0.5));
        // Its trained relative position biases, each kept as offsets.
        assert!(table
            .values()
            .all(|b| b.bias.as_ref().is_some_and(|b| (b.heads, b.tokens) == (4, 65) && b.is_relative())));
        assert_eq!(lazy.graph().node.len(), before - 4 * 14 + 4);
    }

    #[test]
    fn a_bias_of_zeros_is_dropped_with_its_add() {
        use prost::Message;
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/digits/digits-int8.onnx");
        let mut lazy = LazyModel::open(&path).unwrap();
        let (_, taken) = rewrite(&mut lazy).unwrap();
        let biases: HashSet<String> = taken.iter().map(|&i| lazy.graph().initializer[i].name.clone()).collect();
        let mut proto = tract_onnx::pb::ModelProto::decode(std::fs::read(&path).unwrap().as_slice()).unwrap();
        let graph = proto.graph.as_mut().unwrap();
        let (zeroed, kept) = graph.initializer.iter_mut().partition::<Vec<_>, _>(|t| biases.contains(&t.name));
        assert_eq!(zeroed.len(), 4, "one bias per block, {} other initializers", kept.len());
        for (n, t) in zeroed.into_iter().enumerate() {
            // One block's zeros negative: -0.0 adds nothing either.
            t.raw_data.iter_mut().for_each(|b| *b = 0);
            if n == 0 {
                t.raw_data.chunks_mut(4).for_each(|x| x.copy_from_slice(&(-0.0f32).to_le_bytes()));
            }
        }
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), proto.encode_to_vec()).unwrap();
        let mut lazy = LazyModel::open(file.path()).unwrap();
        let before = lazy.graph().node.len();
        let (table, taken) = rewrite(&mut lazy).unwrap();
        assert_eq!(table.len(), 4);
        assert!(table.values().all(|b| b.bias.is_none()), "{table:?}");
        // The Adds go with their blocks, and no node reads the zeros.
        assert_eq!(taken.len(), 4);
        assert_eq!(lazy.graph().node.len(), before - 4 * 14 + 4);
    }
}
