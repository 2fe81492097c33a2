//! The tract implementation of [`Classifier`]: load, fix the input shape,
//! optimize once, then run one persistent plan per frame.

use std::io::Read;
use std::path::Path;
use std::time::{Duration, Instant};

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::DimLike;
use tract_onnx::tract_hir::infer::GenericFactoid;

use super::attention;
use super::canon;
use super::config::ModelConfig;
use super::manifest::OutputSpec;
use super::onnx::LazyModel;
use super::passes::{self, PassReport};
use super::patches;
use super::placeholder;
use super::qgemm::Kernel;
use super::qlinear::{self, QLinear};
use super::workers::{self, Workers};
use super::{load_labels, Classifier, ModelError, ModelInfo};

/// The exact tract release in Cargo.toml (a unit test keeps them equal).
pub const TRACT_VERSION: &str = "0.23.9";

type Plan = TypedSimplePlan;

/// Name prefix of the inference threads (tract's pool: `lookout-infer-0`,
/// ...; lookout's own ops' helpers: `lookout-infer+1`, ...): 15 characters
/// with the index, the most a Linux thread name holds, so `lookout bench`
/// and `top -H` can tell them apart.
pub const POOL_THREAD_PREFIX: &str = "lookout-infer";

/// How to load a model; the default is what the daemon uses.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Run lookout's own passes (src/model/passes/) after tract's
    /// optimizer. Off only to compare against plain tract.
    pub passes: bool,
    /// Run ONNX's quantized linear layers with lookout's int8 kernel
    /// (src/model/qlinear.rs) where this CPU has one. Off to compare with
    /// tract's int8 path.
    pub lookout_int8: bool,
    /// Which of lookout's int8 kernels (part of its name, as the load line
    /// prints it: `avx2`, `amx`...); `None` for the best this CPU runs.
    pub int8_kernel: Option<String>,
    /// Run ViT self-attention blocks and patch embeddings as lookout's
    /// f32 ops (src/model/attention, src/model/patches.rs) where this CPU
    /// has their kernels.
    pub lookout_attention: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions { passes: true, lookout_int8: true, int8_kernel: None, lookout_attention: true }
    }
}

/// The name of lookout's best int8 kernel for this CPU, if it has one.
pub fn lookout_int8_kernel() -> Option<&'static str> {
    Kernel::choose(None).ok().flatten().map(Kernel::name)
}

/// Whether this CPU runs lookout's fused self-attention.
pub fn lookout_attention() -> bool {
    attention::supported()
}

/// Where load time went, for the log and `lookout bench`.
#[derive(Debug, Clone, Default)]
pub struct LoadReport {
    /// Reading the ONNX protobuf into tract's inference model.
    pub parse: Duration,
    /// Typing, decluttering and codegen (`into_optimized`).
    pub optimize: Duration,
    /// lookout's passes.
    pub passes: Duration,
    /// Building the plan and its state.
    pub plan: Duration,
    pub pass_report: PassReport,
    /// Threads of the plan's pool (1 = no pool).
    pub threads: usize,
    /// The matrix-multiplication kernels tract picked for this CPU, with
    /// how many matmuls may use each (`arm64simd_mmm_i32_8x8` is the int8
    /// SMLAL kernel of a Pi 4's Cortex-A72, `arm64dotprod_*` the SDOT one).
    pub kernels: Vec<(String, usize)>,
}

pub struct TractClassifier {
    info: ModelInfo,
    state: TypedSimpleState,
    /// NCHW input, written by preprocessing; copied into a tensor per run
    /// (0.6 MB at 224x224, microseconds next to inference).
    input: Vec<f32>,
    /// The last run's embedding output (empty without one), reused.
    embedding: Vec<f32>,
    /// The plan's pool. A run happens on one of its threads, so the
    /// parallel parts of ops share the cores with the sequential ones
    /// instead of spinning beside them on top of the caller's thread.
    pool: Option<std::sync::Arc<rayon::ThreadPool>>,
    /// What lookout's own ops split their work over (`workers.rs`).
    workers: std::sync::Arc<Workers>,
    _plan: std::sync::Arc<Plan>,
    report: LoadReport,
}

