//! ONNX's dynamically quantized linear layers, run as one lookout op each
//! group.
//!
//! onnxruntime's `quantize_dynamic` turns every `y = x W + b` into
//!
//! ```text
//! (q, s, z) = DynamicQuantizeLinear(x)
//! y = Add(b, Mul(Cast<f32>(MatMulInteger(q, Wq, z, Wz)), Mul(s, Ws)))
//! ```
//!
//! with one `DynamicQuantizeLinear` shared by the layers that read the same
//! `x` (attention's query, key and value). [`rewrite`] finds each such
//! group in the ONNX graph before tract sees it and replaces it by one
//! `LookoutQLinear` node with one output per layer: `x` is quantized once,
//! the weights are packed for [`qgemm`](super::qgemm) as they are read from
//! the file, and the scales and bias are applied while the results are
//! written. A group that differs from this shape in any way (another
//! consumer of `q`, a bias that is not a per-column vector...) is left to
//! tract.
//!
//! The f32 work around a group comes along when nothing else reads its
//! intermediate results: the `LayerNormalization` whose output `x` is (a
//! transformer block's norms), and after a layer the skip connection
//! `Add(Mul(y, lambda), r)` or `Add(y, r)` (`qgemm/rowwise.rs`).

use std::collections::HashSet;
use std::sync::Arc;

use tract_onnx::pb::{tensor_proto::DataType, NodeProto, TensorProto};
use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_hir::internal::*;

use super::lines::Lines;
use super::onnx::{float, int, GraphIndex, LazyModel};
use super::placeholder::{self, Payload};
use super::qgemm::{self, Activations, Gelu, Job, Kernel, LayerNorm, PackedWeights};
use super::workers;

/// The op type of the replacement node (registered with tract-onnx).
pub(crate) const OP_TYPE: &str = "LookoutQLinear";

/// One layer of a group, as indexes into the graph's initializers.
#[derive(Debug)]
struct Layer {
    weight: usize,
    zero_point: Option<usize>,
    scale: usize,
    bias: Option<usize>,
    /// torch's exact GELU right after the layer (an MLP's first layer).
    gelu: Option<Gelu>,
    residual: Option<Residual>,
    /// The tensor the layer's last node wrote, which the new node writes.
    output: String,
}

/// A skip connection after a layer: `Add(Mul(y, lambda), input)`.
#[derive(Debug)]
struct Residual {
    /// Initializer: one value per column or one for all.
    lambda: Option<usize>,
    input: String,
}

/// A `LayerNormalization` before a group, as initializers.
#[derive(Debug)]
struct Norm {
    gamma: usize,
    beta: Option<usize>,
    eps: f32,
}

#[derive(Debug)]
struct Group {
    /// Index of the `DynamicQuantizeLinear` node (the new node takes its place).
    quantizer: usize,
    input: String,
    norm: Option<Norm>,
    layers: Vec<Layer>,
    /// Every node the new one replaces.
    nodes: Vec<usize>,
}

/// Weights of one layer, packed, with its per-column epilogue.
pub(crate) struct LayerWeights {
    packed: PackedWeights,
    scale: Vec<f32>,
    bias: Option<Vec<f32>>,
    gelu: Option<Gelu>,
    /// `lambda` (if any) and which input of the node is the residual.
    residual: Option<(Option<Vec<f32>>, usize)>,
}

/// Everything a `LookoutQLinear` node computes with.
pub(crate) struct GroupWeights {
    k: usize,
    norm: Option<LayerNorm>,
    layers: Vec<LayerWeights>,
    kernel: Kernel,
}

impl std::fmt::Debug for GroupWeights {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        let ns: Vec<usize> = self.layers.iter().map(|l| l.packed.n).collect();
        write!(f, "k={} n={ns:?} {}", self.k, self.kernel.name())
    }
}

impl GroupWeights {
    /// Inputs after the first: one per layer with a skip connection.
    fn residuals(&self) -> usize {
        self.layers.iter().filter(|l| l.residual.is_some()).count()
    }
}

/// What [`rewrite`] did, for the load report.
#[derive(Debug, Clone, Default)]
pub struct Rewritten {
    pub groups: usize,
    pub layers: usize,
    /// Layers that took the GELU after them along.
    pub gelus: usize,
    /// Groups that took the layer norm before them along.
    pub norms: usize,
    /// Layers that took the skip connection after them along.
    pub residuals: usize,
    pub packed_bytes: usize,
}

