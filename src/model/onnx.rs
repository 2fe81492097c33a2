//! Reads an ONNX file without holding it in memory twice.
//!
//! tract decodes the whole protobuf (every weight copied out of the file)
//! and then copies every weight again into its own tensors: for a 368 MB
//! model that is over 1.4 GB at the peak, too much for a 2 GB Pi. Here the
//! protobuf is walked field by field: the graph's structure and the small
//! tensors are decoded as usual, but the bytes of a large tensor stay in
//! the file until someone asks for them, one tensor at a time. The weights
//! lookout packs for its own int8 layers are read, packed and dropped; only
//! the rest is handed to tract.
//!
//! Only the protobuf wire format is parsed here (keys, varints, lengths);
//! every message is still decoded by tract-onnx's own prost types.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

use std::sync::Arc;

use prost::Message;
use tract_onnx::pb::{tensor_proto::DataType, GraphProto, ModelProto, NodeProto, TensorProto};
use tract_onnx::prelude::{DatumType, Tensor, TractResult};

/// The hasher of the maps over a graph's names and nodes: many short keys,
/// no one's to choose (SipHash took 0.02 s of a plain ViT-L's load in the
/// fold, and 0.01 s more in the maps of every name the passes read).
pub(crate) type Fast = foldhash::fast::FixedState;

/// Tensor data above this size is left in the file until it is needed.
const DEFER_BYTES: u64 = 64 * 1024;

/// Field numbers of the messages walked here (onnx.proto3).
const MODEL_GRAPH: u32 = 7;
const GRAPH_INITIALIZER: u32 = 5;
const TENSOR_RAW_DATA: u32 = 9;

/// A model whose large tensors have not been read yet: `proto` holds every
/// initializer, those in `deferred` and `held` with no data.
pub(crate) struct LazyModel {
    pub(crate) proto: ModelProto,
    /// (initializer index, where its raw data is in the file).
    deferred: Vec<(usize, Span)>,
    /// Initializers computed at load (`canon`'s constants), as tract
    /// tensors: made into protobuf bytes only if tract is to read them,
    /// which it does not for the ones lookout's ops take (a plain ViT-L's
    /// 60 MB of relative position biases, copied twice on the way).
    held: HashMap<usize, OnnxValue>,
    file: File,
}

#[derive(Clone, Copy, Debug)]
struct Span {
    offset: u64,
    len: u64,
}

impl LazyModel {
    pub(crate) fn open(path: &Path) -> io::Result<LazyModel> {
        let file = File::open(path)?;
        let len = file.metadata()?.len();
        if len == 0 {
            return Err(invalid("the file is empty"));
        }
        let mut wire = Wire { r: BufReader::with_capacity(1 << 16, file.try_clone()?), pos: 0 };
        let mut deferred = vec![];
        let mut rest = vec![];
        let mut graph = None;
        while wire.pos < len {
            let (field, kind) = wire.key()?;
            if field == MODEL_GRAPH && kind == LEN {
                let end = wire.len_end(len)?;
                graph = Some(read_graph(&mut wire, end, &mut deferred)?);
            } else {
                wire.copy_field(field, kind, len, &mut rest)?;
            }
        }
        let mut proto = ModelProto::decode(rest.as_slice()).map_err(|e| invalid(e.to_string()))?;
        proto.graph = Some(graph.ok_or_else(|| invalid("it has no graph"))?);
        Ok(LazyModel { proto, deferred, held: HashMap::new(), file })
    }

    pub(crate) fn graph(&self) -> &GraphProto {
        self.proto.graph.as_ref().expect("open() sets the graph")
    }

    /// Initializer `index` with its data, whether deferred, held or not.
    pub(crate) fn initializer(&self, index: usize) -> io::Result<TensorProto> {
        let mut t = self.graph().initializer[index].clone();
        if let Some((_, span)) = self.deferred.iter().find(|(i, _)| *i == index) {
            t.raw_data = self.read(*span)?;
        } else if let Some(value) = self.held.get(&index) {
            t.raw_data = value.raw_data();
        }
        Ok(t)
    }

    /// Initializer `index` as a tract tensor, for the tensors lookout's own
    /// ops take (weights, scales, biases, shapes). Checked first, so that a
    /// malformed file is an error here rather than a panic or a huge
    /// allocation inside tract: the type is one of those, and the data holds
    /// exactly as many values as the dims say. Deferred data is read from
    /// the file straight into the tensor: through a `Vec` and tract's
    /// loader it was written twice, and the second time into fresh pages
    /// (0.07 s of a ViT-L's load).
    pub(crate) fn tensor(&self, index: usize) -> TractResult<Arc<Tensor>> {
        if let Some(value) = self.held.get(&index) {
            return Ok(value.tensor.clone());
        }
        let (dt, shape, deferred) = self.checked(index)?;
        let Some(span) = deferred else {
            let t = &self.graph().initializer[index];
            let tensor = tract_onnx::tensor::load_tensor(&tract_onnx::data_resolver::MmapDataResolver, t, None)?;
            return Ok(Arc::new(tensor));
        };
        // ONNX's raw data is little-endian, as every target of lookout is.
        let mut tensor = Tensor::zero_dt(dt, &shape)?;
        self.read_into(span, tensor.as_bytes_mut())?;
        Ok(Arc::new(tensor))
    }