impl TractClassifier {
    pub fn load(cfg: &ModelConfig) -> Result<TractClassifier, ModelError> {
        TractClassifier::load_with(cfg, &LoadOptions::default())
    }

    pub fn load_with(cfg: &ModelConfig, options: &LoadOptions) -> Result<TractClassifier, ModelError> {
        // tract panics on some malformed files (a raw-data string tensor:
        // `unimplemented!` in tract-onnx 0.23.9); such a file is a bad
        // model, reported like any other, not a crash. The hook would print
        // the panic too, so it is silenced meanwhile, on this thread only:
        // a panic elsewhere (another test's, in one test process) must
        // still say what it was.
        let loaded = quiet_panics(|| Self::load_unguarded(cfg, options));
        loaded.unwrap_or_else(|panic| {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic".into());
            Err(ModelError::Load {
                path: cfg.path.clone(),
                reason: format!(
                    "tract failed on it ({what}); is it a valid ONNX file? (onnx.checker.check_model says)"
                ),
            })
        })
    }

    fn load_unguarded(cfg: &ModelConfig, options: &LoadOptions) -> Result<TractClassifier, ModelError> {
        let path = cfg.path.as_path();
        let expected = match &cfg.manifest {
            Some(m) if cfg.verify_sha256 => &m.sha256,
            // Unchecked: the manifest's word, if there is one.
            m => {
                let mut built = Self::build(cfg, options)?;
                built.info.sha256 = m.as_ref().map(|m| m.sha256.clone());
                return Ok(built);
            }
        };
        // Hashing the whole file takes seconds for the large model on a
        // Pi 4 (no SHA instructions), and building it is mostly one thread:
        // the two run side by side. A mismatch still wins over whatever the
        // build said, because it names the real problem (the wrong file).
        std::thread::scope(|s| {
            let hasher =
                std::thread::Builder::new().name("lookout-sha256".into()).spawn_scoped(s, || sha256_file(path));
            let built = Self::build(cfg, options);
            let actual = match hasher {
                Ok(h) => h.join().unwrap_or_else(|_| Err(std::io::Error::other("the hashing thread panicked"))),
                Err(_) => sha256_file(path),
            }
            .map_err(|e| ModelError::Load { path: path.to_owned(), reason: e.to_string() })?;
            if !actual.eq_ignore_ascii_case(expected) {
                return Err(ModelError::Checksum { path: path.to_owned(), expected: expected.clone(), actual });
            }
            let mut built = built?;
            built.info.sha256 = Some(actual);
            Ok(built)
        })
    }

