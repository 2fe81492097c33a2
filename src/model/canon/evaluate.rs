//! Evaluates the constant part of a graph (what `fold` cut out of it),
//! node by node in order with tract's ops, except where an op only moves
//! or copies values (a reshape, a scatter, a gather of rows and its
//! transpose) or sums integers.

use std::collections::{HashMap, HashSet};
use std::sync::OnceLock;

use tract_onnx::model::ParsingContext;
use tract_onnx::pb::{ModelProto, NodeProto};
use tract_onnx::prelude::*;
use tract_onnx::tract_core::ops::cast::wire_cast;
use tract_onnx::tract_hir::internal::*;
use tract_onnx::tract_hir::ops::array::{GatherNd, PermuteAxes, ScatterNd, ScatterReduction};

use super::rows::Rows;

/// A way to run a model without inputs: its outputs.
pub(super) type Evaluator = fn(&ModelProto) -> TractResult<TVec<TValue>>;

/// Runs the model of the constant part node by node ([`run_in_order`]);
/// where some op cannot run that way, through tract's optimized model.
pub(super) fn evaluate(proto: &ModelProto) -> TractResult<TVec<TValue>> {
    let model = parser().model_for_proto_model(proto)?;
    run_in_order(&model).or_else(|e| {
        log::debug!("constant part evaluated through tract's optimized model: {e:#}");
        run_optimized(model)
    })
}

/// tract's ONNX parser, with `ScatterND` as [`scatter_nd`], and `Gather`
/// and `ReduceSum` [`Marked`] for [`run_in_order`].
pub(super) fn parser() -> tract_onnx::Onnx {
    let mut onnx = tract_onnx::onnx();
    onnx.op_register.insert("ScatterND", scatter_nd);
    let tracts = TRACT_PARSERS
        .get_or_init(|| MARKED.iter().filter_map(|&op| Some((op, *onnx.op_register.0.get(op)?))).collect());
    for &op in tracts.keys() {
        onnx.op_register.insert(op, mark);
    }
    onnx
}

pub(super) fn run_optimized(model: InferenceModel) -> TractResult<TVec<TValue>> {
    model.into_optimized()?.into_runnable()?.run(tvec!())
}

/// Evaluates `model`'s nodes one by one in order, each op on its input
/// values, without tract's analysis, which compares each constant it
/// infers element by element with what it knew, on every pass: on the
/// legacy large BEiT export, 0.09 s of the 0.1 s tract took to evaluate
/// the constant part.
pub(super) fn run_in_order(model: &InferenceModel) -> TractResult<TVec<TValue>> {
    let order = model.eval_order()?;
    let outputs = model.output_outlets()?;
    // Each value is dropped after its last reader, so that an op that
    // writes into its input (ScatterND) takes it without a copy.
    let mut readers: HashMap<OutletId, usize> = HashMap::new();
    for &id in &order {
        for &o in &model.node(id).inputs {
            *readers.entry(o).or_default() += 1;
        }
    }
    for &o in outputs {
        *readers.entry(o).or_default() += 1;
    }
    // Rows read by more than one node are gathered once, not by each reader.
    let shared: HashSet<OutletId> = readers.iter().filter(|&(_, &n)| n > 1).map(|(&o, _)| o).collect();
    let mut values: HashMap<OutletId, Value> = HashMap::new();
    let mut take = |values: &mut HashMap<OutletId, Value>, o: OutletId| -> TractResult<Value> {
        let left = readers.get_mut(&o).context("no reader")?;
        *left -= 1;
        let v = if *left == 0 { values.remove(&o) } else { values.get(&o).cloned() };
        v.with_context(|| format!("no value for {o:?}"))
    };
    for id in order {
        let node = model.node(id);
        let mut inputs = node.inputs.iter().map(|&o| take(&mut values, o));
        let first = inputs.next().transpose()?;
        let rest = inputs.map(|v| v?.ready()).collect::<TractResult<TVec<TValue>>>()?;
        let made = match first.as_ref().map(|first| lazily(&*node.op, first, &rest)).transpose()?.flatten() {
            Some(value) => tvec!(value),
            None => {
                let inputs = first.map(Value::ready).transpose()?.into_iter().chain(rest).collect();
                eagerly(&*node.op, inputs)?.into_iter().map(Value::Ready).collect()
            }
        };
        ensure!(
            made.len() == node.outputs.len(),
            "{} made {} values for {} outputs",
            node.op.name(),
            made.len(),
            node.outputs.len()
        );
        for (slot, v) in made.into_iter().enumerate() {
            let outlet = OutletId::new(id, slot);
            let v = match v {
                Value::Rows(_) if shared.contains(&outlet) => Value::Ready(v.ready()?),
                v => v,
            };
            values.insert(outlet, v);
        }
    }
    outputs.iter().map(|&o| take(&mut values, o)?.ready()).collect()
}