/// The node name -> weights table for [`placeholder::attach`].
pub(crate) type Table = placeholder::Table<GroupWeights>;

/// Replaces every quantized linear group by a `LookoutQLinear` node and
/// packs its weights for `kernel` (`named`: the one `--int8-kernel` asked
/// for). Returns the weights by node name, what was done, and the
/// initializers the new nodes hold their own copies of (for
/// [`LazyModel::into_proto`], which then never reads them).
pub(crate) fn rewrite(
    lazy: &mut LazyModel,
    kernel: Kernel,
    named: bool,
) -> TractResult<(Table, Rewritten, HashSet<usize>)> {
    let groups = find(lazy);
    let mut table = Table::new();
    let mut report = Rewritten::default();
    let mut consumed = HashSet::new();
    let mut scratch = vec![];
    for (i, group) in groups.iter().enumerate() {
        let weights = pack(lazy, group, kernel, named, &mut scratch)?;
        report.groups += 1;
        report.layers += weights.layers.len();
        report.gelus += weights.layers.iter().filter(|l| l.gelu.is_some()).count();
        report.norms += usize::from(weights.norm.is_some());
        report.residuals += weights.layers.iter().filter(|l| l.residual.is_some()).count();
        report.packed_bytes += weights.layers.iter().map(|l| l.packed.bytes()).sum::<usize>();
        table.insert(node_name(i), Arc::new(weights));
        for l in &group.layers {
            let lambda = l.residual.as_ref().and_then(|r| r.lambda);
            consumed.extend([Some(l.weight), l.zero_point, Some(l.scale), l.bias, lambda].into_iter().flatten());
        }
        if let Some(norm) = &group.norm {
            consumed.extend([Some(norm.gamma), norm.beta].into_iter().flatten());
        }
    }
    let replacements = groups.iter().enumerate().map(|(i, group)| {
        let node = NodeProto {
            name: node_name(i),
            op_type: OP_TYPE.into(),
            input: std::iter::once(&group.input)
                .chain(group.layers.iter().filter_map(|l| l.residual.as_ref().map(|r| &r.input)))
                .cloned()
                .collect(),
            output: group.layers.iter().map(|l| l.output.clone()).collect(),
            ..Default::default()
        };
        (group.quantizer, node, group.nodes.clone())
    });
    lazy.replace_nodes(replacements.collect());
    Ok((table, report, consumed))
}

/// How many groups [`rewrite`] would replace.
pub(crate) fn count(lazy: &LazyModel) -> usize {
    find(lazy).len()
}

fn node_name(group: usize) -> String {
    format!("lookout_qlinear_{group}")
}

/// Finds the groups; see the module documentation for the shape.
fn find(lazy: &LazyModel) -> Vec<Group> {
    let g = GraphIndex::new(lazy);
    let mut groups = vec![];
    for (qi, quantizer) in g.nodes() {
        if quantizer.op_type != "DynamicQuantizeLinear"
            || !quantizer.domain.is_empty()
            || quantizer.input.len() != 1
            || quantizer.output.len() != 3
        {
            continue;
        }
        let (q, s, z) = (&quantizer.output[0], &quantizer.output[1], &quantizer.output[2]);
        if [q, s, z].iter().any(|o| g.is_output(o)) {
            continue;
        }
        let Some(found) = g.readers(q).iter().map(|&m| layer(&g, m, q, s, z, qi)).collect::<Option<Vec<_>>>() else {
            continue;
        };
        let ks: HashSet<i64> = found.iter().map(|(_, _, k)| *k).collect();
        let &[k] = &ks.iter().copied().collect::<Vec<_>>()[..] else { continue };
        // `z` is read by the matmuls only, `s` by their scale products only.
        if g.readers(z).len() != found.len() || g.readers(s).len() != found.len() {
            continue;
        }
        let mut nodes = vec![qi];
        let mut layers = vec![];
        for (layer, n, _) in found {
            nodes.extend(n);
            layers.push(layer);
        }
        let (input, norm) = match norm_before(&g, &quantizer.input[0], k) {
            Some((norm, ln, x)) => {
                nodes.push(ln);
                (x, Some(norm))
            }
            None => (quantizer.input[0].clone(), None),
        };
        groups.push(Group { quantizer: qi, input, norm, layers, nodes });
    }
    groups
}