    /// The classifier, without `info.sha256` (the caller's to fill).
    fn build(cfg: &ModelConfig, options: &LoadOptions) -> Result<TractClassifier, ModelError> {
        let mut report = LoadReport::default();
        let t = Instant::now();
        let path = cfg.path.as_path();
        let load_err = |reason: String| ModelError::Load { path: path.to_owned(), reason };
        let labels = cfg.labels.as_deref().map(load_labels).transpose()?;

        let mut lazy = LazyModel::open(path).map_err(|e| load_err(format!("{e} (is it an ONNX file?)")))?;
        // The patterns below match one form of each layer; bring the others
        // to it first (plain tract keeps the file as it is).
        let (canonical, unread) = if options.lookout_int8 || options.lookout_attention {
            canon::run(&mut lazy).map_err(|e| load_err(root_cause(&e)))?
        } else {
            Default::default()
        };
        report.pass_report.canonical = canonical;
        // The f32 ops first: the relative position biases a plain export
        // folded at load are then freed before the weights are packed.
        let f32_ops = options.lookout_attention && attention::supported();
        let (blocks, mut taken) = if f32_ops {
            attention::rewrite(&mut lazy).map_err(|e| load_err(root_cause(&e)))?
        } else {
            Default::default()
        };
        let (patches, more) = if f32_ops {
            patches::rewrite(&mut lazy).map_err(|e| load_err(root_cause(&e)))?
        } else {
            Default::default()
        };
        taken.extend(more);
        taken.extend(unread);
        lazy.forget_unread(&taken);
        report.pass_report.attention = blocks.len();
        report.pass_report.patches = patches.len();
        // lookout's int8 layers where it has a kernel for this CPU; tract's
        // own int8 path elsewhere (and when the passes are off).
        let kernel = match options.lookout_int8 {
            true => Kernel::choose(options.int8_kernel.as_deref()).map_err(load_err)?,
            false => None,
        };
        let (weights, rewritten, more) = match kernel {
            Some(kernel) => qlinear::rewrite(&mut lazy, kernel, options.int8_kernel.is_some())
                .map_err(|e| load_err(root_cause(&e)))?,
            None => Default::default(),
        };
        taken.extend(more);
        let proto = lazy.into_proto(&taken).map_err(|e| load_err(e.to_string()))?;
        let mut onnx = tract_onnx::onnx();
        onnx.op_register.insert(qlinear::OP_TYPE, placeholder::parse_node::<qlinear::GroupWeights>);
        onnx.op_register.insert(attention::OP_TYPE, placeholder::parse_node::<attention::Block>);
        onnx.op_register.insert(patches::OP_TYPE, placeholder::parse_node::<patches::Patches>);
        let parsed = onnx
            .parse(&proto, path.parent().and_then(Path::to_str))
            .map_err(|e| load_err(format!("{} (is it an ONNX file?)", root_cause(&e))))?;
        drop(proto);
        trim_heap();
        if let Some(name) = parsed.unresolved_inputs.first() {
            return Err(load_err(format!("no node or initializer produces {name:?}")));
        }
        let mut model = parsed.model;
        select_outputs(&mut model, path, cfg.manifest.as_ref().and_then(|m| m.embedding.as_ref()))?;
        placeholder::attach(&mut model, weights).map_err(|e| load_err(root_cause(&e)))?;
        placeholder::attach(&mut model, blocks).map_err(|e| load_err(root_cause(&e)))?;
        placeholder::attach(&mut model, patches).map_err(|e| load_err(root_cause(&e)))?;
        report.pass_report.fused = rewritten;
        report.parse = t.elapsed();
        let t = Instant::now();
        let size = input_size(&model, path, cfg.input_size)?;
        model
            .set_input_fact(0, f32::fact([1, 3, size as usize, size as usize]).into())
            .map_err(|e| load_err(root_cause(&e)))?;
        let mut model = model.into_optimized().map_err(|e| ModelError::Shape {
            path: path.to_owned(),
            reason: format!("does not accept a [1, 3, {size}, {size}] f32 input: {}", root_cause(&e)),
        })?;
        report.optimize = t.elapsed();
        if options.passes {
            let t = Instant::now();
            let run = passes::run(&mut model).map_err(|e| load_err(format!("lookout pass: {}", root_cause(&e))))?;
            report.pass_report.folded = run.folded;
            report.pass_report.quantizers = run.quantizers;
            report.passes = t.elapsed();
        }

        report.kernels = matmul_kernels(&model);
        let outputs = output_width(&model).ok_or_else(|| ModelError::Shape {
            path: path.to_owned(),
            reason: format!(
                "output {:?} is not [1, classes]",
                model.output_fact(0).map(|f| format!("{:?}", f.shape)).unwrap_or_default()
            ),
        })?;
        let labels = match (labels, &cfg.labels) {
            (Some(l), Some(path)) if l.len() != outputs => {
                return Err(ModelError::LabelCount { path: path.clone(), labels: l.len(), outputs });
            }
            (Some(l), _) => l,
            (None, _) => (0..outputs).map(|i| i.to_string()).collect(),
        };
        let embedding_width = embedding_width(&model, path, cfg.manifest.as_ref().and_then(|m| m.embedding.as_ref()))?;

        let threads = match cfg.threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        // A one-thread pool would silently run on rayon's global pool
        // (tract #2894), so one thread means no pool at all.
        let executor = (threads > 1)
            .then(|| tract_linalg::multithread::Executor::multithread_with_name(threads, POOL_THREAD_PREFIX));
        report.threads = threads;
        let pool = match &executor {
            Some(tract_linalg::multithread::Executor::MultiThread(pool)) => Some(pool.clone()),
            _ => None,
        };
        let t = Instant::now();
        let options = RunOptions { executor, ..Default::default() };
        let plan = model.into_runnable_with_options(&options).map_err(|e| load_err(root_cause(&e)))?;
        let state = plan.spawn().map_err(|e| load_err(root_cause(&e)))?;
        report.plan = t.elapsed();
        let name = cfg.display_name();
        Ok(TractClassifier {
            info: ModelInfo { name, sha256: None, input_size: size, labels, embedding_width },
            state,
            input: vec![0.0; 3 * (size as usize).pow(2)],
            embedding: Vec::with_capacity(embedding_width.unwrap_or(0)),
            pool,
            workers: std::sync::Arc::new(Workers::new(threads, &format!("{POOL_THREAD_PREFIX}+"))),
            _plan: plan,
            report,
        })
    }