/// A value of the constant part: computed, or rows of a table that a
/// later transpose may gather in its own order.
#[derive(Debug, Clone)]
enum Value {
    Ready(TValue),
    Rows(Rows),
}

impl Value {
    fn ready(self) -> TractResult<TValue> {
        match self {
            Value::Ready(v) => Ok(v),
            Value::Rows(rows) => Ok(rows.values()?.into_tvalue()),
        }
    }
}

/// What `op` makes of its inputs (`first`, then `rest`, computed) without
/// computing values: a gather of rows kept as [`Rows`], a reshape of them
/// that keeps them rows, a transpose of them that moves their columns
/// first (gathered then). `None` for every other op.
fn lazily(op: &dyn InferenceOp, first: &Value, rest: &[TValue]) -> TractResult<Option<Value>> {
    match first {
        Value::Ready(table) => {
            let Some(indices) = rest.first() else { return Ok(None) };
            if let Some(&GatherAxis(axis)) = marked::<GatherAxis>(op) {
                return Ok(Rows::gather(table, indices, axis)?.map(Value::Rows));
            }
            // A `GatherND` of one index per row is a `Gather` of rows: the
            // dynamo exporter writes BEiT's bias so (tract's took 30-45 ms of
            // a base model's load, index by index).
            let one_per_row =
                |g: &GatherNd| g.batch_dims == 0 && indices.rank() > 1 && indices.shape().last() == Some(&1);
            match op.as_op().downcast_ref::<GatherNd>() {
                Some(g) if one_per_row(g) => {
                    let rows = indices.clone().into_tensor().into_shape(&indices.shape()[..indices.rank() - 1])?;
                    Ok(Rows::gather(table, &rows.into_tvalue(), 0)?.map(Value::Rows))
                }
                _ => Ok(None),
            }
        }
        Value::Rows(rows) => {
            if let Some(shape) = reshaped(op, rows.datum_type(), rows.shape(), rest)? {
                return Ok(rows.reshaped(&shape).map(Value::Rows));
            }
            let transpose =
                op.as_op().downcast_ref::<Box<dyn Expansion>>().and_then(|e| e.as_any().downcast_ref::<PermuteAxes>());
            match transpose {
                Some(t) if rows.moves_columns_first(t.axes.as_deref()) => {
                    Ok(Some(Value::Ready(rows.columns_first()?.into_tvalue())))
                }
                _ => Ok(None),
            }
        }
    }
}

/// What `op` computes of `inputs`: reshapes and integer sums here, the
/// rest by tract's op.
fn eagerly(op: &dyn InferenceOp, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
    if let Some(first) = inputs.first() {
        if let Some(shape) = reshaped(op, first.datum_type(), first.shape(), &inputs[1..])? {
            let data = inputs.into_iter().next().context("a reshape of nothing")?;
            return Ok(tvec!(data.into_tensor().into_shape(&shape)?.into_tvalue()));
        }
    }
    if let Some(sum) = integer_sum(op, &inputs)? {
        return Ok(tvec!(sum.into_tvalue()));
    }
    op.eval_out_of_plan(inputs)?.with_context(|| format!("{} runs only in a plan", op.name()))
}

/// Ops whose output is their first input's values under another shape.
const RESHAPES: &[&str] = &["Reshape", "Flatten", "Squeeze", "Squeeze13", "Unsqueeze", "Unsqueeze13", "Identity"];

/// The shape `op` gives its first input, when it only reshapes it, as
/// tract's own rules for the op compute it from the input's shape and the
/// other inputs' values: the values then move without a copy, where
/// tract's `eval` copies them (each 2.5 MB relative position bias of a
/// plain ViT-L export, twice).
fn reshaped(op: &dyn InferenceOp, dt: DatumType, input: &[usize], rest: &[TValue]) -> TractResult<Option<Vec<usize>>> {
    if !RESHAPES.contains(&&*op.name()) {
        return Ok(None);
    }
    let facts: TVec<InferenceFact> = std::iter::once(InferenceFact::dt_shape(dt, input))
        .chain(rest.iter().map(|v| InferenceFact::from(v.clone().into_tensor())))
        .collect();
    let output = InferenceFact::default();
    let mut op = tract_onnx::tract_core::dyn_clone::clone_box(op);
    let (_, outputs, _) = op.infer(facts.iter().collect(), tvec!(&output), tvec!())?;
    let Some(shape) = outputs.first().and_then(|f| f.shape.concretize()) else { return Ok(None) };
    let Ok(shape) = shape.iter().map(|d| d.to_usize()).collect::<Result<Vec<usize>, _>>() else { return Ok(None) };
    Ok((shape.iter().product::<usize>() == input.iter().product::<usize>()).then_some(shape))
}

