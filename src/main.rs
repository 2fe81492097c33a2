//! The command line. Only this file decides exit codes and prints errors;
//! everything below returns typed errors.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use log::info;

use lookout::capture::{self, CaptureError};
use lookout::command::Inbox;
use lookout::config::{Config, ConfigError};
use lookout::custom::{self, ClassStore, CustomError};
use lookout::daemon::{self, LabelSource, Overrides, View};
use lookout::frame::Frame;
use lookout::model::{
    kernel_summary, manifest::Manifest, Classifier, LoadOptions, ModelConfig, ModelError, TractClassifier,
    POOL_THREAD_PREFIX, TRACT_VERSION,
};
use lookout::postprocess::{top_k, Latency};
use lookout::preprocess::{ColorRange, PreprocessParams, Preprocessor};
use lookout::publish::{MqttPublisher, NoPublisher, Publisher, PublisherOptions, SourceInfo, TriggerInfo, ViewInfo};
use lookout::shutdown::{Bell, Shutdown};
use lookout::systemd;
use lookout::triggers::{TriggerError, Triggers};

/// Exit codes, documented in README.md. 78 is sysexits' EX_CONFIG, which the
/// systemd unit lists in RestartPreventExitStatus so a typo does not cause a
/// restart loop.
mod exit {
    pub const FAILURE: u8 = 1;
    pub const USAGE: u8 = 2;
    pub const DATA: u8 = 65;
    pub const NO_INPUT: u8 = 66;
    pub const SOURCE: u8 = 69;
    pub const CANT_CREATE: u8 = 73;
    pub const CONFIG: u8 = 78;
    pub const MODEL: u8 = 79;
}

#[derive(Parser)]
#[command(name = "lookout", version = version())]
#[command(about = "Classifies camera frames with an ONNX model and publishes the results over MQTT")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon: classify the newest frame every interval and publish it.
    Run {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Classify image files once and print one JSON object per image.
    Classify {
        #[arg(long, short)]
        config: PathBuf,
        /// Use this ONNX file instead of the config's model.
        #[arg(long)]
        model: Option<PathBuf>,
        /// Include the raw logits in the output.
        #[arg(long)]
        logits: bool,
        /// Include the embedding (the features custom classes compare).
        #[arg(long)]
        embedding: bool,
        #[arg(required = true)]
        images: Vec<PathBuf>,
    },
    /// Teach a custom class from image files: each is run through the model
    /// and stored, with the view it saw, in <state_dir>/classes/.
    Teach {
        #[arg(long, short)]
        config: PathBuf,
        /// The view whose classes to teach (needed when there are several).
        #[arg(long)]
        view: Option<String>,
        #[arg(long)]
        class: String,
        #[arg(required = true)]
        images: Vec<PathBuf>,
    },
    /// Measure classes on labelled pictures (DIR/<class>/*.jpg): the model's
    /// labels, the taught classes, and custom classes cross-validated on DIR.
    Eval {
        #[arg(long, short)]
        config: PathBuf,
        /// The view whose taught classes to evaluate (needed when there are several).
        #[arg(long)]
        view: Option<String>,
        /// Cross-validation folds for custom classes from DIR (0: leave-one-out).
        #[arg(long, default_value_t = 5)]
        folds: usize,
        #[arg(long)]
        json: bool,
        dir: PathBuf,
    },
    /// Validate a config file and print it resolved.
    CheckConfig { config: PathBuf },
    /// List V4L2 cameras with their formats, sizes and rates.
    Cameras,
    /// Take one frame from the configured source and draw every view's
    /// region and the square the model sees on it, to aim the camera and
    /// set `roi` by looking.
    Snapshot {
        #[arg(long, short)]
        config: PathBuf,
        /// Only this view (and its source).
        #[arg(long)]
        view: Option<String>,
        /// Where to write the picture (.jpg or .png).
        out: PathBuf,
    },
    /// Install an exported model where the service reads it.
    #[command(subcommand)]
    Model(ModelCommand),
    /// Measure the model: load time, then inference latency over N runs
    /// after a warm-up, and peak memory.
    Bench {
        #[arg(long, short, required_unless_present = "model")]
        config: Option<PathBuf>,
        /// Use this ONNX file instead of the config's model: with the
        /// manifest and labels beside it, or a bare file (default
        /// preprocessing, classes numbered).
        #[arg(long)]
        model: Option<PathBuf>,
        /// Inference threads (default: the config's, else one per core).
        #[arg(long)]
        threads: Option<usize>,
        #[arg(long, default_value_t = 2)]
        warmup: usize,
        #[arg(long, short = 'n', default_value_t = 10)]
        runs: usize,
        /// Plain tract: skip lookout's own graph passes and int8 kernels.
        #[arg(long)]
        no_passes: bool,
        /// Keep lookout's passes but run int8 layers with tract's kernels
        /// instead of lookout's.
        #[arg(long)]
        tract_int8: bool,
        /// Run int8 layers with this lookout kernel (part of its name as the
        /// load line prints it: amx, avx512vnni, avxvnni, avx2, arm64dot,
        /// arm64neon) instead of the best this CPU runs.
        #[arg(long, value_name = "NAME", conflicts_with_all = ["tract_int8", "no_passes"])]
        int8_kernel: Option<String>,
        /// Run self-attention and the patch embedding with tract's ops instead
        /// of lookout's.
        #[arg(long)]
        tract_attention: bool,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
        /// Include the first run's logits in the JSON (tools/bench compares
        /// them with other runtimes on the same input).
        #[arg(long, requires = "json")]
        logits: bool,
        /// After the timed runs, time every op over this many more runs and
        /// print the most expensive op kinds.
        #[arg(long, value_name = "RUNS")]
        profile: Option<usize>,
    },
}

