//! Folds constant subgraphs with small results that tract leaves in the
//! plan.
//!
//! tract lowers an int8 matmul to an i8 x i8 product plus zero-point
//! corrections, one of which sums the constant weights along k. Its own
//! constant folding refuses any step whose output exceeds 4 MiB
//! (`CONST_FOLD_MEM_BUDGET`), and the i32 cast of a 1024x4096 weight that
//! feeds the sum is 16 MiB: the sum (16 KiB) is then recomputed on every
//! run. Here the whole constant ancestry of such a small result is
//! evaluated once at load time and the result becomes a `Const`; the large
//! intermediate is never stored.

use std::collections::HashMap;

use tract_onnx::prelude::*;
use tract_onnx::tract_core::ops::konst::Const;
use tract_onnx::tract_core::ops::source::TypedSource;
use tract_onnx::tract_core::optim::CONST_FOLD_MEM_BUDGET;

/// Replaces every non-`Const` node whose inputs derive from constants only
/// and whose outputs are plain tensors of at most `CONST_FOLD_MEM_BUDGET`
/// bytes by the constants it evaluates to. Returns how many were folded.
pub(crate) fn fold_small_constants(model: &mut TypedModel) -> TractResult<usize> {
    let order = model.eval_order()?;
    // Whether a node's outputs are a function of constants alone.
    let mut constant = vec![false; model.nodes.len()];
    let mut candidates = vec![];
    for &id in &order {
        let node = &model.nodes[id];
        if node.op_is::<Const>() {
            constant[id] = true;
            continue;
        }
        if node.op_is::<TypedSource>() || node.inputs.is_empty() || !node.inputs.iter().all(|i| constant[i.node]) {
            continue;
        }
        constant[id] = true;
        let small = node.outputs.iter().all(|o| {
            o.fact.exotic_fact.is_none()
                && o.fact.datum_type.is_number()
                && o.fact.mem_size().to_i64().is_ok_and(|m| m as u64 <= CONST_FOLD_MEM_BUDGET)
        });
        if small {
            candidates.push(id);
        }
    }
    // Fold only the last small node of each chain: one whose successors are
    // not all folded too (the others would become dead code anyway).
    let is_candidate: std::collections::HashSet<usize> = candidates.iter().copied().collect();
    let frontier: Vec<usize> = candidates
        .into_iter()
        .filter(|&id| {
            model.nodes[id].outputs.iter().any(|o| o.successors.iter().any(|s| !is_candidate.contains(&s.node)))
                || model.outputs.iter().any(|o| o.node == id)
        })
        .collect();

    let mut patch = TypedModelPatch::new("lookout: fold small constants");
    let mut folded = 0;
    for id in frontier {
        // A fresh cache per node: sharing one would keep every large
        // intermediate (the 16 MiB casts) alive at once.
        let mut cache = HashMap::new();
        let Some(values) = evaluate(model, id, &mut cache)? else { continue };
        let node = &model.nodes[id];
        for (slot, value) in values.into_iter().enumerate() {
            let name = if slot == 0 { format!("{}.folded", node.name) } else { format!("{}.folded.{slot}", node.name) };
            let wire = patch.add_const(name, value.into_arc_tensor())?;
            patch.shunt_outside(model, OutletId::new(id, slot), wire)?;
        }
        folded += 1;
    }
    patch.apply(model)?;
    model.compact()?;
    Ok(folded)
}

/// Evaluates node `id` out of any plan, recursively from its constant
/// inputs; `None` when an op cannot run outside a plan.
fn evaluate(
    model: &TypedModel,
    id: usize,
    cache: &mut HashMap<usize, TVec<TValue>>,
) -> TractResult<Option<TVec<TValue>>> {
    if let Some(v) = cache.get(&id) {
        return Ok(Some(v.clone()));
    }
    let node = &model.nodes[id];
    if let Some(k) = node.op_as::<Const>() {
        return Ok(Some(tvec!(k.val().clone().into_tvalue())));
    }
    let mut inputs = tvec!();
    for input in &node.inputs {
        let Some(outputs) = evaluate(model, input.node, cache)? else { return Ok(None) };
        inputs.push(outputs[input.slot].clone());
    }
    let Some(outputs) = node.op.eval_out_of_plan(inputs)? else { return Ok(None) };
    cache.insert(id, outputs.clone());
    Ok(Some(outputs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tract_onnx::tract_core::ops::cast::cast;
    use tract_onnx::tract_core::ops::math::add;
    use tract_onnx::tract_core::ops::nn::{Reduce, Reducer};

    /// x + sum_k(i32(W)) with W a 1024x2048 i8 constant: the 8 MiB cast is
    /// over tract's budget, the same shape of graph as an int8 matmul's
    /// zero-point correction.
    fn weight_sum_model() -> TractResult<TypedModel> {
        let (k, n) = (1024, 2048);
        let mut model = TypedModel::default();
        let x = model.add_source("x", i32::fact([1, n]))?;
        let w: Vec<i8> = (0..k * n).map(|i| ((i * 7919) % 255) as i8).collect();
        let w = model.add_const("w", Tensor::from_shape(&[k, n], &w)?)?;
        let w = model.wire_node("w_i32", cast(i32::datum_type()), &[w])?;
        let sum = model.wire_node("sum_w", Reduce::new(tvec!(0), Reducer::Sum), &w)?;
        let y = model.wire_node("y", add(), &[x, sum[0]])?;
        model.select_output_outlets(&y)?;
        model.into_optimized()
    }

    fn run(model: TypedModel) -> TractResult<Tensor> {
        let x = Tensor::from_shape(&[1, 2048], &(0..2048).collect::<Vec<i32>>())?;
        let out = model.into_runnable()?.run(tvec!(x.into_tvalue()))?;
        Ok(out[0].clone().into_tensor())
    }

    fn non_const_nodes(model: &TypedModel) -> usize {
        model.nodes.iter().filter(|n| !n.op_is::<Const>() && !n.op_is::<TypedSource>()).count()
    }

    #[test]
    fn folds_a_weight_sum_that_tract_recomputes_every_run() -> TractResult<()> {
        let plain = weight_sum_model()?;
        // If tract ever folds this itself, the pass is moot: say so.
        assert!(non_const_nodes(&plain) >= 3, "tract now folds the sum: {plain}");
        let mut folded = plain.clone();
        assert_eq!(fold_small_constants(&mut folded)?, 1);
        assert_eq!(non_const_nodes(&folded), 1, "only the add is left: {folded}");
        assert_eq!(run(folded)?, run(plain)?);
        Ok(())
    }
}