/// How tract-onnx parses a node.
type Parse = fn(&ParsingContext, &NodeProto) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)>;

/// The ops whose nodes [`mark`] marks.
const MARKED: &[&str] = &["Gather", "ReduceSum"];

/// tract's parsers of [`MARKED`]'s ops, which [`mark`] wraps.
static TRACT_PARSERS: OnceLock<HashMap<&'static str, Parse>> = OnceLock::new();

/// tract's op for the node, [`Marked`] with what [`run_in_order`] reads
/// of it to compute it another way.
fn mark(ctx: &ParsingContext, node: &NodeProto) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let tract =
        TRACT_PARSERS.get().and_then(|p| p.get(node.op_type.as_str())).context("marked without tract's parser")?;
    let (op, extra) = tract(ctx, node)?;
    let Some(expansion) = op.as_op().downcast_ref::<Box<dyn Expansion>>() else { return Ok((op, extra)) };
    let tract = expansion.clone();
    let marked = match node.op_type.as_str() {
        "Gather" => expand(Marked { tract, mark: GatherAxis(node.get_attr_opt("axis")?.unwrap_or(0)) }),
        "ReduceSum" => expand(Marked {
            tract,
            mark: SumAxes {
                axes_input: node.input.len() > 1,
                axes: node.get_attr_opt_vec::<i64>("axes")?,
                keep_dims: node.get_attr_opt("keepdims")?.unwrap_or(1i64) == 1,
                noop_with_empty_axes: node.get_attr_opt("noop_with_empty_axes")?.unwrap_or(0i64) == 1,
            },
        }),
        _ => return Ok((op, extra)),
    };
    Ok((marked, extra))
}

/// tract's op (its rules and wiring, wherever tract runs it), with what
/// lookout read of the node: tract's ops keep their attributes private.
#[derive(Debug, Clone)]
struct Marked<T> {
    tract: Box<dyn Expansion>,
    mark: T,
}

impl<T: std::fmt::Debug + Clone + Send + Sync + 'static> Expansion for Marked<T> {
    fn name(&self) -> StaticName {
        self.tract.name()
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        self.tract.rules(s, inputs, outputs)
    }

    fn wire(&self, prefix: &str, model: &mut TypedModel, inputs: &[OutletId]) -> TractResult<TVec<OutletId>> {
        self.tract.wire(prefix, model, inputs)
    }
}

/// The mark of `op`, if [`mark`] gave it one of type `T`.
fn marked<T: 'static>(op: &dyn InferenceOp) -> Option<&T> {
    let expansion = op.as_op().downcast_ref::<Box<dyn Expansion>>()?;
    expansion.as_any().downcast_ref::<Marked<T>>().map(|m| &m.mark)
}

/// A `Gather`'s axis, for [`Rows::gather`].
#[derive(Debug, Clone, Copy)]
struct GatherAxis(i64);

/// A `ReduceSum`'s axes, so that [`run_in_order`] sums integers itself:
/// tract computes each output value over a view of the input made for it,
/// and the one sum of a legacy BEiT export's relative position index
/// (`[196, 196, 2]` over the last axis) took 5 ms of each load. Integer
/// sums are exact in any order; a float's is left to tract.
#[derive(Debug, Clone)]
struct SumAxes {
    /// The axes are the second input (opset 13 on), else `axes`.
    axes_input: bool,
    axes: Option<Vec<i64>>,
    keep_dims: bool,
    noop_with_empty_axes: bool,
}