/// `MatMulInteger(q, W, z, Wz)` at node `mmi`, then `Cast`, `Mul` by
/// `Mul(s, Ws)`, an optional bias `Add` and an optional GELU or skip
/// connection: the layer, its nodes and its k. `quantizer` is the node the
/// group's op will take the place of.
fn layer(g: &GraphIndex, mmi: usize, q: &str, s: &str, z: &str, quantizer: usize) -> Option<(Layer, Vec<usize>, i64)> {
    let mmi_node = g.node(mmi);
    if mmi_node.op_type != "MatMulInteger"
        || !mmi_node.domain.is_empty()
        || mmi_node.output.len() != 1
        || !(3..=4).contains(&mmi_node.input.len())
        || mmi_node.input[0] != q
        || mmi_node.input[2] != z
    {
        return None;
    }
    let (weight, w) = g.init_of(&mmi_node.input[1], DataType::Int8)?;
    let [k, n] = w.dims[..] else { return None };
    let zero_point = match mmi_node.input.get(3) {
        Some(name) => {
            let (i, t) = g.init_of(name, DataType::Int8)?;
            per_column(t, n).then_some(Some(i))?
        }
        None => None,
    };
    let cast = g.only_reader(&mmi_node.output[0]).filter(|&c| g.is(c, "Cast", 1))?;
    if int(g.node(cast), "to") != Some(DataType::Float as i64) {
        return None;
    }
    let cast_out = &g.node(cast).output[0];
    let mul = g.only_reader(cast_out).filter(|&m| g.is(m, "Mul", 2))?;
    let scales_name = g.other_input(mul, cast_out)?;
    let scales = g.private_producer(scales_name).filter(|&m| g.is(m, "Mul", 2))?;
    let (scale, ws) = g.init_of(g.other_input(scales, s)?, DataType::Float)?;
    if !per_column(ws, n) {
        return None;
    }
    let mut nodes = vec![mmi, cast, mul, scales];
    let mut output = g.node(mul).output[0].clone();
    let mut bias = None;
    if let Some(add) = g.only_reader(&output).filter(|&a| g.is(a, "Add", 2)) {
        if let Some((b, t)) = g.other_input(add, &output).and_then(|o| g.init_of(o, DataType::Float)) {
            if t.dims[..] == [n] {
                bias = Some(b);
                output = g.node(add).output[0].clone();
                nodes.push(add);
            }
        }
    }
    let gelu = match gelu_after(g, &output) {
        Some((gelu, more, out)) => {
            nodes.extend(more);
            output = out;
            Some(gelu)
        }
        None => None,
    };
    let residual = match gelu {
        None => residual_after(g, &output, n, quantizer).map(|(residual, more, out)| {
            nodes.extend(more);
            output = out;
            residual
        }),
        Some(_) => None,
    };
    Some((Layer { weight, zero_point, scale, bias, gelu, residual, output }, nodes, k))
}

/// `LayerNormalization(x, gamma, beta)` over the last axis of width `k`
/// writing `y`, which only the group's quantizer reads: the norm, its node
/// and `x`.
fn norm_before(g: &GraphIndex, y: &str, k: i64) -> Option<(Norm, usize, String)> {
    let ln = g.private_producer(y)?;
    let node = g.node(ln);
    if node.op_type != "LayerNormalization"
        || !node.domain.is_empty()
        || !(2..=3).contains(&node.input.len())
        || node.output.len() != 1
        || int(node, "axis").unwrap_or(-1) != -1
        || int(node, "stash_type").unwrap_or(1) != 1
    {
        return None;
    }
    let (gamma, t) = g.init_of(&node.input[1], DataType::Float)?;
    if t.dims[..] != [k] {
        return None;
    }
    let beta = match node.input.get(2).filter(|b| !b.is_empty()) {
        Some(b) => {
            let (i, t) = g.init_of(b, DataType::Float)?;
            (t.dims[..] == [k]).then_some(Some(i))?
        }
        None => None,
    };
    let eps = float(node, "epsilon").unwrap_or(1e-5);
    Some((Norm { gamma, beta, eps }, ln, node.input[0].clone()))
}