    /// Initializer `index`, of i8 values, and its dims, read into
    /// `scratch`: a caller that keeps it across a model's weights reads
    /// them all into the same memory, where a tensor each took fresh pages
    /// and, freed, left holes between the packed weights (a ViT-L's peak
    /// RSS 60 MB higher).
    pub(crate) fn i8s<'s>(&self, index: usize, scratch: &'s mut Vec<u8>) -> TractResult<(&'s [i8], Vec<usize>)> {
        use tract_onnx::tract_core::internal::ensure;
        let (dt, shape, deferred) = match self.held.get(&index) {
            Some(v) => (v.tensor.datum_type(), v.tensor.shape().to_vec(), None),
            None => self.checked(index)?,
        };
        ensure!(dt == DatumType::I8, "{}: {dt:?} where i8 weights were expected", self.graph().initializer[index].name);
        match deferred {
            // Only bytes the buffer grows by are zeroed first; the read
            // writes them all.
            Some(span) => {
                scratch.resize(span.len as usize, 0);
                self.read_into(span, scratch)?;
            }
            None => {
                scratch.clear();
                scratch.extend_from_slice(self.tensor(index)?.try_as_plain_ram()?.as_bytes());
            }
        }
        Ok((bytemuck::cast_slice(scratch), shape))
    }

    /// The type, shape and place in the file of initializer `index`, which
    /// is not held. Checked, so that a malformed file is an error here
    /// rather than a panic or a huge allocation inside tract: the type is
    /// one lookout's ops take, and the data holds exactly as many values as
    /// the dims say.
    fn checked(&self, index: usize) -> TractResult<(DatumType, Vec<usize>, Option<Span>)> {
        use tract_onnx::tract_core::internal::{bail, ensure};
        let t = &self.graph().initializer[index];
        let len = t.dims.iter().try_fold(1u64, |n, &d| u64::try_from(d).ok().and_then(|d| n.checked_mul(d)));
        let Some(len) = len.filter(|&n| n <= 1 << 32) else { bail!("{}: bad dims {:?}", t.name, t.dims) };
        let (dt, typed) = match DataType::try_from(t.data_type) {
            Ok(DataType::Float) => (DatumType::F32, t.float_data.len()),
            Ok(DataType::Int8) => (DatumType::I8, t.int32_data.len()),
            Ok(DataType::Uint8) => (DatumType::U8, t.int32_data.len()),
            Ok(DataType::Int32) => (DatumType::I32, t.int32_data.len()),
            Ok(DataType::Int64) => (DatumType::I64, t.int64_data.len()),
            _ => bail!("{}: lookout does not read tensors of ONNX type {}", t.name, t.data_type),
        };
        ensure!(t.data_location != Some(1), "{}: stored outside the file (external data)", t.name);
        let deferred = self.deferred.iter().find(|(i, _)| *i == index).map(|&(_, span)| span);
        let bytes = deferred.map_or(t.raw_data.len() as u64, |span| span.len);
        if bytes == 0 {
            ensure!(typed as u64 == len, "{}: {typed} values for dims {:?}", t.name, t.dims);
        } else {
            ensure!(bytes == len * dt.size_of() as u64, "{}: {bytes} bytes for dims {:?}", t.name, t.dims);
        }
        Ok((dt, t.dims.iter().map(|&d| d as usize).collect(), deferred))
    }

    /// Puts each `(at, node, removed)`'s `node` in the place of node `at`
    /// and removes the nodes in `removed` (indexes into the graph as it is).
    pub(crate) fn replace_nodes(&mut self, replacements: Vec<(usize, NodeProto, Vec<usize>)>) {
        let mut put = vec![];
        let mut removed = HashSet::new();
        for (at, node, gone) in replacements {
            removed.extend(gone);
            put.push((at, node));
        }
        self.edit(put, removed);
    }

    /// Puts each `(at, node)`'s `node` in the place of node `at` and removes
    /// the nodes in `removed` (indexes into the graph as it is).
    pub(crate) fn edit(&mut self, put: Vec<(usize, NodeProto)>, removed: HashSet<usize>) {
        let mut put: HashMap<usize, NodeProto> = put.into_iter().collect();
        let graph = self.proto.graph.as_mut().expect("open() sets the graph");
        let nodes = std::mem::take(&mut graph.node);
        graph.node = nodes
            .into_iter()
            .enumerate()
            .filter_map(|(i, n)| put.remove(&i).or_else(|| (!removed.contains(&i)).then_some(n)))
            .collect();
    }

    /// Adds an initializer after the others (so that every index stays).
    pub(crate) fn add_initializer(&mut self, t: TensorProto) {
        self.proto.graph.as_mut().expect("open() sets the graph").initializer.push(t);
    }

    /// Adds initializer `name` of `value` after the others.
    pub(crate) fn add_value(&mut self, name: &str, value: OnnxValue) {
        self.add_initializer(value.header(name));
        self.held.insert(self.graph().initializer.len() - 1, value);
    }

    /// The model for tract: every initializer's data read, except those in
    /// `taken` (copied by lookout's own ops) that no node reads any more,
    /// which are dropped without being read.
    pub(crate) fn into_proto(mut self, taken: &HashSet<usize>) -> io::Result<ModelProto> {
        let drop = self.unread(taken);
        let graph = self.proto.graph.as_mut().expect("open() sets the graph");
        let names: HashSet<String, Fast> = drop.iter().map(|&i| graph.initializer[i].name.clone()).collect();
        // Old exporters also list initializers as graph inputs.
        graph.input.retain(|i| !names.contains(&i.name));
        for (index, span) in std::mem::take(&mut self.deferred) {
            if !drop.contains(&index) {
                let data = self.read(span)?;
                self.proto.graph.as_mut().expect("set").initializer[index].raw_data = data;
            }
        }
        for (index, value) in std::mem::take(&mut self.held) {
            if !drop.contains(&index) {
                self.proto.graph.as_mut().expect("set").initializer[index].raw_data = value.raw_data();
            }
        }
        let graph = self.proto.graph.as_mut().expect("set");
        let initializers = std::mem::take(&mut graph.initializer);
        graph.initializer =
            initializers.into_iter().enumerate().filter(|(i, _)| !drop.contains(i)).map(|(_, t)| t).collect();
        Ok(self.proto)
    }

    /// Writes the model as an ONNX file, without the initializers in
    /// `dropped` and without the shapes declared for tensors no node writes
    /// any more (a legacy export declares all of its 11,000). The graph's
    /// structure is encoded as usual; each deferred tensor's data is copied
    /// from the file a piece at a time after its other fields (protobuf
    /// takes fields in any order), so a 300 MB model is never in memory.
    pub(crate) fn write(mut self, out: &mut impl Write, dropped: &HashSet<usize>) -> io::Result<()> {
        let mut graph = self.proto.graph.take().expect("open() sets the graph");
        let initializers = std::mem::take(&mut graph.initializer);
        let gone: HashSet<&str, Fast> = dropped.iter().map(|&i| initializers[i].name.as_str()).collect();
        graph.input.retain(|i| !gone.contains(i.name.as_str()));
        let written: HashSet<&str, Fast> =
            graph.node.iter().flat_map(|n| n.output.iter().map(String::as_str)).collect();
        let value_info = std::mem::take(&mut graph.value_info);
        graph.value_info = value_info.into_iter().filter(|v| written.contains(v.name.as_str())).collect();
        let deferred: HashMap<usize, Span> = std::mem::take(&mut self.deferred).into_iter().collect();

        enum Data<'a> {
            File(Span),
            Memory(&'a [u8]),
        }
        impl Data<'_> {
            fn len(&self) -> u64 {
                match self {
                    Data::File(span) => span.len,
                    Data::Memory(bytes) => bytes.len() as u64,
                }
            }
        }
        let mut parts = vec![];
        for (i, t) in initializers.iter().enumerate().filter(|(i, _)| !dropped.contains(i)) {
            let data = match (deferred.get(&i), self.held.get(&i)) {
                (Some(&span), _) => Some(Data::File(span)),
                (None, Some(value)) => Some(Data::Memory(value.bytes())),
                (None, None) => None,
            }
            .filter(|d| d.len() > 0);
            let header = t.encode_to_vec();
            let len = header.len() as u64 + data.as_ref().map_or(0, |d| field_len(TENSOR_RAW_DATA, d.len()));
            parts.push((header, data, len));
        }
        let head = graph.encode_to_vec();
        let graph_len =
            head.len() as u64 + parts.iter().map(|&(_, _, len)| field_len(GRAPH_INITIALIZER, len)).sum::<u64>();

        let mut prefix = vec![];
        put_key(&mut prefix, MODEL_GRAPH, LEN);
        put_varint(&mut prefix, graph_len);
        out.write_all(&self.proto.encode_to_vec())?;
        out.write_all(&prefix)?;
        out.write_all(&head)?;
        let mut chunk = vec![];
        for (header, data, len) in parts {
            prefix.clear();
            put_key(&mut prefix, GRAPH_INITIALIZER, LEN);
            put_varint(&mut prefix, len);
            prefix.extend_from_slice(&header);
            if let Some(data) = &data {
                put_key(&mut prefix, TENSOR_RAW_DATA, LEN);
                put_varint(&mut prefix, data.len());
            }
            out.write_all(&prefix)?;
            match data {
                Some(Data::Memory(bytes)) => out.write_all(bytes)?,
                Some(Data::File(span)) => {
                    let end = span.offset + span.len;
                    let mut at = span.offset;
                    while at < end {
                        chunk.resize((end - at).min(1 << 20) as usize, 0);
                        self.file.read_exact_at(&mut chunk, at).map_err(truncated)?;
                        out.write_all(&chunk)?;
                        at += chunk.len() as u64;
                    }
                }
                None => {}
            }
        }
        Ok(())
    }

    /// Frees the data of the initializers in `taken` that no node reads
    /// any more and that were in memory (folded at load, or small): they
    /// are dropped by [`LazyModel::into_proto`], and until then would take
    /// memory a deferred one does not (a plain ViT-L's 60 MB of folded
    /// relative position biases, alive while its weights are packed).
    pub(crate) fn forget_unread(&mut self, taken: &HashSet<usize>) {
        let unread = self.unread(taken);
        let graph = self.proto.graph.as_mut().expect("open() sets the graph");
        for i in unread {
            let t = &mut graph.initializer[i];
            (t.raw_data, t.float_data, t.int32_data, t.int64_data) = Default::default();
            self.held.remove(&i);
        }
    }

    /// The initializers of `taken` that no node reads.
    fn unread(&self, taken: &HashSet<usize>) -> HashSet<usize> {
        let graph = self.graph();
        let read: HashSet<&str, Fast> = graph.node.iter().flat_map(|n| n.input.iter().map(String::as_str)).collect();
        taken.iter().copied().filter(|&i| !read.contains(graph.initializer[i].name.as_str())).collect()
    }

    fn read(&self, span: Span) -> io::Result<Vec<u8>> {
        let mut data = vec![0; span.len as usize];
        self.read_into(span, &mut data)?;
        Ok(data)
    }

    fn read_into(&self, span: Span, data: &mut [u8]) -> io::Result<()> {
        self.file.read_exact_at(data, span.offset).map_err(truncated)
    }
}