/// The sum `op` computes, when it is a `ReduceSum` of i64 or i32 values
/// over axes the input has; `None` leaves the rest (and the errors) to
/// tract.
fn integer_sum(op: &dyn InferenceOp, inputs: &[TValue]) -> TractResult<Option<Tensor>> {
    let (Some(op), Some(data)) = (marked::<SumAxes>(op), inputs.first()) else { return Ok(None) };
    let given = match (op.axes_input, inputs.get(1)) {
        (true, Some(axes)) => axes.cast_to::<i64>()?.try_as_plain_ram()?.as_slice::<i64>()?.to_vec(),
        // An axes input left out by an empty name: tract's to judge.
        (true, None) => return Ok(None),
        (false, _) => op.axes.clone().unwrap_or_default(),
    };
    let rank = data.rank();
    let mut axes: Vec<usize> = match given.is_empty() {
        // ONNX: no axes is all of them, unless the op is then a no-op.
        true if op.noop_with_empty_axes => return Ok(None),
        true => (0..rank).collect(),
        false => given.iter().map(|&a| if a < 0 { a + rank as i64 } else { a }).map(|a| a as usize).collect(),
    };
    axes.sort_unstable();
    axes.dedup();
    if axes.is_empty() || axes.iter().any(|&a| a >= rank) {
        return Ok(None);
    }
    fn sum<T: Datum + Copy + tract_num_traits::Zero>(data: &Tensor, axes: &[usize]) -> TractResult<Tensor> {
        let (&last, rest) = axes.split_last().context("a sum over no axis")?;
        let mut values = data.to_plain_array_view::<T>()?.sum_axis(tract_ndarray::Axis(last));
        for &a in rest.iter().rev() {
            values = values.sum_axis(tract_ndarray::Axis(a));
        }
        Ok(values.into_tensor())
    }
    let summed = match data.datum_type() {
        DatumType::I64 => sum::<i64>(data, &axes)?,
        DatumType::I32 => sum::<i32>(data, &axes)?,
        _ => return Ok(None),
    };
    let shape: Vec<usize> = (0..rank)
        .filter_map(|a| match axes.contains(&a) {
            true => op.keep_dims.then_some(1),
            false => Some(data.shape()[a]),
        })
        .collect();
    Ok(Some(summed.into_shape(&shape)?))
}

/// tract's `ScatterND`, except that without a reduction it runs as
/// [`CopyScatter`]: tract's writes each indexed slice through ndarray views
/// built per index, and a legacy BEiT export scatters its relative
/// position index one value at a time (38,416 per block): 0.15 s of the
/// large model's load, for what is a copy of bytes.
fn scatter_nd(_ctx: &ParsingContext, node: &NodeProto) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let reduction = ScatterReduction::parse(node.get_attr_opt("reduction")?.unwrap_or("none"))?;
    Ok((expand(Scatter(ScatterNd::new(reduction))), vec![]))
}

#[derive(Debug, Clone, Hash)]
struct Scatter(ScatterNd);

impl Expansion for Scatter {
    fn name(&self) -> StaticName {
        "ScatterND".into()
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        <ScatterNd as Expansion>::rules(&self.0, s, inputs, outputs)
    }

    /// tract's wiring (both values cast to their common type), with the
    /// copy in place of tract's op when there is no reduction. Wiring
    /// evaluates the op at once when its inputs are constants.
    fn wire(&self, prefix: &str, model: &mut TypedModel, inputs: &[OutletId]) -> TractResult<TVec<OutletId>> {
        if self.0.reduction != ScatterReduction::None {
            return <ScatterNd as Expansion>::wire(&self.0, prefix, model, inputs);
        }
        let types = [model.outlet_fact(inputs[0])?.datum_type, model.outlet_fact(inputs[2])?.datum_type];
        let common = DatumType::super_type_for(types).context("ScatterND of values that have no common type")?;
        let cast = wire_cast(prefix, model, &[inputs[0], inputs[2]], common)?;
        model.wire_node(prefix, CopyScatter, &[cast[0], inputs[1], cast[1]])
    }
}

/// ONNX's `ScatterND` without a reduction: `data` with the slice each
/// index tuple names replaced by the matching slice of `updates`, later
/// tuples last.
#[derive(Debug, Clone, Hash, PartialEq, Eq)]
struct CopyScatter;

impl Op for CopyScatter {
    fn name(&self) -> StaticName {
        "LookoutScatterND".into()
    }

    op_as_typed_op!();
}

impl EvalOp for CopyScatter {
    op_out_of_plan!();

