//! Brings the forms in which exporters write the same layers to the one
//! form lookout's patterns (`qlinear.rs`, `attention/`) match, before they
//! run.
//!
//! `tools/export_model.py` folds the graph with onnxruntime's optimizer
//! before quantizing; the patterns were written against that. A plain
//! export quantized as it is computes the same model another way:
//!
//! - torch's legacy exporter leaves its constants as `Constant` nodes and
//!   BEiT's relative position bias as ~450 Shape, Gather, ScatterND, Where
//!   and Resize nodes per block that read nothing but constants;
//! - the dynamo exporter transposes the keys as `Reshape` to 3-D,
//!   `Transpose<0,2,1>` and `Reshape` back after the head split, writes
//!   GELU as `y * (0.5 * (1 + erf(y / sqrt 2)))`, and for transformers' ViT
//!   adds a mask of zeros to the scores and guards the softmax with
//!   `Where(IsNaN(p), 0, p)`;
//! - transformers' ViT reshapes the weighted sum to its own shape before
//!   merging the heads.
//!
//! Here every node whose inputs are constants is evaluated once with
//! tract's ops, one by one (`ScatterND` as a byte copy, reshapes without
//! one, a bias's gather and transpose as one pass: `rows.rs`), and
//! becomes an initializer; the key transposes become one
//! `Transpose`, the no-ops go, and GELU's products are reordered to
//! `(y * (1 + erf(..))) * 0.5` (exact: the product by 0.5 only changes the
//! exponent). Each rewrite keeps the names of the tensors that other nodes
//! read.

use std::collections::{HashMap, HashSet};
use std::hash::BuildHasher;

use tract_onnx::pb::tensor_proto::DataType;
use tract_onnx::pb::{
    attribute_proto, type_proto, AttributeProto, GraphProto, ModelProto, NodeProto, TensorProto, ValueInfoProto,
};
use tract_onnx::prelude::*;

use super::onnx::{ints, Fast, GraphIndex, LazyModel, OnnxValue};

mod evaluate;
mod rows;

use evaluate::{evaluate, Evaluator};

/// What [`run`] changed, for the load report.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Canonical {
    /// Nodes evaluated at load (constants, and what reads only constants).
    pub folded: usize,
    /// Of those, the ones tract evaluated: the others computed what one
    /// of these computes.
    pub evaluated: usize,
    /// Nodes removed by merging `Reshape`/`Transpose` chains into one
    /// `Transpose` and dropping no-ops.
    pub transposes: usize,
    /// GELUs whose products were reordered.
    pub gelus: usize,
}

/// Ops never folded: random draws differ per run, and quantizers of
/// constant weights are what lookout's and tract's int8 paths read.
const NOT_FOLDED: &[&str] = &[
    "RandomNormal",
    "RandomNormalLike",
    "RandomUniform",
    "RandomUniformLike",
    "Multinomial",
    "Bernoulli",
    "QuantizeLinear",
    "DequantizeLinear",
    "DynamicQuantizeLinear",
];

/// Runs every rewrite; returns what changed and the initializers no node
/// reads any more (for [`LazyModel::into_proto`] to drop unread).
pub(crate) fn run(lazy: &mut LazyModel) -> TractResult<(Canonical, HashSet<usize>)> {
    let read_before = read_initializers(lazy);
    let declared = Declared::new(lazy.graph());
    let (folded, evaluated) = fold(lazy, &declared)?;
    let transposes = merge_transposes(lazy, &declared);
    let gelus = reorder_gelus(lazy);
    let read_after = read_initializers(lazy);
    let unread = read_before.difference(&read_after).copied().collect();
    Ok((Canonical { folded, evaluated, transposes, gelus }, unread))
}

fn read_initializers(lazy: &LazyModel) -> HashSet<usize> {
    let graph = lazy.graph();
    let read: HashSet<&str, Fast> = graph
        .node
        .iter()
        .flat_map(|n| n.input.iter())
        .chain(graph.output.iter().map(|o| &o.name))
        .map(String::as_str)
        .collect();
    graph.initializer.iter().enumerate().filter(|(_, t)| read.contains(t.name.as_str())).map(|(i, _)| i).collect()
}