/// The lookups every pattern over the ONNX graph needs, built once: which
/// node writes and which nodes read each tensor, the initializers by name,
/// and the graph's outputs (a tensor the graph returns can never be folded
/// into a fused op). The checks here (`is`, `init`) guard every index into
/// a node's lists, so a malformed graph is left alone rather than a panic.
pub(crate) struct GraphIndex<'m> {
    lazy: &'m LazyModel,
    inits: HashMap<&'m str, usize, Fast>,
    readers: HashMap<&'m str, Vec<usize>, Fast>,
    producer: HashMap<&'m str, usize, Fast>,
    outputs: HashSet<&'m str, Fast>,
}

impl<'m> GraphIndex<'m> {
    pub(crate) fn new(lazy: &'m LazyModel) -> GraphIndex<'m> {
        let graph = lazy.graph();
        let inits = graph.initializer.iter().enumerate().map(|(i, t)| (t.name.as_str(), i)).collect();
        let mut readers: HashMap<&str, Vec<usize>, Fast> = HashMap::default();
        let mut producer = HashMap::default();
        for (i, n) in graph.node.iter().enumerate() {
            for input in &n.input {
                readers.entry(input.as_str()).or_default().push(i);
            }
            for output in &n.output {
                producer.insert(output.as_str(), i);
            }
        }
        let outputs = graph.output.iter().map(|o| o.name.as_str()).collect();
        GraphIndex { lazy, inits, readers, producer, outputs }
    }

    pub(crate) fn node(&self, i: usize) -> &'m NodeProto {
        &self.lazy.graph().node[i]
    }

