//! A gather of a table's rows (ONNX `Gather` on the first axis of a
//! matrix), held as the table and its row numbers until a reader needs
//! the values.
//!
//! BEiT's relative position bias is `table[index]` (38,809 rows of a
//! `[732, heads]` table) reshaped to `[197, 197, heads]` and transposed to
//! `[heads, 197, 197]`. tract gathers it row by row, then its transpose
//! copies the shared input, zeroes a third tensor and moves the values one
//! by one into it: 76 ms of a plain ViT-L export's load for its 24 biases,
//! most of it in tract's PermuteAxes. A transpose that moves the columns
//! first here reads each value once from the table, in its own order.

use tract_onnx::prelude::*;
use tract_onnx::tract_hir::internal::bail;

/// `table`'s rows at `indices` (i64, each within the table, a negative
/// one counted from its end), under `shape`: the indices' shape then the
/// table's columns, or what a reshape that kept the columns last made of
/// it.
#[derive(Debug, Clone)]
pub(super) struct Rows {
    table: TValue,
    indices: TValue,
    shape: Vec<usize>,
}

impl Rows {
    /// ONNX `Gather(table, indices, axis)`, when it takes whole rows of a
    /// matrix whose values are bytes of a size [`Rows::columns_first`]
    /// copies; `None` leaves the gather to tract.
    pub(super) fn gather(table: &TValue, indices: &TValue, axis: i64) -> TractResult<Option<Rows>> {
        let dt = table.datum_type();
        let whole_rows = table.rank() == 2 && (axis == 0 || axis == -2);
        if !whole_rows || !dt.is_copy() || ![1, 2, 4, 8].contains(&dt.size_of()) || !indices.datum_type().is_integer() {
            return Ok(None);
        }
        let count = table.shape()[0] as i64;
        let indices = match indices.datum_type() {
            DatumType::I64 => indices.clone(),
            _ => indices.cast_to::<i64>()?.into_owned().into_tvalue(),
        };
        if let Some(&i) =
            indices.try_as_plain_ram()?.as_slice::<i64>()?.iter().find(|&&i| !(-count..count).contains(&i))
        {
            bail!("Gather index {i} out of bounds for {count} rows");
        }
        let mut shape = indices.shape().to_vec();
        shape.push(table.shape()[1]);
        Ok(Some(Rows { table: table.clone(), indices, shape }))
    }

    pub(super) fn datum_type(&self) -> DatumType {
        self.table.datum_type()
    }

    pub(super) fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The same rows under `shape`, if it keeps the table's columns as
    /// its last axis (and as many values).
    pub(super) fn reshaped(&self, shape: &[usize]) -> Option<Rows> {
        let same = shape.last() == self.shape.last() && shape.iter().product::<usize>() == self.len();
        same.then(|| Rows { shape: shape.to_vec(), ..self.clone() })
    }

    /// Whether `perm` (a `Transpose`'s, `None` for the reverse order)
    /// moves the columns first and keeps the other axes in order.
    pub(super) fn moves_columns_first(&self, perm: Option<&[usize]>) -> bool {
        let rank = self.shape.len();
        let wanted = std::iter::once(rank - 1).chain(0..rank - 1);
        match perm {
            Some(perm) => perm.len() == rank && perm.iter().copied().eq(wanted),
            None => (0..rank).rev().eq(wanted),
        }
    }

    fn len(&self) -> usize {
        self.shape.iter().product()
    }

    fn columns(&self) -> usize {
        self.table.shape()[1]
    }

    /// The values, row after row: what tract's `Gather` computes.
    pub(super) fn values(&self) -> TractResult<Tensor> {
        let bytes = self.datum_type().size_of() * self.columns();
        let table = self.table.try_as_plain_ram()?.as_bytes();
        // SAFETY: the loop writes every row of the tensor, and its values
        // are bytes (`gather` took only such types).
        let mut out = unsafe { Tensor::uninitialized_dt(self.datum_type(), &self.shape)? };
        let mut view = out.try_as_plain_ram_mut()?;
        let out_bytes = view.as_bytes_mut();
        let (count, indices) = (self.table.shape()[0], self.indices.try_as_plain_ram()?.as_slice::<i64>()?);
        for (to, &i) in out_bytes.chunks_exact_mut(bytes.max(1)).zip(indices) {
            to.copy_from_slice(&table[row(i, count) * bytes..][..bytes]);
        }
        Ok(out)
    }