/// `Add(Mul(y, lambda), r)` or `Add(y, r)` on `y`, which nothing else
/// reads, with `lambda` a constant per column and `r` computed before node
/// `before` (where the new op goes): the skip connection, its nodes and its
/// output.
fn residual_after(g: &GraphIndex, y: &str, n: i64, before: usize) -> Option<(Residual, Vec<usize>, String)> {
    let mut nodes = vec![];
    let mut y = y;
    let mut lambda = None;
    let next = g.only_reader(y)?;
    if g.is(next, "Mul", 2) {
        let (other, _, (i, t)) = g.constant_and_other(next, |c| g.init_of(c, DataType::Float))?;
        if other != y || !per_column(t, n) {
            return None;
        }
        lambda = Some(i);
        nodes.push(next);
        y = &g.node(next).output[0];
    }
    let add = g.only_reader(y).filter(|&a| g.is(a, "Add", 2))?;
    let r = g.other_input(add, y)?;
    if r == y || g.init(r).is_some() || g.producer(r).is_some_and(|p| p >= before) {
        return None;
    }
    nodes.push(add);
    Some((Residual { lambda, input: r.to_string() }, nodes, g.node(add).output[0].clone()))
}

/// Scalar, or one value per column.
fn per_column(t: &TensorProto, n: i64) -> bool {
    let len: i64 = t.dims.iter().product();
    t.dims.len() <= 1 && (len == 1 || len == n)
}

/// `Mul(Mul(y, Add(Erf(Div(y, c)), one)), half)` on `y`, which nothing
/// else reads: the GELU, the nodes and its output.
fn gelu_after(g: &GraphIndex, y: &str) -> Option<(Gelu, Vec<usize>, String)> {
    let &[a, b] = g.readers(y) else { return None };
    if g.is_output(y) {
        return None;
    }
    let (div, mul) = if g.is(a, "Div", 2) { (a, b) } else { (b, a) };
    if !g.is(div, "Div", 2) || g.node(div).input[0] != y || !g.is(mul, "Mul", 2) {
        return None;
    }
    let c_div = g.scalar(&g.node(div).input[1])?;
    let erf = g.only_reader(&g.node(div).output[0]).filter(|&n| g.is(n, "Erf", 1))?;
    let erf_out = &g.node(erf).output[0];
    let add = g.only_reader(erf_out).filter(|&n| g.is(n, "Add", 2))?;
    let c_add = g.scalar(g.other_input(add, erf_out)?)?;
    let add_out = &g.node(add).output[0];
    if g.only_reader(add_out) != Some(mul) || g.other_input(mul, y)? != add_out {
        return None;
    }
    let mul_out = &g.node(mul).output[0];
    let half = g.only_reader(mul_out).filter(|&n| g.is(n, "Mul", 2))?;
    let c_mul = g.scalar(g.other_input(half, mul_out)?)?;
    Some((Gelu { div: c_div, add: c_add, mul: c_mul }, vec![div, erf, add, mul, half], g.node(half).output[0].clone()))
}

fn pack(
    lazy: &LazyModel,
    group: &Group,
    kernel: Kernel,
    named: bool,
    scratch: &mut Vec<u8>,
) -> TractResult<GroupWeights> {
    let tensor = |i: usize| lazy.tensor(i);
    let floats = |i: usize| -> TractResult<Vec<f32>> { Ok(tensor(i)?.try_as_plain_ram()?.as_slice::<f32>()?.to_vec()) };
    let mut k = 0;
    let mut layers = vec![];
    let mut residual_inputs = 0;
    for l in &group.layers {
        let zp = match l.zero_point {
            Some(i) => tensor(i)?.try_as_plain_ram()?.as_slice::<i8>()?.to_vec(),
            None => vec![0],
        };
        let (w, dims) = lazy.i8s(l.weight, scratch)?;
        let &[wk, n] = &dims[..] else { bail!("weights of shape {dims:?}, not [k, n]") };
        k = wk;
        let packed = PackedWeights::pack(wk, n, w, &zp);
        let scale = floats(l.scale)?;
        let bias = l.bias.map(floats).transpose()?;
        let residual = match &l.residual {
            Some(r) => {
                residual_inputs += 1;
                Some((r.lambda.map(floats).transpose()?, residual_inputs))
            }
            None => None,
        };
        layers.push(LayerWeights { packed, scale, bias, gelu: l.gelu, residual });
    }
    let norm = match &group.norm {
        Some(n) => Some(LayerNorm { gamma: floats(n.gamma)?, beta: n.beta.map(floats).transpose()?, eps: n.eps }),
        None => None,
    };
    // The AVX2 byte kernel where every layer's weight pairs fit, unless a
    // kernel was named (to compare kernels on the same weights); never
    // where one's do not.
    let fit = layers.iter().all(|l| l.packed.pairs_fit_i16);
    let kernel = if named && fit { kernel } else { kernel.for_weights(fit) };
    Ok(GroupWeights { k, norm, layers, kernel })
}