    fn eval(&self, ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        // `wire` cast both values to one type; strings and symbolic
        // dimensions are not bytes to copy.
        let dt = inputs[0].datum_type();
        if !dt.is_copy() {
            return tract_onnx::tract_core::ops::array::ScatterNd::new(ScatterReduction::None).eval(ctx, inputs);
        }
        let (data, indices, updates) = args_3!(inputs);
        let indices = indices.cast_to::<i64>()?;
        let tuples = indices.try_as_plain_ram()?.as_slice::<i64>()?;
        let shape = data.shape().to_vec();
        let k = indices.shape().last().copied().unwrap_or(0);
        ensure!(
            (1..=shape.len()).contains(&k),
            "ScatterND: indices of shape {:?} for data of rank {}",
            indices.shape(),
            shape.len()
        );
        let mut want = indices.shape()[..indices.rank() - 1].to_vec();
        want.extend(&shape[k..]);
        ensure!(updates.shape() == want, "ScatterND: updates of shape {:?}, expected {want:?}", updates.shape());
        let bytes = shape[k..].iter().product::<usize>() * dt.size_of();
        let updates = updates.try_as_plain_ram()?.as_bytes();
        let mut out = data.into_tensor();
        out.try_as_plain_ram()?;
        let out_bytes = out.as_bytes_mut();
        for (tuple, update) in tuples.chunks_exact(k).zip(updates.chunks_exact(bytes.max(1))) {
            let mut at = 0;
            for (&i, &dim) in tuple.iter().zip(&shape) {
                ensure!((0..dim as i64).contains(&i), "ScatterND index {i} out of bounds for data shape {shape:?}");
                at = at * dim + i as usize;
            }
            out_bytes[at * bytes..][..bytes].copy_from_slice(update);
        }
        Ok(tvec!(out.into_tvalue()))
    }
}

impl TypedOp for CopyScatter {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(tvec!(inputs[0].datum_type.fact(inputs[0].shape.to_tvec())))
    }

    as_op!();
}

#[cfg(test)]
mod tests {
    use super::*;
    use tract_onnx::pb::{GraphProto, ValueInfoProto};

    use crate::model::onnx::OnnxValue;

    /// A model of node `n` alone, its inputs initializers of `values`.
    fn one_node_model(n: NodeProto, values: &[Tensor]) -> ModelProto {
        let graph = GraphProto {
            initializer: n
                .input
                .iter()
                .zip(values)
                .map(|(name, t)| OnnxValue::new(Arc::new(t.clone())).unwrap().to_proto(name))
                .collect(),
            output: vec![ValueInfoProto { name: n.output[0].clone(), ..Default::default() }],
            node: vec![n],
            ..Default::default()
        };
        let opset = tract_onnx::pb::OperatorSetIdProto { domain: String::new(), version: 17 };
        ModelProto { ir_version: 8, opset_import: vec![opset], graph: Some(graph), ..Default::default() }
    }

    fn node(op: &str, inputs: &[&str]) -> NodeProto {
        NodeProto {
            op_type: op.into(),
            input: inputs.iter().map(|i| i.to_string()).collect(),
            output: vec![format!("{op}_out")],
            ..Default::default()
        }
    }

    /// A model of one `ScatterND` of three initializers.
    fn scatter_model(data: &Tensor, indices: &Tensor, updates: &Tensor) -> ModelProto {
        one_node_model(
            node("ScatterND", &["data", "indices", "updates"]),
            &[data.clone(), indices.clone(), updates.clone()],
        )
    }

    #[test]
    fn a_reshape_moves_its_values_under_the_shape_tracts_rules_give() {
        let ints = |shape: &[usize], v: &[i64]| Tensor::from_shape(shape, v).unwrap();
        let data = Tensor::from_shape(&[2, 3, 4], &(0..24).map(|i| i as f32).collect::<Vec<_>>()).unwrap();
        let cases = [
            (node("Reshape", &["data", "shape"]), vec![data.clone(), ints(&[3], &[0, -1, 2])], Some(vec![2, 6, 2])),
            (node("Unsqueeze", &["data", "axes"]), vec![data.clone(), ints(&[2], &[0, 3])], Some(vec![1, 2, 3, 1, 4])),
            (node("Squeeze", &["data"]), vec![ints(&[1, 3, 1], &[1, 2, 3])], Some(vec![3])),
            (node("Transpose", &["data"]), vec![data.clone()], None),
        ];
        for (n, values, want) in cases {
            let (op_type, name) = (n.op_type.clone(), n.output[0].clone());
            let model = parser().model_for_proto_model(&one_node_model(n, &values)).unwrap();
            let op = model.nodes().iter().find(|m| m.name == name).unwrap().op.clone();
            let inputs: TVec<TValue> = values.iter().map(|t| t.clone().into_tvalue()).collect();
            assert_eq!(
                reshaped(&*op, inputs[0].datum_type(), inputs[0].shape(), &inputs[1..]).unwrap(),
                want,
                "{op_type}"
            );
            // And what tract computes, bit for bit, by either way.
            let got = run_in_order(&model).unwrap();
            let tracts = run_optimized(model).unwrap();
            assert_eq!(got[0].clone().into_tensor(), tracts[0].clone().into_tensor(), "{op_type}");
        }
    }