/// The shapes the file declares (graph inputs, outputs, value_info), as
/// ONNX shape inference wrote them, a dimension that is not a number
/// unknown. Built once: no rewrite here changes what the file declares,
/// and a legacy export declares all of its 11,000 tensors (built for each
/// pass, 0.02 s of a plain ViT-L's load).
struct Declared(HashMap<String, Vec<Option<i64>>, Fast>);

impl Declared {
    fn new(graph: &GraphProto) -> Declared {
        let mut shapes = HashMap::default();
        for info in graph.input.iter().chain(&graph.output).chain(&graph.value_info) {
            let Some(type_proto::Value::TensorType(t)) = info.r#type.as_ref().and_then(|t| t.value.as_ref()) else {
                continue;
            };
            let Some(shape) = &t.shape else { continue };
            let dims = shape
                .dim
                .iter()
                .map(|d| match d.value {
                    Some(tract_onnx::pb::tensor_shape_proto::dimension::Value::DimValue(v)) if v > 0 => Some(v),
                    _ => None,
                })
                .collect();
            shapes.insert(info.name.clone(), dims);
        }
        Declared(shapes)
    }

    /// The dimensions of `name`, those that are not numbers `None`.
    fn dims(&self, name: &str) -> Option<&[Option<i64>]> {
        self.0.get(name).map(Vec::as_slice)
    }

    /// The shape of `name`, if every dimension is a number.
    fn shape(&self, name: &str) -> Option<Vec<i64>> {
        self.dims(name)?.iter().copied().collect()
    }
}

/// Evaluates every node whose inputs are all constant (initializers, or
/// outputs of such nodes; `Shape` of a tensor whose shape the file
/// declares) in one tract model of those nodes alone, and puts the
/// constants the rest of the graph reads in their place as initializers.
/// Returns how many nodes went and how many of them tract evaluated. A
/// constant part tract cannot run is left as it was: tract then reports the
/// problem with the whole model.
fn fold(lazy: &mut LazyModel, declared: &Declared) -> TractResult<(usize, usize)> {
    fold_with(lazy, declared, evaluate)
}