    pub fn load_report(&self) -> &LoadReport {
        &self.report
    }

    /// Runs the current input `runs` times, timing every node; returns the
    /// time per op kind, most expensive first (`lookout bench --profile`).
    pub fn profile(&mut self, runs: usize) -> Result<Vec<OpTime>, ModelError> {
        let run_err = |e: TractError| ModelError::Run(root_cause(&e));
        let mut times: std::collections::HashMap<String, OpTime> = Default::default();
        let size = self.info.input_size as usize;
        for _ in 0..runs {
            let input = Tensor::from_shape(&[1, 3, size, size], &self.input).map_err(run_err)?;
            let (state, times, workers) = (&mut self.state, &mut times, &self.workers);
            let run = move || {
                workers::install(workers, || {
                    state.run_plan_with_eval(tvec!(input.into_tvalue()), |ctx, state, node, inputs| {
                        let t = Instant::now();
                        let out = tract_onnx::tract_core::plan::eval(ctx, state, node, inputs);
                        let name = node.op().name().to_string();
                        let e = times.entry(name.clone()).or_insert(OpTime { op: name, ..Default::default() });
                        e.total += t.elapsed();
                        e.calls += 1;
                        out
                    })
                })
            };
            match &self.pool {
                Some(pool) => pool.install(run),
                None => run(),
            }
            .map_err(run_err)?;
        }
        let mut v: Vec<OpTime> = times.into_values().collect();
        v.sort_by_key(|o| std::cmp::Reverse(o.total));
        Ok(v)
    }
}

/// Time spent in one kind of op over a profile.
#[derive(Debug, Clone, Default)]
pub struct OpTime {
    pub op: String,
    pub total: Duration,
    pub calls: usize,
}

impl Classifier for TractClassifier {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn input_mut(&mut self) -> &mut [f32] {
        &mut self.input
    }