    #[test]
    fn an_integer_sum_is_tracts_and_a_float_sum_is_left_to_tract() {
        use tract_onnx::pb::{attribute_proto::AttributeType, AttributeProto};
        let data = Tensor::from_shape(&[3, 4, 2], &(0..24).map(|i| i * 7 - 40).collect::<Vec<i64>>()).unwrap();
        let axes = |v: &[i64]| Tensor::from_shape(&[v.len()], v).unwrap();
        // The relative position index's sum; two axes kept; all (no axes).
        for (ax, keep) in [(vec![-1], 0), (vec![2, 0], 1), (vec![1], 0), (vec![], 1)] {
            let mut n = node("ReduceSum", &["data", "axes"]);
            n.attribute.push(AttributeProto {
                name: "keepdims".into(),
                r#type: AttributeType::Int as i32,
                i: keep,
                ..Default::default()
            });
            let values = [data.clone(), axes(&ax)];
            let model = parser().model_for_proto_model(&one_node_model(n, &values)).unwrap();
            let op = model.nodes().iter().find(|m| m.name == "ReduceSum_out").unwrap().op.clone();
            let inputs: TVec<TValue> = values.iter().map(|t| t.clone().into_tvalue()).collect();
            let ours = integer_sum(&*op, &inputs).unwrap().expect("an integer sum");
            let tracts = run_optimized(model).unwrap()[0].clone().into_tensor();
            assert_eq!(ours, tracts, "axes {ax:?} keepdims {keep}");
            let floats = data.cast_to::<f32>().unwrap().into_owned().into_tvalue();
            assert!(integer_sum(&*op, &[floats, inputs[1].clone()]).unwrap().is_none());
        }
    }

    #[test]
    fn the_copying_scatter_writes_what_tracts_writes() {
        let data: Vec<f32> = (0..60).map(|i| i as f32 * 0.5).collect();
        let data = Tensor::from_shape(&[4, 3, 5], &data).unwrap();
        let ints = |shape: &[usize], v: &[i64]| Tensor::from_shape(shape, v).unwrap();
        let floats = |shape: &[usize]| {
            let n = shape.iter().product::<usize>();
            Tensor::from_shape(shape, &(0..n).map(|i| -1.0 - i as f32).collect::<Vec<_>>()).unwrap()
        };
        let cases = [
            // whole [3, 5] slices; a slice of 5; single values, one index twice
            (ints(&[2, 1], &[2, 0]), floats(&[2, 3, 5])),
            (ints(&[2, 2, 2], &[0, 1, 3, 2, 1, 0, 2, 2]), floats(&[2, 2, 5])),
            (ints(&[4, 3], &[0, 0, 0, 3, 2, 4, 1, 1, 1, 3, 2, 4]), floats(&[4])),
        ];
        for (indices, updates) in cases {
            let proto = scatter_model(&data, &indices, &updates);
            let tracts = tract_onnx::onnx().model_for_proto_model(&proto).unwrap().into_optimized().unwrap();
            let want = tracts.into_runnable().unwrap().run(tvec!()).unwrap();
            let got = evaluate(&proto).unwrap();
            assert_eq!(got[0].clone().into_tensor(), want[0].clone().into_tensor(), "indices {indices:?}");
            assert_ne!(got[0].clone().into_tensor(), data, "the scatter wrote");
        }
        // The relative position index's form: i64 values.
        let index = ints(&[3, 3], &[0; 9]);
        let proto = scatter_model(&index, &ints(&[2, 2], &[1, 1, 2, 0]), &ints(&[2], &[7, 9]));
        let got = evaluate(&proto).unwrap()[0].clone().into_tensor();
        assert_eq!(got, ints(&[3, 3], &[0, 0, 0, 0, 7, 0, 9, 0, 0]));
        let outside = scatter_model(&data, &ints(&[1, 1], &[4]), &floats(&[1, 3, 5]));
        let err = format!("{:#}", evaluate(&outside).unwrap_err());
        assert!(err.contains("index 4 out of bounds"), "{err}");
    }
}