impl Payload for GroupWeights {
    const OP_TYPE: &'static str = OP_TYPE;

    fn outputs(&self) -> usize {
        self.layers.len()
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        check_input_arity(inputs, 1 + self.residuals())?;
        check_output_arity(outputs, self.layers.len())?;
        for input in inputs {
            s.equals(&input.datum_type, f32::datum_type())?;
        }
        for (o, layer) in outputs.iter().zip(&self.layers) {
            let n = layer.packed.n;
            s.equals(&o.datum_type, f32::datum_type())?;
            s.equals(&o.rank, &inputs[0].rank)?;
            s.given(&inputs[0].shape, move |s, shape| {
                let mut shape = shape.clone();
                if let Some(last) = shape.last_mut() {
                    *last = n.to_dim();
                }
                s.equals(&o.shape, shape)
            })?;
        }
        Ok(())
    }

    fn op(self: Arc<Self>) -> Box<dyn TypedOp> {
        Box::new(QLinear { weights: self })
    }
}

/// The typed op: f32 `[.., k]` in, one f32 `[.., n]` per layer out.
#[derive(Debug, Clone)]
pub(crate) struct QLinear {
    weights: Arc<GroupWeights>,
}

impl QLinear {
    pub(crate) fn kernel_name(&self) -> &'static str {
        self.weights.kernel.name()
    }

    pub(crate) fn layers(&self) -> usize {
        self.weights.layers.len()
    }
}

placeholder::same_payload!(QLinear, weights);

impl Op for QLinear {
    fn name(&self) -> StaticName {
        OP_TYPE.into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!("{:?}", self.weights)])
    }

    op_as_typed_op!();
}

thread_local! {
    /// The quantized activations, reused across calls and layers (up to
    /// 197 x 4096 bytes for a ViT-L MLP) instead of allocated per call.
    static ACTIVATIONS: std::cell::RefCell<Activations> = Default::default();
    /// The layer norm's output, likewise.
    static NORMED: std::cell::RefCell<Lines<f32>> = Default::default();
}

impl EvalOp for QLinear {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let w = &self.weights;
        let input = &inputs[0];
        let x = input.try_as_plain_ram()?.as_slice::<f32>()?;
        let workers = workers::current();
        let mut outputs = w
            .layers
            .iter()
            .map(|l| {
                let mut shape: TVec<usize> = input.shape().into();
                *shape.last_mut().context("scalar input")? = l.packed.n;
                unsafe { Tensor::uninitialized::<f32>(&shape) }
            })
            .collect::<TractResult<Vec<Tensor>>>()?;
        ACTIVATIONS.with_borrow_mut(|a| -> TractResult<()> {
            match &w.norm {
                Some(norm) => NORMED.with_borrow_mut(|y| {
                    y.resize(x.len());
                    let range = norm.apply(x, y, &workers);
                    a.quantize_in_range(y, range, w.k, w.kernel, &workers);
                }),
                None => a.quantize(x, w.k, w.kernel, &workers),
            }
            let mut slices = outputs.iter_mut().map(|t| t.try_as_plain_ram_mut()).collect::<TractResult<Vec<_>>>()?;
            let jobs = w
                .layers
                .iter()
                .zip(slices.iter_mut())
                .map(|(l, out)| {
                    Ok(Job::new(a, &l.packed, &l.scale, l.bias.as_deref(), l.gelu, out.as_slice_mut::<f32>()?))
                })
                .collect::<TractResult<Vec<_>>>()?;
            qgemm::run(w.kernel, a, &jobs, &workers);
            Ok(())
        })?;
        for (l, out) in w.layers.iter().zip(&mut outputs) {
            if let Some((lambda, i)) = &l.residual {
                let residual = inputs[*i].try_as_plain_ram()?.as_slice::<f32>()?;
                ensure!(
                    residual.len() == out.len(),
                    "{OP_TYPE}: the skip connection's input differs in size from the layer's output"
                );
                let mut out = out.try_as_plain_ram_mut()?;
                qgemm::add_residual(out.as_slice_mut::<f32>()?, lambda.as_deref(), residual, &workers);
            }
        }
        Ok(outputs.into_iter().map(|t| t.into_tvalue()).collect())
    }
}