#[derive(Subcommand)]
enum ModelCommand {
    /// Copy the int8 model, its manifest and labels from an export folder
    /// (tools/export_model.py --out), check its sha256, and print the
    /// model.path line to set.
    Install {
        /// The export folder, or one .onnx file in it.
        from: PathBuf,
        #[arg(long, default_value = lookout::model::install::MODELS_DIR)]
        models_dir: PathBuf,
        /// Also set model.path in this config file (the rest of it stays).
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

/// An error on its way out of `main`: one line, one exit code.
struct Fatal {
    code: u8,
    message: String,
}

impl Fatal {
    fn prefixed(self, what: &str) -> Fatal {
        Fatal { message: format!("{what}: {}", self.message), ..self }
    }
}

impl From<ConfigError> for Fatal {
    fn from(e: ConfigError) -> Self {
        let code = if matches!(e, ConfigError::Manifest(_)) { exit::MODEL } else { exit::CONFIG };
        Fatal { code, message: e.to_string() }
    }
}

impl From<ModelError> for Fatal {
    fn from(e: ModelError) -> Self {
        Fatal { code: exit::MODEL, message: e.to_string() }
    }
}

impl From<TriggerError> for Fatal {
    fn from(e: TriggerError) -> Self {
        Fatal { code: exit::CONFIG, message: e.to_string() }
    }
}

impl From<CaptureError> for Fatal {
    fn from(e: CaptureError) -> Self {
        Fatal { code: exit::SOURCE, message: e.to_string() }
    }
}

impl From<CustomError> for Fatal {
    fn from(e: CustomError) -> Self {
        let code = match e {
            CustomError::BadName(_) | CustomError::NoClass { .. } | CustomError::NoExample(_) => exit::USAGE,
            CustomError::NoEmbedding { .. } | CustomError::NoModelHash { .. } => exit::MODEL,
            CustomError::Image { .. } => exit::DATA,
            CustomError::Unreadable { .. } | CustomError::Eval(_) => exit::NO_INPUT,
            _ => exit::FAILURE,
        };
        Fatal { code, message: e.to_string() }
    }
}

impl From<anyhow::Error> for Fatal {
    fn from(e: anyhow::Error) -> Self {
        Fatal { code: exit::FAILURE, message: format!("{e:#}") }
    }
}

fn main() -> ExitCode {
    // tract optimises by trying rewrites that fail with anyhow errors, and
    // with RUST_BACKTRACE set each of those captures a backtrace: 14 G
    // instructions of unwinding while loading the base model on aarch64
    // (qemu count; zig's libunwind has no unwind-table cache). Panics keep
    // their backtraces: this variable covers only captured ones. Set here,
    // before any thread exists.
    if std::env::var_os("RUST_LIB_BACKTRACE").is_none() {
        std::env::set_var("RUST_LIB_BACKTRACE", "0");
    }
    let cli = Cli::parse();
    init_logging();
    let result = match cli.command {
        Command::Run { config } => run(&config),
        Command::Classify { config, model, logits, embedding, images } => {
            classify(&config, model.as_deref(), (logits, embedding), &images)
        }
        Command::Teach { config, view, class, images } => teach(&config, view.as_deref(), &class, &images),
        Command::Eval { config, view, folds, json, dir } => eval(&config, view.as_deref(), folds, json, &dir),
        Command::CheckConfig { config } => check_config(&config),
        Command::Cameras => cameras(),
        Command::Snapshot { config, view, out } => snapshot(&config, view.as_deref(), &out),
        Command::Model(ModelCommand::Install { from, models_dir, config }) => {
            model_install(&from, &models_dir, config.as_deref())
        }
        Command::Bench {
            config,
            model,
            threads,
            warmup,
            runs,
            no_passes,
            tract_int8,
            int8_kernel,
            tract_attention,
            json,
            logits,
            profile,
        } => {
            let load = LoadOptions {
                passes: !no_passes,
                lookout_int8: !no_passes && !tract_int8,
                int8_kernel,
                lookout_attention: !no_passes && !tract_attention,
            };
            let opts = BenchOptions { threads, warmup, runs, load, json, logits, profile };
            bench(config.as_deref(), model.as_deref(), &opts)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            // At error priority in the journal, so `journalctl -p err`
            // shows why the service failed.
            let prio = if under_journald() { "<3>" } else { "" };
            eprintln!("{prio}lookout: error: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}

/// Whether stderr is the journal: JOURNAL_STREAM names its device and
/// inode (systemd.exec(5)). A shell started from a service, such as a
/// terminal in a desktop session, inherits the variable but not the stream.
fn under_journald() -> bool {
    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else { return false };
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat writes into the struct it is given; fd 2 may be closed,
    // which it reports as an error.
    if unsafe { libc::fstat(2, &mut st) } != 0 {
        return false;
    }
    stream.to_str() == Some(&format!("{}:{}", st.st_dev, st.st_ino))
}

/// journald adds its own timestamps and reads `<N>` priority prefixes, so
/// under systemd log lines carry a priority instead.
fn init_logging() {
    let mut b = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"));
    if under_journald() {
        b.format(|buf, record| {
            let prio = match record.level() {
                log::Level::Error => 3,
                log::Level::Warn => 4,
                log::Level::Info => 6,
                _ => 7,
            };
            writeln!(buf, "<{prio}>{}", record.args())
        });
    }
    b.init();
}

/// The views, their triggers checked against the model's labels. Before the
/// model loads: that takes minutes on a Pi, a typo in a group should not.
fn views(cfg: &Config) -> Result<Vec<View>, Fatal> {
    let labels = cfg.model.labels.as_deref().map(lookout::model::load_labels).transpose()?.unwrap_or_default();
    let mut views = vec![];
    for v in &cfg.views {
        // Over custom classes the triggers are built once they are known.
        let triggers = if v.triggers.enabled && v.labels == LabelSource::Model {
            let t = Triggers::new(&v.triggers, &labels).map_err(|e| {
                let at = if cfg.views.len() > 1 {
                    format!("{} (view {})", cfg.file.display(), v.name)
                } else {
                    cfg.file.display().to_string()
                };
                Fatal::from(e).prefixed(&at)
            })?;
            let (policy, _) = t.policy();
            info!("{}: triggers on {} groups and classes, publishing {policy:?}", v.name, t.groups().len());
            Some(t)
        } else {
            None
        };
        let preprocess =
            PreprocessParams { roi: v.roi, crop_fraction: v.crop_fraction, ..cfg.model.preprocess.clone() };
        views.push(View { config: v.clone(), preprocess, triggers, classes: Err("not opened".into()) });
    }
    Ok(views)
}

/// Opens each view's custom classes (`<state_dir>/classes/<view>/`),
/// re-embedded when the model changed, or says why there can be none.
fn open_classes(cfg: &Config, classifier: &mut TractClassifier, views: &mut [View]) -> Result<(), Fatal> {
    for v in views {
        // Classes that cannot be opened (a damaged store, a state folder
        // that is not one) are reported; the daemon runs on without them,
        // unless they are what the view's labels are made of.
        v.classes = match custom::model_key(classifier) {
            Ok(_) => class_store(cfg, classifier, &v.config.name, &v.preprocess).map_err(|f| f.message),
            Err(e) => Err(e.to_string()),
        };
        if let (Err(why), true) = (&v.classes, custom::model_key(classifier).is_ok()) {
            log::warn!("{}: custom classes are unavailable: {why}", v.config.name);
        }
        match &v.classes {
            Ok(store) if !store.list().is_empty() => {
                info!("{}: custom classes {}", v.config.name, store.prototypes().labels().join(", "))
            }
            Ok(_) => {}
            Err(why) if v.config.labels == LabelSource::Custom => {
                return Err(Fatal {
                    code: exit::MODEL,
                    message: format!("view {} has labels = \"custom\" but {why}", v.config.name),
                });
            }
            Err(_) => {}
        }
        if let (LabelSource::Custom, true, Ok(store)) = (v.config.labels, v.config.triggers.enabled, &v.classes) {
            v.triggers = daemon::custom_triggers(&v.config.name, &v.config.triggers, store.prototypes().labels());
        }
    }
    Ok(())
}

fn check_config(path: &Path) -> Result<(), Fatal> {
    let cfg = Config::load(path)?;
    views(&cfg)?;
    if let Some(warning) = cfg.exposed_secret() {
        log::warn!("{warning}");
    }
    print!("# {} is valid; resolved:\n{}", path.display(), cfg.to_toml());
    let saved = Overrides::path(&cfg.device.state_dir);
    match Overrides::load(&saved) {
        Ok(o) if !o.is_empty() => {
            let text = toml::to_string_pretty(&o).unwrap_or_default();
            println!("\n# Changed by commands, kept in {} (they win over the above):", saved.display());
            for line in text.lines() {
                println!("# {line}");
            }
        }
        Ok(_) => {}
        Err(e) => log::warn!("{e}"),
    }
    Ok(())
}

/// `lookout model install`; the work is in `lookout::model::install`.
fn model_install(from: &Path, models_dir: &Path, config: Option<&Path>) -> Result<(), Fatal> {
    use lookout::model::install::{install, set_model_path, InstallError};
    let fatal = |e: InstallError| {
        let code = match e {
            InstallError::Missing { .. } => exit::NO_INPUT,
            InstallError::Manifest(_) | InstallError::Checksum { .. } | InstallError::Unusable { .. } => exit::MODEL,
            InstallError::Write { .. } => exit::CANT_CREATE,
            InstallError::Config { .. } => exit::CONFIG,
        };
        Fatal { code, message: e.to_string() }
    };
    let done = install(from, models_dir).map_err(fatal)?;
    let dir = done.model.parent().unwrap_or(models_dir);
    println!("installed {} (sha256 {} checked) in {}/", done.name, done.sha256, dir.display());
    if let Some(c) = &done.canonical {
        println!(
            "written in lookout's canonical form, which it would otherwise compute at every start: {} constant \
             nodes folded, {} transposes merged, {} GELUs reordered",
            c.folded, c.transposes, c.gelus
        );
    }
    let line = format!("path = {:?}", done.model.display().to_string());
    match config {
        None => println!("set it in the [model] section of your config:\n{line}"),
        Some(cfg) => {
            let edit = set_model_path(cfg, &done.model).map_err(fatal)?;
            let was = edit.previous.map(|p| format!(" (was {p:?})")).unwrap_or_default();
            println!("{}: [model] {line}{was}", cfg.display());
            for key in edit.overrides {
                println!("note: {} also sets model.{key}, which overrides the installed model's own", cfg.display());
            }
            println!("check it with `lookout check-config {}`, then `sudo systemctl restart lookout`", cfg.display());
        }
    }
    Ok(())
}

/// `lookout cameras`: what a `camera` source could open, and why not.
fn cameras() -> Result<(), Fatal> {
    use lookout::capture::camera;
    let nodes = camera::video_nodes(Path::new("/dev"));
    if nodes.is_empty() {
        println!(
            "no cameras found: there is no /dev/video* device. USB webcams appear as /dev/videoN when plugged in; \
             Raspberry Pi and Jetson CSI cameras are read with a `command` source (README.md, Cameras)"
        );
        return Ok(());
    }
    #[cfg(feature = "camera")]
    let listings = camera::list();
    #[cfg(not(feature = "camera"))]
    let listings: Vec<camera::Listing> = nodes
        .into_iter()
        .map(|(index, path)| camera::Listing {
            index,
            path,
            name: String::new(),
            by_id: None,
            modes: Err("built without the `camera` feature".into()),
        })
        .collect();
    let mut denied = false;
    for l in &listings {
        let name = if l.name.is_empty() { String::new() } else { format!(" \"{}\"", l.name) };
        println!("{} (device = \"{}\"){name}", l.path.display(), l.index);
        if let Some(link) = &l.by_id {
            println!("  stable name: {}", link.display());
        }
        match &l.modes {
            Ok(modes) if modes.is_empty() => println!("  no capture modes (a metadata node, not a camera)"),
            Ok(modes) => {
                let mut sizes: Vec<(String, Vec<u32>)> = vec![];
                for m in modes {
                    let key = format!("{} {}x{}", camera::format_name(m.format), m.width, m.height);
                    match sizes.iter_mut().find(|(k, _)| *k == key) {
                        Some((_, rates)) => rates.push(m.fps),
                        None => sizes.push((key, vec![m.fps])),
                    }
                }
                for (key, mut rates) in sizes {
                    rates.sort_unstable_by(|a, b| b.cmp(a));
                    rates.dedup();
                    let rates: Vec<String> = rates.iter().map(u32::to_string).collect();
                    println!("  {key} @ {} fps", rates.join(", "));
                }
            }
            Err(reason) => {
                denied |= reason.contains("`video` group");
                println!("  cannot open: {reason}");
            }
        }
    }
    if denied {
        println!("some cameras are not accessible to this user: add it to the `video` group (sudo usermod -aG video $USER) and log in again");
    }
    Ok(())
}

/// `lookout snapshot`: one frame with the views drawn on it.
fn snapshot(config: &Path, view: Option<&str>, out: &Path) -> Result<(), Fatal> {
    use lookout::snapshot::{aim, COLOURS};
    let cfg = Config::load(config)?;
    let names: Vec<&str> = cfg.views.iter().map(|v| v.name.as_str()).collect();
    let source = match view {
        Some(name) => match cfg.views.iter().find(|v| v.name == name) {
            Some(v) => v.source.clone(),
            None => {
                let message = format!("no view {name:?} in {}; the views are {}", config.display(), names.join(", "));
                return Err(Fatal { code: exit::CONFIG, message });
            }
        },
        None if cfg.sources.len() == 1 => cfg.sources.keys().next().cloned().unwrap_or_default(),
        None => {
            let message =
                format!("{} has several sources; name a view with --view ({})", config.display(), names.join(", "));
            return Err(Fatal { code: exit::CONFIG, message });
        }
    };
    let views: Vec<_> = cfg.views.iter().filter(|v| v.source == source && view.is_none_or(|n| n == v.name)).collect();
    let spec = &cfg.sources[&source];
    let mut frames = capture::open(spec)?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let frame = loop {
        match frames.next_frame() {
            Ok(Some(f)) => break f,
            Ok(None) => return Err(Fatal { code: exit::SOURCE, message: format!("{}: no frames", frames.name()) }),
            Err(CaptureError::NotYet { wait }) => std::thread::sleep(wait.min(Duration::from_millis(200))),
            Err(e) => log::warn!("{e}"),
        }
        if Instant::now() > deadline {
            return Err(Fatal { code: exit::SOURCE, message: format!("{}: no frame within 30 s", frames.name()) });
        }
    };
    let full = lookout::preprocess::frame_rgb(&frame, spec.color_range())
        .map_err(|e| Fatal { code: exit::DATA, message: format!("{}: {e}", frames.name()) })?;
    let picture = aim(&full, &views.iter().map(|v| (v.roi, v.crop_fraction)).collect::<Vec<_>>());
    picture.save(out).map_err(|e| Fatal {
        code: exit::FAILURE,
        message: format!("{}: cannot write the picture: {e}", out.display()),
    })?;
    println!("{} ({}x{} from {}):", out.display(), full.width(), full.height(), frames.name());
    for (i, v) in views.iter().enumerate() {
        let (side, left, top) = lookout::preprocess::crop_region(full.width(), full.height(), v.roi, v.crop_fraction);
        let roi = v.roi.map_or("the whole frame".to_owned(), |r| format!("roi {r:?}"));
        println!(
            "  {}: {} ({roi}; the model sees the {side}x{side} square at {left},{top})",
            v.name,
            COLOURS[i % COLOURS.len()].0
        );
    }
    Ok(())
}

fn run(path: &Path) -> Result<(), Fatal> {
    let cfg = Config::load(path)?;
    let fault = match std::env::var("LOOKOUT_FAULT") {
        Ok(f) => Some(daemon::Fault::parse(&f).map_err(|message| Fatal { code: exit::CONFIG, message })?),
        Err(_) => None,
    };
    let shutdown = Shutdown::new();
    handle_signals(&shutdown)?;

    let mut views = views(&cfg)?;
    let mut classifier = load_model(&cfg)?;
    open_classes(&cfg, &mut classifier, &mut views)?;
    let mut sources = vec![];
    for (name, source) in &cfg.sources {
        let frames = capture::open(source)?;
        info!("source {name}: frames from {}", frames.name());
        sources.push(daemon::Source { name: name.clone(), frames, color_range: source.color_range() });
    }
    let names: Vec<String> =
        cfg.views.iter().map(|v| format!("{} every {:.2} s", v.name, v.interval.as_secs_f64())).collect();
    // Ready before connecting: a dead broker must not fail the start; the
    // publisher queues and reconnects.
    systemd::ready(&format!("classifying {}", names.join(", ")));
    let inbox = Inbox::new(Bell::default());
    let mut publisher: Box<dyn Publisher> = if cfg.mqtt.enabled {
        let opts = publisher_options(&cfg, &views, &classifier.info().name, &inbox);
        let p = MqttPublisher::start(opts).map_err(|e| {
            let code = if e.is_config() { exit::CONFIG } else { exit::FAILURE };
            Fatal { code, message: e.to_string() }
        })?;
        info!("publishing to {}:{} under {}/{}/", cfg.mqtt.host, cfg.mqtt.port, cfg.mqtt.topic_prefix, cfg.device.id);
        Box::new(p)
    } else {
        Box::new(NoPublisher)
    };
    let watchdog = systemd::Watchdog::from_env();
    if let Some(w) = &watchdog {
        info!("systemd watchdog: {:.1} s", w.period().as_secs_f64());
    }
    let opts = daemon::Options {
        top_k: cfg.model.top_k,
        health: cfg.health.clone(),
        thermal: Some(cfg.thermal.clone()),
        watchdog,
        state_dir: Some(cfg.device.state_dir.clone()),
        fault,
    };
    let stats = daemon::run(opts, sources, views, &mut classifier, publisher.as_mut(), &inbox, shutdown)
        .map_err(|e| Fatal { code: exit::CONFIG, message: e.to_string() })?;
    systemd::stopping("flushing results");
    publisher.close(Duration::from_secs(5));
    info!(
        "stopped: {} frames captured, {} classified, {} dropped, {} bad, {} capture errors, {} inference errors, {} not published",
        stats.captured,
        stats.classified,
        stats.dropped,
        stats.bad_frames,
        stats.capture_errors,
        stats.inference_errors,
        stats.publish_errors
    );
    Ok(())
}

/// What the publisher needs to know, from the config and the loaded views.
fn publisher_options(cfg: &Config, views: &[View], model_name: &str, inbox: &Inbox) -> PublisherOptions {
    let sources = cfg
        .sources
        .keys()
        .map(|name| SourceInfo {
            name: name.clone(),
            views: views
                .iter()
                .filter(|v| &v.config.source == name)
                .map(|v| ViewInfo {
                    name: v.config.name.clone(),
                    interval: v.config.interval.as_secs_f64(),
                    snapshots: v.config.snapshots.is_some(),
                    classes: v.classes.as_ref().ok().map(|s| s.prototypes().labels().to_vec()),
                    custom_labels: v.config.labels == LabelSource::Custom,
                    triggers: v.triggers.as_ref().map(|t| {
                        let (publish, heartbeat) = t.policy();
                        let mut states: Vec<String> = t.groups().iter().map(|g| g.name.clone()).collect();
                        states.push(lookout::triggers::UNKNOWN.into());
                        TriggerInfo {
                            states,
                            groups: t.named_groups().iter().map(|g| g.name.clone()).collect(),
                            publish,
                            heartbeat,
                        }
                    }),
                })
                .collect(),
        })
        .collect();
    PublisherOptions {
        mqtt: cfg.mqtt.clone(),
        device_id: cfg.device.id.clone(),
        device_name: cfg.device.name.clone(),
        state_dir: cfg.device.state_dir.clone(),
        model_name: model_name.to_owned(),
        sources,
        thermal_stretch: if cfg.thermal.enabled { cfg.thermal.stretch } else { 1.0 },
        inbox: cfg.mqtt.commands.then(|| inbox.clone()),
    }
}

fn handle_signals(shutdown: &Shutdown) -> Result<(), Fatal> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals =
        signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP]).map_err(|e| anyhow::anyhow!("signals: {e}"))?;
    let shutdown = shutdown.clone();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for sig in signals.forever() {
                if sig == SIGHUP {
                    log::warn!("SIGHUP: configuration reload is not supported; restart lookout to apply changes");
                    continue;
                }
                info!("signal {sig}: stopping");
                systemd::stopping("stopping on a signal");
                shutdown.trigger();
            }
        })
        .map_err(|e| anyhow::anyhow!("signal thread: {e}"))?;
    Ok(())
}

#[derive(serde::Serialize)]
struct ClassifyLine<'a> {
    image: &'a Path,
    label: &'a str,
    index: usize,
    score: f32,
    top_k: &'a [lookout::postprocess::Ranked],
    latency_ms: Latency,
    #[serde(skip_serializing_if = "Option::is_none")]
    logits: Option<&'a [f32]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    embedding: Option<&'a [f32]>,
}