/// [`fold`], with `evaluate` running the model of the constant part.
fn fold_with(lazy: &mut LazyModel, declared: &Declared, evaluate: Evaluator) -> TractResult<(usize, usize)> {
    let graph = lazy.graph();
    let outputs: HashSet<&str, Fast> = graph.output.iter().map(|o| o.name.as_str()).collect();
    let mut constant: HashSet<&str, Fast> = graph.initializer.iter().map(|t| t.name.as_str()).collect();
    let mut folded = vec![];
    for (i, n) in graph.node.iter().enumerate() {
        let foldable = n.domain.is_empty()
            && !NOT_FOLDED.contains(&n.op_type.as_str())
            && !n.output.is_empty()
            && n.output.iter().all(|o| !o.is_empty() && !outputs.contains(o.as_str()))
            && n.attribute.iter().all(|a| a.r#type != attribute_proto::AttributeType::Graph as i32)
            && match shape_of_declared(n, declared) {
                Some(_) => true,
                None => n.input.iter().all(|i| i.is_empty() || constant.contains(i.as_str())),
            };
        if foldable {
            constant.extend(n.output.iter().map(String::as_str));
            folded.push(i);
        }
    }
    if folded.is_empty() {
        return Ok((0, 0));
    }
    let in_fold: HashSet<usize, Fast> = folded.iter().copied().collect();
    // What the rest of the graph reads from the folded part.
    let made: HashSet<&str, Fast> =
        folded.iter().flat_map(|&i| graph.node[i].output.iter().map(String::as_str)).collect();
    let mut wanted: Vec<&str> = vec![];
    for (i, n) in graph.node.iter().enumerate() {
        if in_fold.contains(&i) {
            continue;
        }
        for input in &n.input {
            if made.contains(input.as_str()) && !wanted.contains(&input.as_str()) {
                wanted.push(input);
            }
        }
    }
    if wanted.is_empty() {
        // Dead code: nothing outside reads it.
        let count = folded.len();
        lazy.edit(vec![], folded.into_iter().collect());
        return Ok((count, 0));
    }
    // A node that computes what an earlier one computes (same op,
    // attributes and inputs) is evaluated once: every block of a legacy
    // BEiT export rebuilds the same relative position index from the same
    // constants, so this leaves 1 in 20 of the large model's 10,939 nodes.
    // Nodes are keyed by a hash of their attributes' encoding (exact, and
    // cheaper than their `Debug` text), compared whole only among equal
    // keys: the Constant nodes of a legacy ViT-L hold 12 MB of tensors,
    // which as keys were copied and SipHashed (0.01 s of its load).
    //
    // Initializers with the same values count as one: the dynamo exporter
    // gives every block its own copies of the constants the relative
    // position index is built from, so each block's chain differed by name
    // alone (BEiT-base: 576 nodes evaluated where 180 differ).
    let mut same = same_values(lazy, &folded)?;
    let mut first: HashMap<NodeKey, Vec<(usize, Vec<u8>)>, Fast> = HashMap::default();
    let mut unique = vec![];
    let mut attributes = vec![];
    for &i in &folded {
        let n = &graph.node[i];
        let inputs: Vec<&str> = n.input.iter().map(|x| same.get(x.as_str()).copied().unwrap_or(x)).collect();
        attributes.clear();
        for a in &n.attribute {
            prost::Message::encode_length_delimited(a, &mut attributes).expect("a Vec grows");
        }
        let hash = Fast::default().hash_one(&attributes);
        let seen = first.entry((n.domain.as_str(), n.op_type.as_str(), inputs.clone(), hash)).or_default();
        match seen.iter().find(|(_, a)| *a == attributes) {
            Some(&(j, _)) => {
                same.extend(n.output.iter().map(String::as_str).zip(graph.node[j].output.iter().map(String::as_str)))
            }
            None => {
                seen.push((i, attributes.clone()));
                unique.push((i, inputs));
            }
        }
    }
    let evaluated_nodes = unique.len();
    let mut sub = GraphProto { name: "lookout constants".into(), ..Default::default() };
    let mut needed: HashSet<&str, Fast> = HashSet::default();
    for (i, inputs) in unique {
        let n = &graph.node[i];
        match shape_of_declared(n, declared) {
            Some(dims) => sub.node.push(constant_node(&n.output[0], dims)),
            None => {
                needed.extend(inputs.iter().filter(|i| !i.is_empty() && !made.contains(*i)));
                let mut n = n.clone();
                n.input = inputs.iter().map(|i| i.to_string()).collect();
                sub.node.push(n);
            }
        }
    }
    for (index, t) in graph.initializer.iter().enumerate() {
        if needed.contains(t.name.as_str()) {
            sub.initializer.push(lazy.initializer(index)?);
        }
    }
    let mut evaluated: Vec<&str> = vec![];
    for name in &wanted {
        let name = same.get(name).copied().unwrap_or(name);
        if !evaluated.contains(&name) {
            evaluated.push(name);
        }
    }
    sub.output = evaluated.iter().map(|&name| ValueInfoProto { name: name.into(), ..Default::default() }).collect();
    let proto = ModelProto {
        ir_version: lazy.proto.ir_version,
        opset_import: lazy.proto.opset_import.clone(),
        graph: Some(sub),
        ..Default::default()
    };
    // tract panics on some malformed graphs; here that only means the
    // constants stay for tract to judge with the rest.
    let values = match std::panic::catch_unwind(|| evaluate(&proto)) {
        Ok(Ok(values)) => values,
        Ok(Err(e)) => {
            log::debug!("constant part of the graph left to tract: {e:#}");
            return Ok((0, 0));
        }
        Err(_) => return Ok((0, 0)),
    };
    let Some(values) = values.into_iter().map(|v| OnnxValue::new(v.into_arc_tensor())).collect::<Option<Vec<_>>>()
    else {
        return Ok((0, 0));
    };
    // One initializer per value: a reader of a name whose value an
    // earlier node computed reads that node's (a legacy BEiT export
    // computes some per-block constants the same in every block).
    let mut renamed = vec![];
    for (i, n) in graph.node.iter().enumerate() {
        if !in_fold.contains(&i) && n.input.iter().any(|x| same.contains_key(x.as_str())) {
            let mut n = n.clone();
            for x in &mut n.input {
                if let Some(&first) = same.get(x.as_str()) {
                    *x = first.into();
                }
            }
            renamed.push((i, n));
        }
    }
    let count = folded.len();
    let evaluated: Vec<String> = evaluated.into_iter().map(String::from).collect();
    lazy.edit(renamed, folded.into_iter().collect());
    for (name, v) in evaluated.iter().zip(values) {
        lazy.add_value(name, v);
    }
    Ok((count, evaluated_nodes))
}

/// Each initializer of at most [`SAME_VALUES_MAX`] values that a node of
/// `folded` reads, named by the first such initializer with the same type,
/// dims and values (their encodings without the name compared whole: only
/// equal tensors are merged); the first ones are not in the map.
fn same_values<'g>(lazy: &'g LazyModel, folded: &[usize]) -> TractResult<HashMap<&'g str, &'g str, Fast>> {
    let graph = lazy.graph();
    let read: HashSet<&str, Fast> =
        folded.iter().flat_map(|&i| graph.node[i].input.iter().map(String::as_str)).collect();
    let mut first: HashMap<u64, Vec<(&str, Vec<u8>)>, Fast> = HashMap::default();
    let mut same = HashMap::default();
    for (index, t) in graph.initializer.iter().enumerate() {
        let values = t.dims.iter().try_fold(1i64, |n, &d| n.checked_mul(d.max(0)));
        if !read.contains(t.name.as_str()) || values.is_none_or(|n| n > SAME_VALUES_MAX) {
            continue;
        }
        let mut values = lazy.initializer(index)?;
        values.name.clear();
        let bytes = prost::Message::encode_to_vec(&values);
        let seen = first.entry(Fast::default().hash_one(&bytes)).or_default();
        match seen.iter().find(|(_, b)| *b == bytes) {
            Some(&(earlier, _)) => {
                same.insert(t.name.as_str(), earlier);
            }
            None => seen.push((t.name.as_str(), bytes)),
        }
    }
    Ok(same)
}