impl TypedOp for QLinear {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let shape = &inputs[0].shape;
        ensure!(
            shape.last() == Some(&self.weights.k.to_dim()),
            "{OP_TYPE} expects [.., {}], got {shape:?}",
            self.weights.k
        );
        let mut facts = tvec![];
        for l in &self.weights.layers {
            let mut dims: TVec<TDim> = shape.iter().cloned().collect();
            *dims.last_mut().expect("checked") = l.packed.n.to_dim();
            if let Some((_, i)) = &l.residual {
                // A skip connection that broadcasts is not one lookout runs.
                ensure!(
                    inputs[*i].shape.iter().eq(dims.iter()),
                    "{OP_TYPE}: skip connection of shape {:?} for an output of {dims:?}",
                    inputs[*i].shape
                );
            }
            facts.push(f32::fact(dims));
        }
        Ok(facts)
    }

    fn cost(&self, inputs: &[&TypedFact]) -> TractResult<TVec<(Cost, TDim)>> {
        let rows: TDim = inputs[0].shape.iter().rev().skip(1).product();
        let macs: usize = self.weights.layers.iter().map(|l| l.packed.n * self.weights.k).sum();
        Ok(tvec!((Cost::FMA(i32::datum_type()), rows * macs)))
    }

    as_op!();
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn finds_every_quantized_linear_of_the_digits_model() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/digits/digits-int8.onnx");
        let lazy = LazyModel::open(&path).unwrap();
        let groups = find(&lazy);
        // 4 blocks x (query/key/value, attention output, MLP in, MLP out)
        // plus the head: 17 quantizers for 25 matmuls, all fused.
        assert_eq!(groups.len(), 17);
        assert_eq!(groups.iter().map(|g| g.layers.len()).sum::<usize>(), 25);
        assert_eq!(groups.iter().filter(|g| g.layers.len() == 3).count(), 4, "q, k, v share a quantizer");
        // BEiT's key projection has no bias; every other layer has one.
        assert_eq!(groups.iter().flat_map(|g| &g.layers).filter(|l| l.bias.is_none()).count(), 4);
        // Each block's first MLP layer takes its GELU along.
        let gelus: Vec<Gelu> = groups.iter().flat_map(|g| &g.layers).filter_map(|l| l.gelu).collect();
        assert_eq!(gelus.len(), 4);
        assert!(gelus.iter().all(|g| *g == Gelu { div: std::f32::consts::SQRT_2, add: 1.0, mul: 0.5 }), "{gelus:?}");
        // The layer norm before each block's attention and MLP (the head's
        // is read by the pooling, not by a quantizer); the skip connection
        // (with BEiT's layer scale) after each block's attention output and
        // MLP out.
        assert_eq!(groups.iter().filter(|g| g.norm.is_some()).count(), 8);
        let residuals: Vec<&Residual> =
            groups.iter().flat_map(|g| &g.layers).filter_map(|l| l.residual.as_ref()).collect();
        assert_eq!(residuals.len(), 8);
        assert!(residuals.iter().all(|r| r.lambda.is_some()));
    }

    #[test]
    fn a_quantizer_with_another_reader_is_left_to_tract() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/digits/digits-int8.onnx");
        let mut lazy = LazyModel::open(&path).unwrap();
        let graph = lazy.proto.graph.as_mut().unwrap();
        let q = graph.node.iter().find(|n| n.op_type == "DynamicQuantizeLinear").unwrap().output[0].clone();
        graph.node.push(NodeProto {
            op_type: "Identity".into(),
            input: vec![q],
            output: vec!["x".into()],
            ..Default::default()
        });
        assert_eq!(find(&lazy).len(), 16);
    }
}