    pub(crate) fn nodes(&self) -> impl Iterator<Item = (usize, &'m NodeProto)> {
        self.lazy.graph().node.iter().enumerate()
    }

    pub(crate) fn initializer(&self, i: usize) -> &'m TensorProto {
        &self.lazy.graph().initializer[i]
    }

    pub(crate) fn readers(&self, name: &str) -> &[usize] {
        self.readers.get(name).map_or(&[], Vec::as_slice)
    }

    pub(crate) fn is_output(&self, name: &str) -> bool {
        self.outputs.contains(name)
    }

    /// The single node reading `name`, if it is the only reader and `name`
    /// is not a graph output.
    pub(crate) fn only_reader(&self, name: &str) -> Option<usize> {
        match self.readers(name) {
            [i] if !self.is_output(name) => Some(*i),
            _ => None,
        }
    }

    /// The node writing `name`.
    pub(crate) fn producer(&self, name: &str) -> Option<usize> {
        self.producer.get(name).copied()
    }

    /// The node writing `name`, if `name` has no other reader and is no
    /// graph output: a node a fused op may swallow.
    pub(crate) fn private_producer(&self, name: &str) -> Option<usize> {
        self.only_reader(name)?;
        self.producer(name)
    }

    /// Whether node `i` is a standard-domain `op_type` with `inputs` inputs
    /// and one output.
    pub(crate) fn is(&self, i: usize, op_type: &str, inputs: usize) -> bool {
        let n = self.node(i);
        n.op_type == op_type && n.domain.is_empty() && n.input.len() == inputs && n.output.len() == 1
    }

    /// The input of two-input node `i` that is not `this`.
    pub(crate) fn other_input(&self, i: usize, this: &str) -> Option<&'m str> {
        let n = self.node(i);
        (n.input.len() == 2 && n.input.iter().any(|i| i == this))
            .then(|| n.input.iter().find(|i| *i != this).map(String::as_str))
            .flatten()
    }

    /// Of two-input node `i`, the one input `constant` takes (an
    /// initializer, a scalar...) and the other: (the other input, the
    /// constant's name, what `constant` made of it). `None` unless exactly
    /// one is taken.
    pub(crate) fn constant_and_other<T>(
        &self,
        i: usize,
        constant: impl Fn(&str) -> Option<T>,
    ) -> Option<(&'m str, &'m str, T)> {
        let [a, b] = &self.node(i).input[..] else { return None };
        match (constant(a), constant(b)) {
            (Some(c), None) => Some((b.as_str(), a.as_str(), c)),
            (None, Some(c)) => Some((a.as_str(), b.as_str(), c)),
            _ => None,
        }
    }

    /// The index of initializer `name`.
    pub(crate) fn init(&self, name: &str) -> Option<usize> {
        self.inits.get(name).copied()
    }

    /// Initializer `name` if it has ONNX type `dt`.
    pub(crate) fn init_of(&self, name: &str, dt: DataType) -> Option<(usize, &'m TensorProto)> {
        let i = self.init(name)?;
        let t = self.initializer(i);
        (t.data_type == dt as i32).then_some((i, t))
    }

    /// Initializer `name` as one f32.
    pub(crate) fn scalar(&self, name: &str) -> Option<f32> {
        let (i, t) = self.init_of(name, DataType::Float)?;
        if t.dims.iter().product::<i64>() != 1 {
            return None;
        }
        self.lazy.tensor(i).ok()?.cast_to_scalar::<f32>().ok()
    }

    /// Whether initializer `name` is f32 and every value 0 or -0. Read in
    /// pieces without a tensor built: a large mask or bias of zeros is
    /// read once, and one that is not stops at its first piece.
    pub(crate) fn zeros(&self, name: &str) -> bool {
        let Some((i, t)) = self.init_of(name, DataType::Float) else { return false };
        let zero = |b: &[u8]| b.chunks_exact(4).all(|x| u32::from_le_bytes([x[0], x[1], x[2], x[3]]) << 1 == 0);
        let values = t.dims.iter().try_fold(1u64, |n, &d| u64::try_from(d).ok().and_then(|d| n.checked_mul(d)));
        let Some(bytes) = values.and_then(|n| n.checked_mul(4)) else { return false };
        if let Some(value) = self.lazy.held.get(&i) {
            return zero(value.bytes());
        }
        match self.lazy.deferred.iter().find(|(j, _)| *j == i) {
            None if t.raw_data.is_empty() => {
                t.float_data.len() as u64 * 4 == bytes && t.float_data.iter().all(|&x| x == 0.0)
            }
            None => t.raw_data.len() as u64 == bytes && zero(&t.raw_data),
            Some(&(_, span)) => {
                span.len == bytes
                    && (0..span.len).step_by(1 << 16).all(|at| {
                        let piece = Span { offset: span.offset + at, len: (span.len - at).min(1 << 16) };
                        self.lazy.read(piece).is_ok_and(|b| zero(&b))
                    })
            }
        }
    }

    /// Initializer `name` as integers (a shape, say).
    pub(crate) fn int64s(&self, name: &str) -> Option<Vec<i64>> {
        let t = self.lazy.tensor(self.init(name)?).ok()?;
        Some(t.cast_to::<i64>().ok()?.try_as_plain_ram().ok()?.as_slice::<i64>().ok()?.to_vec())
    }
}