    /// The values with the columns axis moved first: what tract's
    /// `Transpose` computes of [`Rows::values`] when
    /// [`Rows::moves_columns_first`] says so.
    pub(super) fn columns_first(&self) -> TractResult<Tensor> {
        let rank = self.shape.len();
        let shape: Vec<usize> =
            std::iter::once(self.shape[rank - 1]).chain(self.shape[..rank - 1].iter().copied()).collect();
        let table = self.table.try_as_plain_ram()?.as_bytes();
        // SAFETY: `columns_first_sized` writes every value, and the values
        // are bytes.
        let mut out = unsafe { Tensor::uninitialized_dt(self.datum_type(), &shape)? };
        let mut view = out.try_as_plain_ram_mut()?;
        let out_bytes = view.as_bytes_mut();
        let (columns, indices) = (self.columns(), self.indices.try_as_plain_ram()?.as_slice::<i64>()?);
        match self.datum_type().size_of() {
            1 => columns_first_sized::<1>(table, columns, indices, out_bytes),
            2 => columns_first_sized::<2>(table, columns, indices, out_bytes),
            4 => columns_first_sized::<4>(table, columns, indices, out_bytes),
            8 => columns_first_sized::<8>(table, columns, indices, out_bytes),
            size => bail!("no copy of {size}-byte values"),
        }
        Ok(out)
    }
}

/// `out[c][n] = table[indices[n]][c]`, for values of `S` bytes: each
/// output row written in order, the table (47 KB for a ViT-L bias) in
/// cache.
fn columns_first_sized<const S: usize>(table: &[u8], columns: usize, indices: &[i64], out: &mut [u8]) {
    let (table, _) = table.as_chunks::<S>();
    let (out, _) = out.as_chunks_mut::<S>();
    let count = table.len() / columns.max(1);
    for (c, out) in out.chunks_exact_mut(indices.len().max(1)).enumerate() {
        for (to, &i) in out.iter_mut().zip(indices) {
            *to = table[row(i, count) * columns + c];
        }
    }
}

/// Gather's row `i` of `count`: a negative one counts from the end.
fn row(i: i64, count: usize) -> usize {
    (if i < 0 { i + count as i64 } else { i }) as usize
}

#[cfg(test)]
mod tests {
    use super::*;
    use tract_onnx::pb::{attribute_proto::AttributeType, AttributeProto, GraphProto, ModelProto, NodeProto};
    use tract_onnx::pb::{OperatorSetIdProto, ValueInfoProto};

    use crate::model::canon::evaluate::{parser, run_in_order, run_optimized};
    use crate::model::onnx::OnnxValue;

    fn node(op: &str, inputs: &[&str], output: &str, perm: Option<&[i64]>) -> NodeProto {
        let attribute = perm.map(|p| AttributeProto {
            name: "perm".into(),
            r#type: AttributeType::Ints as i32,
            ints: p.to_vec(),
            ..Default::default()
        });
        NodeProto {
            op_type: op.into(),
            input: inputs.iter().map(|i| i.to_string()).collect(),
            output: vec![output.into()],
            attribute: attribute.into_iter().collect(),
            ..Default::default()
        }
    }

    /// `nodes`, reading `values` as initializers, with output `out`.
    fn model(nodes: Vec<NodeProto>, values: &[(&str, Tensor)], out: &str) -> ModelProto {
        let graph = GraphProto {
            initializer: values
                .iter()
                .map(|(name, t)| OnnxValue::new(Arc::new(t.clone())).unwrap().to_proto(name))
                .collect(),
            output: vec![ValueInfoProto { name: out.into(), ..Default::default() }],
            node: nodes,
            ..Default::default()
        };
        let opset = OperatorSetIdProto { domain: String::new(), version: 17 };
        ModelProto { ir_version: 8, opset_import: vec![opset], graph: Some(graph), ..Default::default() }
    }

    /// What lookout's evaluator and tract's compute of `proto`.
    fn both(proto: &ModelProto) -> (TractResult<Tensor>, TractResult<Tensor>) {
        let run = |f: fn(InferenceModel) -> TractResult<TVec<TValue>>| {
            f(parser().model_for_proto_model(proto)?).map(|v| v[0].clone().into_tensor())
        };
        (run(|m| run_in_order(&m)), run(run_optimized))
    }