fn load_model(cfg: &Config) -> Result<TractClassifier, Fatal> {
    let t = Instant::now();
    let classifier = TractClassifier::load(&cfg.model)?;
    let info = classifier.info();
    info!(
        "model {} ({}x{}, {} classes) loaded in {:.1} s; matmul kernels: {}; fused attention blocks: {}",
        info.name,
        info.input_size,
        info.input_size,
        info.labels.len(),
        t.elapsed().as_secs_f64(),
        kernel_summary(&classifier.load_report().kernels),
        classifier.load_report().pass_report.attention
    );
    let folded = classifier.load_report().pass_report.canonical.folded;
    if folded > 0 {
        info!(
            "{}: {folded} ONNX nodes that read only constants were evaluated, as at every start; \
             `sudo lookout model install` writes the model without them once (docs/models.md)",
            cfg.model.path.display()
        );
    }
    Ok(classifier)
}

fn classify(
    config: &Path,
    model: Option<&Path>,
    (with_logits, with_embedding): (bool, bool),
    images: &[PathBuf],
) -> Result<(), Fatal> {
    let mut cfg = Config::load(config)?;
    if let Some(m) = model {
        cfg = cfg.with_model(m)?;
    }
    let mut classifier = load_model(&cfg)?;
    if with_embedding {
        custom::model_key(&classifier)?;
    }
    let size = classifier.info().input_size;
    let labels = classifier.info().labels.clone();
    let mut pre = Preprocessor::new(&cfg.model.preprocess, size, ColorRange::default());
    let mut worst: Option<Fatal> = None;
    let mut failed = 0;
    let stdout = std::io::stdout();
    for image in images {
        let data = match std::fs::read(image) {
            Ok(d) => d,
            Err(e) => {
                let f = Fatal { code: exit::NO_INPUT, message: format!("{}: cannot read image: {e}", image.display()) };
                eprintln!("lookout: error: {}", f.message);
                worst.get_or_insert(f);
                failed += 1;
                continue;
            }
        };
        let frame = Frame::encoded(0, data, image.display().to_string());
        let t0 = Instant::now();
        if let Err(e) = pre.run(&frame, classifier.input_mut()) {
            let f = Fatal { code: exit::DATA, message: format!("{}: {e}", image.display()) };
            eprintln!("lookout: error: {}", f.message);
            worst.get_or_insert(f);
            failed += 1;
            continue;
        }
        let t1 = Instant::now();
        let logits = classifier.infer()?;
        let t2 = Instant::now();
        let ranked = top_k(&logits, &labels, cfg.model.top_k);
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let line = ClassifyLine {
            image,
            label: &ranked[0].label,
            index: ranked[0].index,
            score: ranked[0].score,
            top_k: &ranked,
            latency_ms: Latency { preprocess: ms(t1 - t0), inference: ms(t2 - t1), total: ms(t2 - t0) },
            logits: with_logits.then_some(&logits[..]),
            embedding: classifier.embedding().filter(|_| with_embedding),
        };
        let mut out = stdout.lock();
        let _ = serde_json::to_writer(&mut out, &line);
        let _ = writeln!(out);
    }
    match worst {
        // Each failure was printed as it happened; this is the summary.
        Some(f) => Err(Fatal { code: f.code, message: format!("{failed} of {} images failed", images.len()) }),
        None => Ok(()),
    }
}