/// Attribute `name` of `n` as a list of integers.
pub(crate) fn ints(n: &NodeProto, name: &str) -> Option<Vec<i64>> {
    n.attribute.iter().find(|a| a.name == name).map(|a| a.ints.clone())
}

/// Attribute `name` of `n` as one float.
pub(crate) fn float(n: &NodeProto, name: &str) -> Option<f32> {
    n.attribute.iter().find(|a| a.name == name).map(|a| a.f)
}

/// Attribute `name` of `n` as one integer.
pub(crate) fn int(n: &NodeProto, name: &str) -> Option<i64> {
    n.attribute.iter().find(|a| a.name == name).map(|a| a.i)
}

fn read_graph(wire: &mut Wire, end: u64, deferred: &mut Vec<(usize, Span)>) -> io::Result<GraphProto> {
    let mut rest = vec![];
    let mut initializers = vec![];
    while wire.pos < end {
        let (field, kind) = wire.key()?;
        if field == GRAPH_INITIALIZER && kind == LEN {
            let end = wire.len_end(end)?;
            let mut tensor = vec![];
            let mut span = None;
            while wire.pos < end {
                let (field, kind) = wire.key()?;
                if field == TENSOR_RAW_DATA && kind == LEN {
                    let data_end = wire.len_end(end)?;
                    if data_end - wire.pos > DEFER_BYTES {
                        span = Some(Span { offset: wire.pos, len: data_end - wire.pos });
                        wire.skip_to(data_end)?;
                        continue;
                    }
                    put_key(&mut tensor, field, kind);
                    put_varint(&mut tensor, data_end - wire.pos);
                    wire.copy_to(data_end, &mut tensor)?;
                } else {
                    wire.copy_field(field, kind, end, &mut tensor)?;
                }
            }
            let t = TensorProto::decode(tensor.as_slice()).map_err(|e| invalid(e.to_string()))?;
            if let Some(span) = span {
                deferred.push((initializers.len(), span));
            }
            initializers.push(t);
        } else {
            wire.copy_field(field, kind, end, &mut rest)?;
        }
    }
    let mut graph = GraphProto::decode(rest.as_slice()).map_err(|e| invalid(e.to_string()))?;
    graph.initializer = initializers;
    Ok(graph)
}

/// Protobuf wire types.
const VARINT: u8 = 0;
const I64: u8 = 1;
const LEN: u8 = 2;
const I32: u8 = 5;

/// A reader that knows its offset in the file.
struct Wire {
    r: BufReader<File>,
    pos: u64,
}

impl Wire {
    fn byte(&mut self) -> io::Result<u8> {
        let mut b = [0u8];
        self.r.read_exact(&mut b).map_err(truncated)?;
        self.pos += 1;
        Ok(b[0])
    }

    fn varint(&mut self) -> io::Result<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            v |= ((b & 0x7f) as u64) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(invalid("a varint is longer than 10 bytes"))
    }

    fn key(&mut self) -> io::Result<(u32, u8)> {
        let key = self.varint()?;
        let (field, kind) = ((key >> 3) as u32, (key & 7) as u8);
        if field == 0 || ![VARINT, I64, LEN, I32].contains(&kind) {
            return Err(invalid(format!("byte {} holds no protobuf field", self.pos)));
        }
        Ok((field, kind))
    }

    /// Reads a length and returns where the field ends, which must be
    /// within `limit` (the end of the enclosing message).
    fn len_end(&mut self, limit: u64) -> io::Result<u64> {
        let len = self.varint()?;
        match self.pos.checked_add(len) {
            Some(end) if end <= limit => Ok(end),
            _ => Err(truncated(io::ErrorKind::UnexpectedEof.into())),
        }
    }

    fn skip_to(&mut self, end: u64) -> io::Result<()> {
        self.r.seek_relative((end - self.pos) as i64)?;
        self.pos = end;
        Ok(())
    }

    fn copy_to(&mut self, end: u64, out: &mut Vec<u8>) -> io::Result<()> {
        let n = (end - self.pos) as usize;
        let start = out.len();
        out.resize(start + n, 0);
        self.r.read_exact(&mut out[start..]).map_err(truncated)?;
        self.pos = end;
        Ok(())
    }

    /// Copies a field whose key was just read into `out`, re-encoded.
    fn copy_field(&mut self, field: u32, kind: u8, limit: u64, out: &mut Vec<u8>) -> io::Result<()> {
        put_key(out, field, kind);
        match kind {
            VARINT => put_varint(out, self.varint()?),
            I64 => self.copy_to(self.pos + 8, out)?,
            I32 => self.copy_to(self.pos + 4, out)?,
            _ => {
                let end = self.len_end(limit)?;
                put_varint(out, end - self.pos);
                self.copy_to(end, out)?;
            }
        }
        if self.pos > limit {
            return Err(truncated(io::ErrorKind::UnexpectedEof.into()));
        }
        Ok(())
    }
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_key(out: &mut Vec<u8>, field: u32, kind: u8) {
    put_varint(out, ((field as u64) << 3) | kind as u64);
}