    fn table() -> Tensor {
        Tensor::from_shape(&[5, 3], &(0..15).map(|i| i as f32 * 1.5 - 4.0).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn gathered_rows_transposed_or_not_are_tracts_bit_for_bit() {
        let indices = [4i64, -1, 0, 2, -5, 3, 1, 1];
        let positive = indices.map(|i| i.rem_euclid(5));
        let shape = Tensor::from_shape(&[3], &[2i64, 4, 3]).unwrap();
        let cases: Vec<(Tensor, Vec<NodeProto>)> = vec![
            // BEiT's bias: the rows as [2, 4, columns], columns first.
            (
                Tensor::from_shape(&[8], &indices).unwrap(),
                vec![
                    node("Gather", &["table", "indices"], "g", None),
                    node("Reshape", &["g", "shape"], "r", None),
                    node("Transpose", &["r"], "out", Some(&[2, 0, 1])),
                ],
            ),
            // i32 indices already [2, 4]; Transpose's default (reversed) order.
            (
                Tensor::from_shape(&[2, 4], &indices.map(|i| i as i32)).unwrap(),
                vec![node("Gather", &["table", "indices"], "g", None), node("Transpose", &["g"], "out", None)],
            ),
            // A transpose that keeps the columns last: the rows gathered.
            (
                Tensor::from_shape(&[8], &indices).unwrap(),
                vec![
                    node("Gather", &["table", "indices"], "g", None),
                    node("Reshape", &["g", "shape"], "r", None),
                    node("Transpose", &["r"], "out", Some(&[1, 0, 2])),
                ],
            ),
            // Another reader of the rows.
            (
                Tensor::from_shape(&[8], &indices).unwrap(),
                vec![node("Gather", &["table", "indices"], "g", None), node("Add", &["g", "g"], "out", None)],
            ),
            // BEiT's bias through dynamo: a GatherND of one index per row
            // (tract's GatherND takes no negative index).
            (
                Tensor::from_shape(&[8, 1], &positive).unwrap(),
                vec![
                    node("GatherND", &["table", "indices"], "g", None),
                    node("Reshape", &["g", "shape"], "r", None),
                    node("Transpose", &["r"], "out", Some(&[2, 0, 1])),
                ],
            ),
            (
                Tensor::from_shape(&[2, 4, 1], &positive).unwrap(),
                vec![node("GatherND", &["table", "indices"], "out", None)],
            ),
            // Two indices per value, and indices that are not a matrix's
            // rows: tract's GatherND.
            (
                Tensor::from_shape(&[4, 2], &[4i64, 2, 4, 0, 0, 1, 3, 2]).unwrap(),
                vec![node("GatherND", &["table", "indices"], "out", None)],
            ),
            (Tensor::from_shape(&[1], &[3i64]).unwrap(), vec![node("GatherND", &["table", "indices"], "out", None)]),
        ];
        for (i, (indices, nodes)) in cases.into_iter().enumerate() {
            let proto = model(nodes, &[("table", table()), ("indices", indices), ("shape", shape.clone())], "out");
            let (ours, tracts) = both(&proto);
            assert_eq!(ours.unwrap(), tracts.unwrap(), "case {i}");
        }
        // Negative indices count from the end in GatherND as in Gather.
        let nd = [("table", table()), ("indices", Tensor::from_shape(&[8, 1], &indices).unwrap())];
        let proto = model(vec![node("GatherND", &["table", "indices"], "out", None)], &nd, "out");
        let ours = run_in_order(&parser().model_for_proto_model(&proto).unwrap()).map(|v| v[0].clone().into_tensor());
        let flat = [("table", table()), ("indices", Tensor::from_shape(&[8], &indices).unwrap())];
        let (_, tracts) = both(&model(vec![node("Gather", &["table", "indices"], "out", None)], &flat, "out"));
        assert_eq!(ours.unwrap(), tracts.unwrap());
    }

    #[test]
    fn rows_move_their_columns_first_in_one_pass() {
        let indices = Tensor::from_shape(&[2, 2], &[3i64, -2, 0, 4]).unwrap().into_tvalue();
        let rows = Rows::gather(&table().into_tvalue(), &indices, 0).unwrap().expect("whole rows");
        assert_eq!(rows.shape(), [2, 2, 3]);
        let want = Tensor::from_shape(
            &[4, 3],
            &[
                9.5f32, 11.0, 12.5, // row 3
                9.5, 11.0, 12.5, // row -2, the same
                -4.0, -2.5, -1.0, // row 0
                14.0, 15.5, 17.0, // row 4
            ],
        )
        .unwrap();
        assert_eq!(rows.values().unwrap().into_shape(&[4, 3]).unwrap(), want);
        let flat = rows.reshaped(&[4, 3]).expect("columns kept last");
        assert!(flat.moves_columns_first(Some(&[1, 0])) && flat.moves_columns_first(None));
        assert!(rows.moves_columns_first(Some(&[2, 0, 1])) && !rows.moves_columns_first(Some(&[2, 1, 0])));
        assert!(!rows.moves_columns_first(None), "reversing three axes also swaps the first two");
        assert_eq!(flat.columns_first().unwrap(), want.permute_axes(&[1, 0]).unwrap());
        assert!(rows.reshaped(&[3, 4]).is_none(), "the columns would be split");
        // Not whole rows, or not a matrix: tract's.
        assert!(Rows::gather(&table().into_tvalue(), &indices, 1).unwrap().is_none());
        let cube = Tensor::from_shape(&[1, 5, 3], &[0f32; 15]).unwrap().into_tvalue();
        assert!(Rows::gather(&cube, &indices, 0).unwrap().is_none());
        let outside = Tensor::from_shape(&[1], &[5i64]).unwrap().into_tvalue();
        let err = Rows::gather(&table().into_tvalue(), &outside, 0).unwrap_err().to_string();
        assert_eq!(err, "Gather index 5 out of bounds for 5 rows");
    }
}