/// A view's custom classes (`<state_dir>/classes/<view>/`), re-embedded if
/// the model changed since the examples were taught.
fn class_store(
    cfg: &Config,
    classifier: &mut TractClassifier,
    view: &str,
    preprocess: &PreprocessParams,
) -> Result<ClassStore, Fatal> {
    let key = custom::model_key(classifier)?;
    let mut store = ClassStore::open(&cfg.device.state_dir.join("classes").join(view), &key)?;
    let n = custom::reembed(classifier, preprocess, &mut store)?;
    if n > 0 {
        info!("re-embedded {n} examples for model {}", classifier.info().name);
    }
    Ok(store)
}

/// The view a command names, or the config's only one.
fn pick_view(cfg: &Config, view: Option<&str>) -> Result<(String, PreprocessParams), Fatal> {
    let names: Vec<&str> = cfg.views.iter().map(|v| v.name.as_str()).collect();
    let v = match view {
        Some(name) => cfg.views.iter().find(|v| v.name == name),
        None if cfg.views.len() == 1 => cfg.views.first(),
        None => {
            let message =
                format!("{} has several views; name one with --view ({})", cfg.file.display(), names.join(", "));
            return Err(Fatal { code: exit::USAGE, message });
        }
    };
    let v = v.ok_or_else(|| Fatal {
        code: exit::USAGE,
        message: format!(
            "no view {:?} in {}; the views are {}",
            view.unwrap_or(""),
            cfg.file.display(),
            names.join(", ")
        ),
    })?;
    Ok((
        v.name.clone(),
        PreprocessParams { roi: v.roi, crop_fraction: v.crop_fraction, ..cfg.model.preprocess.clone() },
    ))
}

