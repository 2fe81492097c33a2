//! How lookout's own ops enter the model tract parses.
//!
//! lookout rewrites the ONNX graph before tract sees it, putting a node of
//! its own (`LookoutQLinear`, `LookoutAttention`) in place of each group
//! it runs itself. tract-onnx builds ops from plain `fn` pointers, which
//! cannot carry packed weights, so each such node parses as a placeholder
//! and [`attach`] hands it its payload, by node name, right after parsing.

use std::collections::HashMap;
use std::sync::Arc;

use tract_onnx::model::ParsingContext;
use tract_onnx::pb::NodeProto;
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::internal::*;

/// What a placeholder carries: the data of one of lookout's ops, and how
/// that op looks to tract's shape inference.
pub(crate) trait Payload: std::fmt::Debug + Send + Sync + 'static {
    const OP_TYPE: &'static str;

    /// How many outputs the op has.
    fn outputs(&self) -> usize {
        1
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult;

    /// The typed op the placeholder becomes.
    fn op(self: Arc<Self>) -> Box<dyn TypedOp>;
}

/// `PartialEq` (the same payload, not an equal one) and `Eq` for one of
/// lookout's typed ops, which holds its payload in the `Arc` field named;
/// given its op type too, tract's `Op` under that name.
macro_rules! same_payload {
    ($op:ty, $field:ident) => {
        impl PartialEq for $op {
            fn eq(&self, other: &Self) -> bool {
                std::sync::Arc::ptr_eq(&self.$field, &other.$field)
            }
        }
        impl Eq for $op {}
    };
    ($op:ty, $field:ident, $name:expr) => {
        $crate::model::placeholder::same_payload!($op, $field);
        impl Op for $op {
            fn name(&self) -> StaticName {
                $name.into()
            }

            op_as_typed_op!();
        }
    };
}
pub(crate) use same_payload;

/// The node name -> payload table [`attach`] hands out.
pub(crate) type Table<P> = HashMap<String, Arc<P>>;

#[derive(Debug)]
struct Placeholder<P> {
    name: String,
    payload: Option<Arc<P>>,
}

impl<P> Clone for Placeholder<P> {
    fn clone(&self) -> Self {
        Placeholder { name: self.name.clone(), payload: self.payload.clone() }
    }
}

impl<P: Payload> Placeholder<P> {
    fn payload(&self) -> TractResult<&Arc<P>> {
        self.payload.as_ref().with_context(|| format!("{} ({}) was never given its payload", self.name, P::OP_TYPE))
    }
}

/// tract-onnx's builder for `P::OP_TYPE` nodes.
pub(crate) fn parse_node<P: Payload>(
    _ctx: &ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    Ok((expand(Placeholder::<P> { name: node.name.clone(), payload: None }), vec![]))
}

/// Gives every `P` placeholder in `model` its payload from `table`, which
/// must then be empty.
pub(crate) fn attach<P: Payload>(model: &mut InferenceModel, mut table: Table<P>) -> TractResult<()> {
    for node in model.nodes_mut() {
        if let Some(op) = node.op_as_mut::<Box<dyn Expansion>>() {
            if let Some(p) = op.as_any_mut().downcast_mut::<Placeholder<P>>() {
                p.payload = Some(table.remove(&p.name).with_context(|| format!("nothing for {}", p.name))?);
            }
        }
    }
    ensure!(table.is_empty(), "{} {} payloads have no node", table.len(), P::OP_TYPE);
    Ok(())
}

impl<P: Payload> Expansion for Placeholder<P> {
    fn name(&self) -> StaticName {
        P::OP_TYPE.into()
    }

    fn nboutputs(&self) -> TractResult<usize> {
        Ok(self.payload()?.outputs())
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        self.payload()?.rules(s, inputs, outputs)
    }

    fn wire(&self, prefix: &str, model: &mut TypedModel, inputs: &[OutletId]) -> TractResult<TVec<OutletId>> {
        model.wire_node(prefix, self.payload()?.clone().op(), inputs)
    }
}