/// The bytes a length-delimited field of `len` bytes takes, key and length
/// included.
fn field_len(field: u32, len: u64) -> u64 {
    let varint_len = |v: u64| (64 - (v | 1).leading_zeros() as u64).div_ceil(7);
    varint_len(((field as u64) << 3) | LEN as u64) + varint_len(len) + len
}

/// A tract tensor ONNX can hold: plain values of a type ONNX has.
#[derive(Clone)]
pub(crate) struct OnnxValue {
    tensor: Arc<Tensor>,
    data_type: DataType,
}

impl OnnxValue {
    /// `value`, with symbolic dimensions as the integers they are; `None`
    /// where ONNX has no type for it.
    pub(crate) fn new(value: Arc<Tensor>) -> Option<OnnxValue> {
        let tensor = match value.datum_type() {
            DatumType::TDim => Arc::new(value.cast_to::<i64>().ok()?.into_owned()),
            _ => value,
        };
        let data_type = match tensor.datum_type() {
            DatumType::F32 => DataType::Float,
            DatumType::F64 => DataType::Double,
            DatumType::F16 => DataType::Float16,
            DatumType::I64 => DataType::Int64,
            DatumType::I32 => DataType::Int32,
            DatumType::I16 => DataType::Int16,
            DatumType::I8 => DataType::Int8,
            DatumType::U8 => DataType::Uint8,
            DatumType::U16 => DataType::Uint16,
            DatumType::U32 => DataType::Uint32,
            DatumType::U64 => DataType::Uint64,
            DatumType::Bool => DataType::Bool,
            _ => return None,
        };
        tensor.try_as_plain_ram().ok()?;
        Some(OnnxValue { tensor, data_type })
    }

    fn bytes(&self) -> &[u8] {
        self.tensor.try_as_plain_ram().map(|v| v.as_bytes()).unwrap_or_default()
    }

    fn raw_data(&self) -> Vec<u8> {
        self.bytes().to_vec()
    }

    /// Initializer `name` of this value.
    #[cfg(test)]
    pub(crate) fn to_proto(&self, name: &str) -> TensorProto {
        TensorProto { raw_data: self.raw_data(), ..self.header(name) }
    }

    /// Initializer `name` of this value's type and shape, without data.
    fn header(&self, name: &str) -> TensorProto {
        TensorProto {
            name: name.into(),
            dims: self.tensor.shape().iter().map(|&d| d as i64).collect(),
            data_type: self.data_type as i32,
            ..Default::default()
        }
    }
}

fn invalid(reason: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, reason.into())
}