fn teach(config: &Path, view: Option<&str>, class: &str, images: &[PathBuf]) -> Result<(), Fatal> {
    custom::check_class_name(class)?;
    let cfg = Config::load(config)?;
    let (view, params) = pick_view(&cfg, view)?;
    let mut classifier = load_model(&cfg)?;
    let mut store = class_store(&cfg, &mut classifier, &view, &params)?;
    let mut pre = Preprocessor::new(&params, classifier.info().input_size, ColorRange::Full);
    let taught = custom::teach_files(&mut classifier, &mut pre, &params, &mut store, class, images)?;
    for t in &taught {
        println!("{class}: example {} from {} ({} byte picture)", t.id, t.image.display(), t.jpeg_bytes);
    }
    for c in store.list() {
        let threshold =
            c.threshold.map_or("not calibrated (teach a class a second example)".into(), |t| format!("{t:.3}"));
        println!("class {}: {} examples, unknown below {threshold}", c.name, c.examples.len());
    }
    Ok(())
}

fn eval(config: &Path, view: Option<&str>, folds: usize, json: bool, dir: &Path) -> Result<(), Fatal> {
    let cfg = Config::load(config)?;
    let (view, params) = pick_view(&cfg, view)?;
    let mut classifier = load_model(&cfg)?;
    let store = match custom::model_key(&classifier) {
        Ok(_) => Some(class_store(&cfg, &mut classifier, &view, &params)?),
        Err(e) => {
            log::warn!("{e}: evaluating the model's labels only");
            None
        }
    };
    let mut pre = Preprocessor::new(&params, classifier.info().input_size, ColorRange::Full);
    let sections = custom::eval::evaluate(&mut classifier, &mut pre, dir, store.as_ref(), folds)?;
    if json {
        println!("{}", serde_json::json!({ "dir": dir, "sections": sections }));
    } else {
        let tables: Vec<String> = sections.iter().map(|s| s.table()).collect();
        print!("{}", tables.join("\n"));
    }
    Ok(())
}