/// Larger initializers are weights, which no exporter repeats, and whose
/// copies here would double a load's memory.
const SAME_VALUES_MAX: i64 = 1 << 18;

/// What a node computes: domain, op, inputs and the hash of its encoded
/// attributes.
type NodeKey<'a> = (&'a str, &'a str, Vec<&'a str>, u64);

/// The output of `Shape` node `n` when the shape of its input is declared.
fn shape_of_declared(n: &NodeProto, declared: &Declared) -> Option<Vec<i64>> {
    if n.op_type != "Shape" || n.input.len() != 1 || n.output.len() != 1 {
        return None;
    }
    let dims = declared.shape(&n.input[0])?;
    let rank = dims.len() as i64;
    let at = |name: &str, default: i64| {
        let v = super::onnx::int(n, name).unwrap_or(default);
        (if v < 0 { v + rank } else { v }).clamp(0, rank) as usize
    };
    let (start, end) = (at("start", 0), at("end", rank));
    Some(dims.get(start..end.max(start))?.to_vec())
}

fn constant_node(output: &str, values: Vec<i64>) -> NodeProto {
    let value = TensorProto {
        dims: vec![values.len() as i64],
        data_type: DataType::Int64 as i32,
        int64_data: values,
        ..Default::default()
    };
    NodeProto {
        op_type: "Constant".into(),
        output: vec![output.into()],
        attribute: vec![AttributeProto {
            name: "value".into(),
            r#type: attribute_proto::AttributeType::Tensor as i32,
            t: Some(value),
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// `Reshape(Transpose<0,2,1>(Reshape(x, [B*H, T, D])), [B, H, D, T])` is
/// `Transpose<0,1,3,2>(x)` for `x` of shape `[B, H, T, D]`; two
/// `Transpose`s in a row are one; a `Reshape` that keeps its input's shape
/// (transformers' ViT before merging the heads) is none. Returns how many
/// nodes were removed.
fn merge_transposes(lazy: &mut LazyModel, declared: &Declared) -> usize {
    let mut merged = 0;
    loop {
        let merges = next_merges(lazy, declared);
        if merges.is_empty() {
            return merged;
        }
        merged += merges.iter().map(|(_, _, removed)| removed.len()).sum::<usize>();
        lazy.replace_nodes(merges);
    }
}

/// The merges one pass over the graph finds whose nodes no other merge of
/// the pass touches (one pass per merge rebuilt the index each time: 0.2 s
/// of a plain ViT-L's load). What one merge makes possible, the next pass
/// finds.
fn next_merges(lazy: &LazyModel, declared: &Declared) -> Vec<(usize, NodeProto, Vec<usize>)> {
    let g = GraphIndex::new(lazy);
    let mut touched = HashSet::new();
    let mut merges = vec![];
    for (i, n) in g.nodes() {
        let Some((at, node, removed)) = merge_at(&g, declared, i, n) else { continue };
        if touched.contains(&at) || removed.iter().any(|r| touched.contains(r)) {
            continue;
        }
        touched.insert(at);
        touched.extend(removed.iter().copied());
        merges.push((at, node, removed));
    }
    merges
}

/// The merge at node `i` (`n`), if any.
fn merge_at(g: &GraphIndex, declared: &Declared, i: usize, n: &NodeProto) -> Option<(usize, NodeProto, Vec<usize>)> {
    // A Reshape to the shape its input has: its reader reads the input.
    for (slot, input) in n.input.iter().enumerate() {
        let Some(r) = g.private_producer(input).filter(|&r| g.is(r, "Reshape", 2)) else { continue };
        let (x, to) = (&g.node(r).input[0], g.int64s(&g.node(r).input[1]));
        let allow_zero = super::onnx::int(g.node(r), "allowzero").unwrap_or(0) != 0;
        if !allow_zero && declared.dims(x).zip(to).is_some_and(|(xs, to)| keeps_shape(xs, &to)) {
            let mut node = n.clone();
            node.input[slot] = x.clone();
            return Some((i, node, vec![r]));
        }
    }
    // No-ops torch's dynamo exporter writes around the attention
    // scores: `Add` of zeros (an absent mask), and `Where(IsNaN(p), 0,
    // p)` on a softmax `p`, which is NaN only where its input was.
    for (slot, input) in n.input.iter().enumerate() {
        let Some(p) = g.private_producer(input) else { continue };
        let pn = g.node(p);
        let kept = if g.is(p, "Add", 2) {
            let same_shape = |name: &str| declared.shape(name).is_some_and(|s| declared.shape(input) == Some(s));
            match (&pn.input[0], &pn.input[1]) {
                (x, z) | (z, x) if same_shape(x) && g.zeros(z) => Some((x.clone(), vec![p])),
                _ => None,
            }
        } else if g.is(p, "Where", 3) {
            let (c, z, x) = (&pn.input[0], &pn.input[1], &pn.input[2]);
            let nan = g.private_producer(c).filter(|&c| g.is(c, "IsNaN", 1) && g.node(c).input[0] == *x);
            let softmax = g.producer(x).is_some_and(|s| g.is(s, "Softmax", 1));
            match nan {
                Some(c) if softmax && g.scalar(z) == Some(0.0) => Some((x.clone(), vec![p, c])),
                _ => None,
            }
        } else {
            None
        };
        if let Some((x, removed)) = kept {
            let mut node = n.clone();
            node.input[slot] = x;
            return Some((i, node, removed));
        }
    }
    if g.is(i, "Reshape", 2) {
        let t = g.private_producer(&n.input[0]).filter(|&t| g.is(t, "Transpose", 1))?;
        if ints(g.node(t), "perm").as_deref() != Some(&[0, 2, 1]) {
            return None;
        }
        let r = g.private_producer(&g.node(t).input[0]).filter(|&r| g.is(r, "Reshape", 2))?;
        let x = &g.node(r).input[0];
        let (Some(xs), Some(rs), Some(ys)) =
            (declared.shape(x), declared.shape(&g.node(r).output[0]), declared.shape(&n.output[0]))
        else {
            return None;
        };
        let &[b, h, tk, d] = xs.as_slice() else { return None };
        if rs[..] != [b * h, tk, d] || ys[..] != [b, h, d, tk] {
            return None;
        }
        return Some((i, transpose(x, &n.output[0], &[0, 1, 3, 2], n), vec![t, r]));
    }
    if g.is(i, "Transpose", 1) {
        let inner = g.private_producer(&n.input[0]).filter(|&t| g.is(t, "Transpose", 1))?;
        let (Some(p1), Some(p2)) = (ints(g.node(inner), "perm"), ints(n, "perm")) else { return None };
        if p1.len() != p2.len() || p2.iter().any(|&p| p < 0 || p as usize >= p1.len()) {
            return None;
        }
        let perm: Vec<i64> = p2.iter().map(|&p| p1[p as usize]).collect();
        return Some((i, transpose(&g.node(inner).input[0], &n.output[0], &perm, n), vec![inner]));
    }
    None
}

/// Whether `Reshape(x, to)` gives `x`'s own shape, `x` of dims `xs` (some
/// unknown): every target dimension copies (0) or equals `x`'s, but for at
/// most one -1, which then equals `x`'s there, the sizes being equal.
fn keeps_shape(xs: &[Option<i64>], to: &[i64]) -> bool {
    xs.len() == to.len()
        && to.iter().filter(|&&d| d == -1).count() <= 1
        && xs.iter().zip(to).all(|(&x, &t)| t == 0 || t == -1 || x == Some(t))
}

fn transpose(input: &str, output: &str, perm: &[i64], like: &NodeProto) -> NodeProto {
    NodeProto {
        name: like.name.clone(),
        op_type: "Transpose".into(),
        input: vec![input.into()],
        output: vec![output.into()],
        attribute: vec![AttributeProto {
            name: "perm".into(),
            r#type: attribute_proto::AttributeType::Ints as i32,
            ints: perm.to_vec(),
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// `Mul(y, Mul(c, Add(Erf(Div(y, s)), one)))`, scalar `c`, becomes
/// `Mul(Mul(y, Add(..)), c)`, the order `qlinear.rs` fuses.
fn reorder_gelus(lazy: &mut LazyModel) -> usize {
    let mut edits = vec![];
    {
        let g = GraphIndex::new(lazy);
        for (outer, n) in g.nodes() {
            if !g.is(outer, "Mul", 2) {
                continue;
            }
            for (y, inner_out) in [(&n.input[0], &n.input[1]), (&n.input[1], &n.input[0])] {
                let Some(inner) = g.private_producer(inner_out).filter(|&m| g.is(m, "Mul", 2) && m < outer) else {
                    continue;
                };
                let Some((a, c, _)) = g.constant_and_other(inner, |n| g.scalar(n)) else { continue };
                let m = g.node(inner);
                let Some(add) = g.private_producer(a).filter(|&a| g.is(a, "Add", 2)) else { continue };
                let is_erf = |name: &str| g.private_producer(name).is_some_and(|e| g.is(e, "Erf", 1));
                let erf_in = g.node(add).input.iter().find(|i| is_erf(i));
                let Some(div) = erf_in.and_then(|e| g.private_producer(&g.node(g.private_producer(e)?).input[0]))
                else {
                    continue;
                };
                // y is written before the inner product reads it.
                if !g.is(div, "Div", 2) || g.node(div).input[0] != *y || div > inner {
                    continue;
                }
                let mut first = m.clone();
                first.input = vec![y.clone(), a.to_string()];
                let mut second = n.clone();
                second.input = vec![m.output[0].clone(), c.to_string()];
                edits.push((inner, first));
                edits.push((outer, second));
                break;
            }
        }
    }
    let count = edits.len() / 2;
    lazy.edit(edits, HashSet::new());
    count
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn fixture(stem: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/fixtures/export-forms/{stem}-int8.onnx"))
    }

    /// The logits plain tract computes from `proto` on one fixed input.
    fn logits(proto: &ModelProto) -> Vec<f32> {
        let model = tract_onnx::onnx().model_for_proto_model(proto).unwrap();
        let model = model.with_input_fact(0, f32::fact([1, 3, 32, 32]).into()).unwrap();
        let plan = model.into_optimized().unwrap().into_runnable().unwrap();
        let x: Vec<f32> = (0..3 * 32 * 32).map(|i| ((i * 7919) % 255) as f32 / 127.5 - 1.0).collect();
        let out = plan.run(tvec!(Tensor::from_shape(&[1, 3, 32, 32], &x).unwrap().into_tvalue())).unwrap();
        out[0].try_as_plain_ram().unwrap().as_slice::<f32>().unwrap().to_vec()
    }

    #[test]
    fn each_form_is_rewritten_and_computes_what_it_computed() {
        for model in ["digits", "vit", "deit"] {
            for form in ["legacy", "dynamo"] {
                let path = fixture(&format!("{model}-{form}"));
                let before = LazyModel::open(&path).unwrap().into_proto(&Default::default()).unwrap();
                let mut lazy = LazyModel::open(&path).unwrap();
                let (canonical, unread) = run(&mut lazy).unwrap();
                assert_ne!(canonical, Canonical::default(), "{model} {form}: nothing to do?");
                if (model, form) == ("digits", "legacy") {
                    // Each of the 4 blocks rebuilds the same relative
                    // position index: evaluated once.
                    assert!(canonical.evaluated * 3 < canonical.folded, "{canonical:?}");
                }
                let g = GraphIndex::new(&lazy);
                let left: Vec<&str> = g
                    .nodes()
                    .map(|(_, n)| n.op_type.as_str())
                    .filter(|op| ["Constant", "Shape", "ScatterND", "Resize", "IsNaN"].contains(op))
                    .collect();
                assert!(left.is_empty(), "{model} {form}: constant work left: {left:?}");
                let after = lazy.into_proto(&unread).unwrap();
                let (want, got) = (logits(&before), logits(&after));
                let worst = want.iter().zip(&got).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
                assert!(worst <= 1e-4, "{model} {form}: the rewrites moved the logits by {worst}: {want:?} vs {got:?}");
            }
        }
    }

    #[test]
    fn the_constants_evaluated_in_order_are_tracts_bit_for_bit() {
        use evaluate::{parser, run_in_order, run_optimized};
        fn in_order(proto: &ModelProto) -> TractResult<TVec<TValue>> {
            run_in_order(&parser().model_for_proto_model(proto)?)
        }
        fn optimized(proto: &ModelProto) -> TractResult<TVec<TValue>> {
            run_optimized(parser().model_for_proto_model(proto)?)
        }
        for model in ["digits", "vit", "deit"] {
            for form in ["legacy", "dynamo"] {
                let path = fixture(&format!("{model}-{form}"));
                let (mut a, mut b) = (LazyModel::open(&path).unwrap(), LazyModel::open(&path).unwrap());
                // fold_with leaves the graph as it was where its evaluator fails.
                let declared = Declared::new(a.graph());
                let counts = fold_with(&mut a, &declared, in_order).unwrap();
                assert_eq!(counts, fold_with(&mut b, &declared, optimized).unwrap(), "{model} {form}");
                // transformers' ViT and DeiT through dynamo leave no constant work.
                let none = matches!((model, form), ("vit" | "deit", "dynamo"));
                assert_eq!(counts.1 == 0, none, "{model} {form}: {counts:?}");
                // The values held as tensors, as bytes.
                let (a, b) = (a.into_proto(&Default::default()).unwrap(), b.into_proto(&Default::default()).unwrap());
                let (a, b) = (a.graph.unwrap(), b.graph.unwrap());
                assert_eq!(a.node, b.node, "{model} {form}");
                assert_eq!(a.initializer, b.initializer, "{model} {form}");
            }
        }
    }

    #[test]
    fn constants_computed_from_copies_of_the_same_values_are_evaluated_once() {
        // y = x + (a + 1) + (b + 1) + (c + 1), where b is a copy of a under
        // another name (as the dynamo exporter gives each block its own)
        // and c has a's shape and other values.
        let f32s = |name: &str, v: &[f32]| TensorProto {
            name: name.into(),
            dims: vec![v.len() as i64],
            data_type: DataType::Float as i32,
            float_data: v.to_vec(),
            ..Default::default()
        };
        let add = |a: &str, b: &str, out: &str| NodeProto {
            op_type: "Add".into(),
            input: vec![a.into(), b.into()],
            output: vec![out.into()],
            ..Default::default()
        };
        let info = |name: &str| ValueInfoProto {
            name: name.into(),
            r#type: Some(tract_onnx::pb::TypeProto {
                value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                    elem_type: DataType::Float as i32,
                    shape: Some(tract_onnx::pb::TensorShapeProto {
                        dim: vec![tract_onnx::pb::tensor_shape_proto::Dimension {
                            value: Some(tract_onnx::pb::tensor_shape_proto::dimension::Value::DimValue(4)),
                            ..Default::default()
                        }],
                    }),
                })),
                ..Default::default()
            }),
            ..Default::default()
        };
        let (a, c) = ([1f32, 2., 3., 4.], [1f32, 2., 3., 5.]);
        let graph = GraphProto {
            node: vec![
                add("a", "one", "a1"),
                add("b", "one", "b1"),
                add("c", "one", "c1"),
                add("x", "a1", "y1"),
                add("y1", "b1", "y2"),
                add("y2", "c1", "y"),
            ],
            initializer: vec![f32s("a", &a), f32s("b", &a), f32s("c", &c), f32s("one", &[1.])],
            input: vec![info("x")],
            output: vec![info("y")],
            ..Default::default()
        };
        let proto = ModelProto {
            ir_version: 8,
            opset_import: vec![tract_onnx::pb::OperatorSetIdProto { domain: String::new(), version: 17 }],
            graph: Some(graph),
            ..Default::default()
        };
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), prost::Message::encode_to_vec(&proto)).unwrap();
        let mut lazy = LazyModel::open(file.path()).unwrap();
        let (canonical, unread) = run(&mut lazy).unwrap();
        assert_eq!((canonical.folded, canonical.evaluated), (3, 2), "{canonical:?}");
        let folded = lazy.into_proto(&unread).unwrap();
        let model = tract_onnx::onnx().model_for_proto_model(&folded).unwrap().into_optimized().unwrap();
        let x = tensor1(&[10f32, 20., 30., 40.]);
        let y = model.into_runnable().unwrap().run(tvec!(x.into_tvalue())).unwrap();
        let want: Vec<f32> = (0..4).map(|i| [10., 20., 30., 40.][i] + 2. * (a[i] + 1.) + c[i] + 1.).collect();
        assert_eq!(y[0].try_as_plain_ram().unwrap().as_slice::<f32>().unwrap(), want);
    }

    #[test]
    fn a_reshape_keeps_the_shape_only_when_every_dimension_does() {
        // transformers' ViT merging heads: [1, ?, 65, 16] to [1, -1, 65, 16].
        assert!(keeps_shape(&[Some(1), None, Some(65), Some(16)], &[1, -1, 65, 16]));
        assert!(keeps_shape(&[Some(1), Some(4), Some(65), Some(16)], &[0, 4, -1, 0]));
        assert!(!keeps_shape(&[Some(1), None, Some(65), Some(16)], &[1, -1, 16, 65]), "a transposed shape");
        assert!(
            !keeps_shape(&[Some(1), None, Some(65), Some(16)], &[1, 4, 65, 16]),
            "the unknown is not known to be 4"
        );
        assert!(!keeps_shape(&[Some(1), None, None, Some(16)], &[1, -1, -1, 16]), "two -1 are not a shape");
        assert!(!keeps_shape(&[Some(1), Some(65), Some(64)], &[1, 65, 4, 16]), "another rank");
    }

    #[test]
    fn the_exporters_folded_form_is_left_as_it_is() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/digits/digits-int8.onnx");
        let before = LazyModel::open(&path).unwrap().into_proto(&Default::default()).unwrap();
        let mut lazy = LazyModel::open(&path).unwrap();
        let (canonical, unread) = run(&mut lazy).unwrap();
        assert_eq!(canonical, Canonical::default());
        assert!(unread.is_empty());
        assert_eq!(lazy.into_proto(&unread).unwrap(), before);
    }
}