fn truncated(e: io::Error) -> io::Error {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        invalid("the file ends in the middle of a field (truncated?)")
    } else {
        e
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tract_onnx::pb::ValueInfoProto;
    use tract_onnx::prelude::{tensor1, TDim};

    fn digits() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("models/digits/digits-int8.onnx")
    }

    #[test]
    fn reads_the_same_model_as_prost_with_large_tensors_deferred() {
        let bytes = std::fs::read(digits()).unwrap();
        let whole = ModelProto::decode(bytes.as_slice()).unwrap();
        let lazy = LazyModel::open(&digits()).unwrap();
        let big = whole.graph.as_ref().unwrap().initializer.iter().filter(|t| t.raw_data.len() as u64 > DEFER_BYTES);
        assert_eq!(lazy.deferred.len(), big.count());
        assert!(!lazy.deferred.is_empty(), "the digits model has tensors over 64 KiB");
        let (index, _) = lazy.deferred[0];
        assert!(lazy.graph().initializer[index].raw_data.is_empty());
        assert_eq!(lazy.initializer(index).unwrap(), whole.graph.as_ref().unwrap().initializer[index]);
        assert_eq!(lazy.into_proto(&Default::default()).unwrap(), whole);
    }

    #[test]
    fn taken_initializers_are_dropped_unread_unless_a_node_still_reads_them() {
        let mut lazy = LazyModel::open(&digits()).unwrap();
        let (index, _) = lazy.deferred[0];
        let n = lazy.graph().initializer.len();
        let name = lazy.graph().initializer[index].name.clone();
        let reader = lazy.graph().node.iter().position(|n| n.input.contains(&name)).unwrap();
        let kept = lazy.graph().initializer.iter().position(|t| t.raw_data.len() == 4).unwrap();
        // The reader of `index` goes; `kept` is still read by its node.
        lazy.replace_nodes(vec![(reader, NodeProto::default(), vec![])]);
        let proto = lazy.into_proto(&[index, kept].into()).unwrap();
        let inits = &proto.graph.unwrap().initializer;
        assert_eq!(inits.len(), n - 1);
        assert!(inits.iter().all(|t| t.name != name));
    }

    #[test]
    fn a_written_model_reads_back_as_the_model_less_what_was_dropped() {
        let open = || {
            let mut lazy = LazyModel::open(&digits()).unwrap();
            lazy.add_value("held", OnnxValue::new(Arc::new(tensor1(&[1f32, 2., 3.]))).unwrap());
            let graph = lazy.proto.graph.as_mut().unwrap();
            graph.value_info.push(ValueInfoProto { name: "written by no node".into(), ..Default::default() });
            graph.input.push(ValueInfoProto { name: graph.initializer[0].name.clone(), ..Default::default() });
            lazy
        };
        let lazy = open();
        let (deferred, _) = lazy.deferred[1];
        let dropped: HashSet<usize> = [0, deferred].into();
        let mut want = lazy.into_proto(&HashSet::new()).unwrap();
        let graph = want.graph.as_mut().unwrap();
        let names: Vec<String> = dropped.iter().map(|&i| graph.initializer[i].name.clone()).collect();
        graph.initializer.retain(|t| !names.contains(&t.name));
        graph.input.retain(|i| !names.contains(&i.name));
        let declared = graph.value_info.len();
        graph.value_info.retain(|v| v.name != "written by no node");
        assert_eq!(graph.value_info.len(), declared - 1);
        assert!(graph.initializer.iter().any(|t| t.name == "held" && t.raw_data.len() == 12));

        let mut bytes = vec![];
        open().write(&mut bytes, &dropped).unwrap();
        assert_eq!(ModelProto::decode(bytes.as_slice()).unwrap(), want, "as prost reads it");
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), &bytes).unwrap();
        let again = LazyModel::open(file.path()).unwrap();
        assert_eq!(again.deferred.len(), open().deferred.len() - 1, "its large tensors are deferred again");
        assert_eq!(again.into_proto(&HashSet::new()).unwrap(), want, "as lookout reads it");
    }

    #[test]
    fn field_lengths_count_key_length_and_data() {
        for len in [0u64, 1, 127, 128, 16_383, 16_384, 1 << 32] {
            let mut field = vec![];
            put_key(&mut field, GRAPH_INITIALIZER, LEN);
            put_varint(&mut field, len);
            assert_eq!(field_len(GRAPH_INITIALIZER, len), field.len() as u64 + len, "{len}");
        }
        assert_eq!(field_len(TENSOR_RAW_DATA, 300), 1 + 2 + 300);
        assert_eq!(field_len(16, 0), 2 + 1);
    }

    #[test]
    fn forgetting_frees_only_in_memory_initializers_no_node_reads() {
        let mut lazy = LazyModel::open(&digits()).unwrap();
        let inits = &lazy.graph().initializer;
        let read = |name: &str| lazy.graph().node.iter().any(|n| n.input.iter().any(|i| i == name));
        let kept = inits.iter().position(|t| !t.raw_data.is_empty() && read(&t.name)).unwrap();
        let n = inits.len();
        lazy.add_initializer(TensorProto {
            name: "folded".into(),
            dims: vec![2],
            data_type: DataType::Float as i32,
            raw_data: vec![0; 8],
            ..Default::default()
        });
        let before = lazy.graph().initializer[kept].clone();
        lazy.forget_unread(&[kept, n].into());
        assert!(lazy.graph().initializer[n].raw_data.is_empty(), "unread: freed");
        assert_eq!(lazy.graph().initializer[kept], before, "still read: kept whole");
        let proto = lazy.into_proto(&[kept, n].into()).unwrap();
        let inits = proto.graph.unwrap().initializer;
        assert_eq!(inits.len(), n, "the forgotten one is dropped, the read one stays");
        assert!(inits.contains(&before));
    }

    #[test]
    fn every_initializer_is_the_tensor_tracts_loader_makes() {
        // Each type lookout reads, over DEFER_BYTES (read straight into the
        // tensor) and under it (tract's loader).
        let raw = |name: &str, t: DataType, dims: Vec<i64>, width: usize| {
            let n = dims.iter().product::<i64>() as usize * width;
            let raw_data = (0..n).map(|i| ((i * 7919 + name.len()) % 251) as u8).collect();
            TensorProto { name: name.into(), dims, data_type: t as i32, raw_data, ..Default::default() }
        };
        let mut initializer = vec![];
        for (t, width) in [
            (DataType::Float, 4),
            (DataType::Int8, 1),
            (DataType::Uint8, 1),
            (DataType::Int32, 4),
            (DataType::Int64, 8),
        ] {
            initializer.push(raw(&format!("big{t:?}"), t, vec![3, 70_000 / width as i64], width));
            initializer.push(raw(&format!("small{t:?}"), t, vec![5, 2], width));
        }
        // Read into the buffer after a larger one: it shrinks.
        initializer.push(raw("smaller big i8", DataType::Int8, vec![2, 66_000], 1));
        let graph = GraphProto { initializer, ..Default::default() };
        let whole = ModelProto { graph: Some(graph), ..Default::default() };
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), whole.encode_to_vec()).unwrap();
        let lazy = LazyModel::open(file.path()).unwrap();
        assert_eq!(lazy.deferred.len(), 6);
        let resolver = tract_onnx::data_resolver::MmapDataResolver;
        let mut scratch = vec![];
        for (i, t) in whole.graph.unwrap().initializer.iter().enumerate() {
            let want = tract_onnx::tensor::load_tensor(&resolver, t, None).unwrap();
            assert_eq!(*lazy.tensor(i).unwrap(), want, "{}", t.name);
            // The weights' way, into one buffer.
            match lazy.i8s(i, &mut scratch) {
                Ok((values, dims)) => {
                    assert_eq!(want.datum_type(), DatumType::I8, "{}", t.name);
                    assert_eq!(
                        (values, &dims[..]),
                        (want.try_as_plain_ram().unwrap().as_slice::<i8>().unwrap(), want.shape()),
                        "{}",
                        t.name
                    );
                }
                Err(e) => assert!(want.datum_type() != DatumType::I8 && e.to_string().contains("where i8"), "{e}"),
            }
        }
    }

    #[test]
    fn held_values_stay_tensors_until_tract_reads_them() {
        let mut lazy = LazyModel::open(&digits()).unwrap();
        let n = lazy.graph().initializer.len();
        let bias = Arc::new(Tensor::from_shape(&[2, 3], &[0.5f32, -1.0, 2.0, 0.0, -0.0, 3.0]).unwrap());
        let shape = tensor1(&[TDim::from(4), TDim::from(6)]);
        lazy.add_value("bias", OnnxValue::new(bias.clone()).unwrap());
        lazy.add_value("shape", OnnxValue::new(Arc::new(shape)).unwrap());
        lazy.add_value("zeros", OnnxValue::new(Arc::new(Tensor::zero::<f32>(&[4]).unwrap())).unwrap());
        assert!(lazy.graph().initializer[n].raw_data.is_empty(), "held, not copied");
        assert!(Arc::ptr_eq(&lazy.tensor(n).unwrap(), &bias), "the tensor itself");
        assert_eq!(*lazy.tensor(n + 1).unwrap(), tensor1(&[4i64, 6]), "symbolic dimensions as integers");
        let bytes: Vec<u8> = [0.5f32, -1.0, 2.0, 0.0, -0.0, 3.0].iter().flat_map(|v| v.to_le_bytes()).collect();
        let proto = lazy.initializer(n).unwrap();
        assert_eq!((proto.dims, proto.data_type, proto.raw_data), (vec![2, 3], DataType::Float as i32, bytes.clone()));
        let g = GraphIndex::new(&lazy);
        assert!(!g.zeros("bias") && g.zeros("zeros"));
        // A node still reads "shape"; "bias" was taken and is read by none.
        let mut reader = lazy.graph().node[0].clone();
        reader.input.push("shape".into());
        lazy.replace_nodes(vec![(0, reader, vec![])]);
        lazy.forget_unread(&[n, n + 1].into());
        assert!(!lazy.held.contains_key(&n), "forgotten");
        let inits = lazy.into_proto(&[n, n + 1].into()).unwrap().graph.unwrap().initializer;
        assert_eq!(inits.len(), n + 2, "bias dropped; shape and zeros kept");
        let shape = inits.iter().find(|t| t.name == "shape").unwrap();
        assert_eq!(
            (shape.data_type, &shape.raw_data[..]),
            (DataType::Int64 as i32, &[4u8, 0, 0, 0, 0, 0, 0, 0, 6, 0, 0, 0, 0, 0, 0, 0][..])
        );
        assert_eq!(inits.iter().find(|t| t.name == "zeros").unwrap().raw_data, vec![0; 16]);
    }

    #[test]
    fn tensors_whose_data_disagrees_with_their_dims_or_type_are_errors() {
        let mut lazy = LazyModel::open(&digits()).unwrap();
        let (index, _) = lazy.deferred[0];
        let good = lazy.tensor(index).unwrap();
        let graph = lazy.proto.graph.as_mut().unwrap();
        let dims = graph.initializer[index].dims.clone();
        graph.initializer[index].dims = vec![i64::MAX, 2];
        assert!(lazy.tensor(index).unwrap_err().to_string().contains("bad dims"));
        let graph = lazy.proto.graph.as_mut().unwrap();
        graph.initializer[index].dims = [&dims[..], &[2]].concat();
        assert!(lazy.tensor(index).unwrap_err().to_string().contains("bytes for dims"));
        let graph = lazy.proto.graph.as_mut().unwrap();
        graph.initializer[index].dims = dims;
        graph.initializer[index].data_type = 8;
        assert!(lazy.tensor(index).unwrap_err().to_string().contains("ONNX type 8"), "strings: tract panics on them");
        assert!(good.len() > 1000);
    }

    #[test]
    fn zeros_are_f32_tensors_of_only_zeros_read_from_memory_or_the_file() {
        let f32s = |name: &str, values: &[f32]| TensorProto {
            name: name.into(),
            dims: vec![values.len() as i64],
            data_type: DataType::Float as i32,
            raw_data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            ..Default::default()
        };
        // Over DEFER_BYTES, so read from the file in pieces; the non-zero
        // value is in the last piece.
        let big = 40_000;
        let mut late = vec![0.0; big];
        late[big - 1] = 1e-30;
        let mut signed = vec![0.0; big];
        signed[big / 2] = -0.0;
        let cases = [
            (f32s("small", &[0.0, -0.0]), true),
            (f32s("one", &[0.0, 1.0]), false),
            (f32s("big", &vec![0.0; big]), true),
            (f32s("signed", &signed), true),
            (f32s("late", &late), false),
            (TensorProto { raw_data: vec![], float_data: vec![0.0; 3], ..f32s("typed", &[0.0; 3]) }, true),
            (TensorProto { raw_data: vec![], float_data: vec![0.0, 2.0, 0.0], ..f32s("typed1", &[0.0; 3]) }, false),
            (TensorProto { dims: vec![3], ..f32s("short", &[0.0; 2]) }, false),
            (TensorProto { data_type: DataType::Int32 as i32, ..f32s("ints", &[0.0; 2]) }, false),
        ];
        let graph = GraphProto { initializer: cases.iter().map(|(t, _)| t.clone()).collect(), ..Default::default() };
        let proto = ModelProto { graph: Some(graph), ..Default::default() };
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), proto.encode_to_vec()).unwrap();
        let lazy = LazyModel::open(file.path()).unwrap();
        assert_eq!(lazy.deferred.len(), 3, "big, signed and late stay in the file");
        let g = GraphIndex::new(&lazy);
        for (t, want) in &cases {
            assert_eq!(g.zeros(&t.name), *want, "{}", t.name);
        }
        assert!(!g.zeros("absent"));
    }

    #[test]
    fn empty_truncated_and_foreign_files_are_errors_that_say_so() {
        let d = tempfile::tempdir().unwrap();
        let bytes = std::fs::read(digits()).unwrap();
        let cases: [(&str, &[u8], &str); 4] = [
            ("empty", b"", "empty"),
            ("half", &bytes[..bytes.len() / 2], "truncated"),
            ("text", b"this is not a model\n", "protobuf"),
            ("jpeg", &[0xff, 0xd8, 0xff, 0xe0, 0, 16, b'J', b'F'], "protobuf"),
        ];
        for (name, data, want) in cases {
            let p = d.path().join(name);
            std::fs::write(&p, data).unwrap();
            let e = LazyModel::open(&p).err().unwrap_or_else(|| panic!("{name} opened"));
            assert!(e.to_string().contains(want), "{name}: {e}");
        }
    }
}