#[derive(serde::Serialize)]
struct BenchReport {
    model: String,
    passes: bool,
    threads: usize,
    runs: usize,
    /// ONNX parse, tract optimize, lookout passes, plan: seconds.
    parse_s: f64,
    optimize_s: f64,
    passes_s: f64,
    plan_s: f64,
    /// From the start of loading to the first logits.
    first_result_s: f64,
    median_ms: f64,
    min_ms: f64,
    max_ms: f64,
    /// Process CPU time over wall time during the timed runs: about the
    /// number of busy cores, so it shows whether the thread pool is used.
    cpu_busy: f64,
    /// CPU seconds spent on the inference pool's threads over the whole
    /// benchmark: 0 means tract never used the pool.
    pool_cpu_s: f64,
    peak_rss_mb: f64,
    folded_constants: usize,
    replaced_quantizers: usize,
    /// Quantized linear layers run by lookout's int8 kernel, and the bytes
    /// their packed weights take.
    lookout_int8_layers: usize,
    packed_weights_mb: f64,
    /// Layer norms and skip connections those layers took along.
    lookout_layer_norms: usize,
    lookout_skip_connections: usize,
    /// Self-attention blocks run by lookout's fused op.
    lookout_attention_blocks: usize,
    /// Patch-embedding convolutions run by lookout's op.
    lookout_patch_embeddings: usize,
    /// ONNX nodes lookout evaluated once at load because they read only
    /// constants (plain exports leave thousands).
    onnx_nodes_folded: usize,
    /// Of those, the ones tract evaluated (the rest repeated one of them).
    onnx_nodes_evaluated: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    logits: Option<Vec<f32>>,
}