    fn infer(&mut self) -> Result<Vec<f32>, ModelError> {
        let run_err = |e: TractError| ModelError::Run(root_cause(&e));
        let size = self.info.input_size as usize;
        let input = Tensor::from_shape(&[1, 3, size, size], &self.input).map_err(run_err)?;
        let (state, workers) = (&mut self.state, &self.workers);
        let run = move || workers::install(workers, || state.run(tvec!(input.into_tvalue())));
        let out = match &self.pool {
            Some(pool) => pool.install(run),
            None => run(),
        }
        .map_err(run_err)?;
        let logits =
            out[0].try_as_plain_ram().and_then(|v| v.as_slice::<f32>().map(<[f32]>::to_vec)).map_err(run_err)?;
        self.embedding.clear();
        if let Some(e) = out.get(1) {
            self.embedding.extend_from_slice(e.try_as_plain_ram().and_then(|v| v.as_slice::<f32>()).map_err(run_err)?);
        }
        Ok(logits)
    }

    fn embedding(&self) -> Option<&[f32]> {
        (!self.embedding.is_empty()).then_some(&self.embedding[..])
    }
}

/// Keeps the model's first output (the logits) and, when the manifest names
/// one, its embedding output; any other output is dropped.
fn select_outputs(model: &mut InferenceModel, path: &Path, embedding: Option<&OutputSpec>) -> Result<(), ModelError> {
    let shape_err = |reason: String| ModelError::Shape { path: path.to_owned(), reason };
    let outputs = model.output_outlets().map_err(|e| shape_err(root_cause(&e)))?;
    let Some(&logits) = outputs.first() else { return Err(shape_err("has no outputs".into())) };
    let mut keep = vec![logits];
    if let Some(spec) = embedding {
        let outlet = model.find_outlet_label(&spec.name).filter(|o| outputs.contains(o)).ok_or_else(|| {
            shape_err(format!(
                "its manifest names an embedding output {:?} that the model does not have;                  copy the model and its manifest from the same export",
                spec.name
            ))
        })?;
        keep.push(outlet);
    }
    model.select_output_outlets(&keep).map_err(|e| shape_err(root_cause(&e)))
}

/// The embedding output's width, checked against the manifest's.
fn embedding_width(model: &TypedModel, path: &Path, spec: Option<&OutputSpec>) -> Result<Option<usize>, ModelError> {
    let Some(spec) = spec else { return Ok(None) };
    let width = model.output_fact(1).ok().and_then(|f| {
        let dims: Vec<usize> = f.shape.iter().map(|d| d.to_usize().ok()).collect::<Option<_>>()?;
        match dims.as_slice() {
            [1, n] | [n] => Some(*n),
            _ => None,
        }
    });
    match width {
        Some(w) if w == spec.width => Ok(Some(w)),
        other => Err(ModelError::Shape {
            path: path.to_owned(),
            reason: format!(
                "embedding output {:?} is {} but its manifest says [1, {}]",
                spec.name,
                other.map_or("not [1, N]".to_string(), |w| format!("[1, {w}]")),
                spec.width
            ),
        }),
    }
}

fn matmul_kernels(model: &TypedModel) -> Vec<(String, usize)> {
    use tract_onnx::tract_core::ops::matmul::optimized::OptMatMul;
    let mut counts = std::collections::BTreeMap::<String, usize>::new();
    for node in model.nodes() {
        if let Some(op) = node.op_as::<OptMatMul>() {
            let names: std::collections::BTreeSet<&str> = op.mmm.iter().map(|k| k.name()).collect();
            for name in names {
                *counts.entry(name.to_owned()).or_default() += 1;
            }
        } else if let Some(op) = node.op_as::<QLinear>() {
            *counts.entry(op.kernel_name().to_owned()).or_default() += op.layers();
        }
    }
    counts.into_iter().collect()
}

/// Kernel names and counts as one log-friendly string.
pub fn kernel_summary(kernels: &[(String, usize)]) -> String {
    kernels.iter().map(|(k, n)| format!("{k} x{n}")).collect::<Vec<_>>().join(", ")
}