struct BenchOptions {
    threads: Option<usize>,
    warmup: usize,
    runs: usize,
    load: LoadOptions,
    json: bool,
    logits: bool,
    profile: Option<usize>,
}

fn bench(config: Option<&Path>, model: Option<&Path>, opts: &BenchOptions) -> Result<(), Fatal> {
    let mut model = match (config, model) {
        (Some(c), None) => Config::load(c)?.model,
        (Some(c), Some(m)) => Config::load(c)?.with_model(m)?.model,
        (None, Some(m)) => {
            let m = std::path::absolute(m).map_err(|e| anyhow::anyhow!("{}: {e}", m.display()))?;
            if !m.is_file() {
                let message = format!("{}: no such model file (check --model)", m.display());
                return Err(Fatal { code: exit::MODEL, message });
            }
            if Manifest::path_beside(&m).is_file() {
                // A throwaway config beside the model: its manifest and
                // labels resolve as they would from a real one.
                let dir = m.parent().unwrap_or(Path::new("/"));
                let text = format!("[source]\nkind = \"files\"\npath = {dir:?}\n[model]\npath = {m:?}\n");
                Config::parse(&text, &dir.join("bench.toml"))?.model
            } else {
                ModelConfig::bare(m)
            }
        }
        (None, None) => unreachable!("clap requires --config or --model"),
    };
    if let Some(t) = opts.threads {
        model.threads = t;
    }
    let runs = opts.runs;
    if runs == 0 {
        return Err(Fatal { code: exit::CONFIG, message: "--runs must be at least 1".into() });
    }
    let start = Instant::now();
    let mut classifier = TractClassifier::load_with(&model, &opts.load)?;
    // A fixed pseudo-random image in [-1, 1]: timing does not depend on
    // the content, and the quantizers see a realistic spread of values.
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    for x in classifier.input_mut() {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        *x = (seed >> 40) as f32 / (1u64 << 23) as f32 - 1.0;
    }
    let first_logits = classifier.infer()?;
    let first_result = start.elapsed();
    for _ in 1..opts.warmup {
        classifier.infer()?;
    }
    let mut times = Vec::with_capacity(runs);
    let (cpu0, wall0) = (process_cpu_seconds(), Instant::now());
    for _ in 0..runs {
        let t = Instant::now();
        classifier.infer()?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let cpu_busy = (process_cpu_seconds() - cpu0) / wall0.elapsed().as_secs_f64();
    times.sort_by(f64::total_cmp);
    let load = classifier.load_report();
    let report = BenchReport {
        model: model.path.display().to_string(),
        passes: opts.load.passes,
        threads: load.threads,
        runs,
        parse_s: load.parse.as_secs_f64(),
        optimize_s: load.optimize.as_secs_f64(),
        passes_s: load.passes.as_secs_f64(),
        plan_s: load.plan.as_secs_f64(),
        first_result_s: first_result.as_secs_f64(),
        median_ms: times[times.len() / 2],
        min_ms: times[0],
        max_ms: times[times.len() - 1],
        cpu_busy,
        pool_cpu_s: pool_cpu_seconds(),
        peak_rss_mb: peak_rss_kb().unwrap_or(0) as f64 / 1024.0,
        folded_constants: load.pass_report.folded,
        replaced_quantizers: load.pass_report.quantizers,
        lookout_int8_layers: load.pass_report.fused.layers,
        lookout_layer_norms: load.pass_report.fused.norms,
        lookout_skip_connections: load.pass_report.fused.residuals,
        packed_weights_mb: load.pass_report.fused.packed_bytes as f64 / 1e6,
        lookout_attention_blocks: load.pass_report.attention,
        lookout_patch_embeddings: load.pass_report.patches,
        onnx_nodes_folded: load.pass_report.canonical.folded,
        onnx_nodes_evaluated: load.pass_report.canonical.evaluated,
        logits: opts.logits.then_some(first_logits),
    };
    if opts.json {
        println!("{}", serde_json::to_string(&report).map_err(|e| anyhow::anyhow!(e))?);
    } else {
        let r = &report;
        println!("model         {}", r.model);
        println!(
            "passes        {} ({} int8 layers on lookout's kernel, {:.0} MB packed, with {} layer norms and {} skip \
             connections; {} attention blocks fused, {} patch embedding; {} ONNX nodes folded at load ({} evaluated); {} constants folded, {} quantizers replaced)",
            if r.passes { "on" } else { "off" },
            r.lookout_int8_layers,
            r.packed_weights_mb,
            r.lookout_layer_norms,
            r.lookout_skip_connections,
            r.lookout_attention_blocks,
            r.lookout_patch_embeddings,
            r.onnx_nodes_folded,
            r.onnx_nodes_evaluated,
            r.folded_constants,
            r.replaced_quantizers
        );
        println!(
            "threads       {} ({:.2} cores busy while running; pool threads used {:.2} s of CPU)",
            r.threads, r.cpu_busy, r.pool_cpu_s
        );
        println!(
            "load          {:.2} s (parse {:.2}, optimize {:.2}, passes {:.2}, plan {:.2}); first result after {:.2} s",
            r.parse_s + r.optimize_s + r.passes_s + r.plan_s,
            r.parse_s,
            r.optimize_s,
            r.passes_s,
            r.plan_s,
            r.first_result_s
        );
        println!(
            "latency       median {:.1} ms, min {:.1}, max {:.1} over {} runs",
            r.median_ms, r.min_ms, r.max_ms, r.runs
        );
        println!("peak RSS      {:.0} MB", r.peak_rss_mb);
        println!("kernels       {}", kernel_summary(&load.kernels));
    }
    if let Some(n) = opts.profile.filter(|&n| n > 0) {
        let ops = classifier.profile(n)?;
        let total: f64 = ops.iter().map(|o| o.total.as_secs_f64()).sum();
        eprintln!("profile over {n} runs: {:.1} ms per run in ops", total * 1e3 / n as f64);
        for o in ops.iter().take(15) {
            eprintln!(
                "  {:>5.1} %  {:>8.2} ms/run  {:>5} calls/run  {}",
                o.total.as_secs_f64() / total * 100.0,
                o.total.as_secs_f64() * 1e3 / n as f64,
                o.calls / n,
                o.op
            );
        }
    }
    Ok(())
}

/// User plus system time of the whole process, from /proc (Linux reports
/// it in USER_HZ = 100 ticks per second).
fn process_cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the parenthesised command name, which may hold spaces.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

/// CPU time of the threads named after the inference pool.
fn pool_cpu_seconds() -> f64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return 0.0 };
    tasks
        .flatten()
        .filter(|t| std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.starts_with(POOL_THREAD_PREFIX)))
        .map(|t| {
            let stat = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
            let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
            let f: Vec<&str> = rest.split_whitespace().collect();
            let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
            (ticks(11) + ticks(12)) / 100.0
        })
        .sum()
}

/// VmHWM: the peak resident set size, in KiB.
fn peak_rss_kb() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn version() -> &'static str {
    static V: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    V.get_or_init(|| format!("{} (tract {TRACT_VERSION})", env!("CARGO_PKG_VERSION")))
}