/// The square input side: the ONNX file's if it is fixed, else the config's.
fn input_size(model: &InferenceModel, path: &Path, configured: Option<u32>) -> Result<u32, ModelError> {
    let shape_err = |reason: String| ModelError::Shape { path: path.to_owned(), reason };
    let inputs = model.input_outlets().map_err(|e| shape_err(e.to_string()))?.len();
    if inputs != 1 {
        return Err(shape_err(format!(
            "has {inputs} inputs; lookout runs image classifiers with one [1, 3, S, S] input"
        )));
    }
    let fact = model.input_fact(0).map_err(|e| shape_err(e.to_string()))?;
    let dims: Vec<Option<usize>> = fact
        .shape
        .dims()
        .map(|d| match d {
            GenericFactoid::Only(d) => d.to_usize().ok(),
            GenericFactoid::Any => None,
        })
        .collect();
    if !fact.shape.is_open() && dims.len() != 4 {
        return Err(shape_err(format!(
            "input has rank {}; lookout needs an NCHW image input [1, 3, S, S]",
            dims.len()
        )));
    }
    let fixed = match dims.as_slice() {
        [_, Some(c), _, _] if *c != 3 => {
            return Err(shape_err(format!("input has {c} channels; lookout feeds RGB (3)")))
        }
        [_, _, Some(h), Some(w)] if h != w => {
            return Err(shape_err(format!("input is {h}x{w}; lookout feeds square images")))
        }
        [_, _, Some(h), Some(_)] => Some(*h as u32),
        _ => None,
    };
    match (fixed, configured) {
        (Some(f), Some(c)) if f != c => {
            Err(shape_err(format!("input is {f}x{f} but the config or manifest says input_size = {c}")))
        }
        (Some(f), _) => Ok(f),
        (None, Some(c)) => Ok(c),
        (None, None) => Err(shape_err("input size is not fixed in the file; set model.input_size".into())),
    }
}

fn output_width(model: &TypedModel) -> Option<usize> {
    let fact = model.output_fact(0).ok()?;
    let dims: Vec<usize> = fact.shape.iter().map(|d| d.to_usize().ok()).collect::<Option<_>>()?;
    match dims.as_slice() {
        [1, n] | [n] => Some(*n),
        _ => None,
    }
}

/// Hands the heap's free pages back to the kernel. The load frees much
/// of what it built (the file's structure, a plain export's dense biases),
/// and glibc keeps freed memory that lies below live blocks; what is
/// allocated after it did not reuse all of it. On the Zen 4 of
/// BENCHMARKS.md: peak RSS of a plain ViT-B 143 -> 124-136 MB, of
/// export_model.py's 134-136 -> 121-133 MB.
fn trim_heap() {
    // SAFETY: malloc_trim only releases memory glibc's allocator holds free.
    #[cfg(target_env = "gnu")]
    unsafe {
        libc::malloc_trim(0);
    }
}

/// tract errors are chains whose outer layers name internal passes; the
/// root says what is wrong with the file.
fn root_cause(e: &TractError) -> String {
    e.root_cause().to_string()
}

pub(crate) fn sha256_file(path: &Path) -> std::io::Result<String> {
    use sha2::{Digest, Sha256};
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

thread_local! {
    static QUIET: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f`, turning a panic into `Err(payload)` without the panic hook's
/// message, for this thread only (the hook stays as it was for others).
fn quiet_panics<T>(f: impl FnOnce() -> T) -> std::thread::Result<T> {
    static WRAP: std::sync::Once = std::sync::Once::new();
    WRAP.call_once(|| {
        let hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !QUIET.with(|q| q.get()) {
                hook(info)
            }
        }));
    });
    let was = QUIET.with(|q| q.replace(true));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    QUIET.with(|q| q.set(was));
    result
}

#[cfg(test)]
mod tests {
    #[test]
    fn tract_version_matches_the_cargo_pin() {
        let cargo = include_str!("../../Cargo.toml");
        assert!(cargo.contains(&format!("tract-onnx = \"={}\"", super::TRACT_VERSION)));
    }
}
