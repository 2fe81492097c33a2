//! The command line. Only this file decides exit codes and prints errors;
//! everything below returns typed errors.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime};

use clap::{Parser, Subcommand};
use log::info;

use lookout::capture::{self, CaptureError};
use lookout::config::{Config, ConfigError};
use lookout::daemon;
use lookout::frame::{Frame, PixelFormat};
use lookout::model::{Classifier, ModelError, TractClassifier, TRACT_VERSION};
use lookout::postprocess::{top_k, Latency};
use lookout::preprocess::{ColorRange, Preprocessor};
use lookout::publish::{MqttPublisher, NoPublisher, Publisher};
use lookout::shutdown::Shutdown;
use lookout::systemd;
use lookout::triggers::{TriggerError, Triggers};

/// Exit codes, documented in README.md. 78 is sysexits' EX_CONFIG, which the
/// systemd unit lists in RestartPreventExitStatus so a typo does not cause a
/// restart loop.
mod exit {
    pub const FAILURE: u8 = 1;
    pub const DATA: u8 = 65;
    pub const NO_INPUT: u8 = 66;
    pub const SOURCE: u8 = 69;
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
        #[arg(required = true)]
        images: Vec<PathBuf>,
    },
    /// Validate a config file and print it resolved.
    CheckConfig { config: PathBuf },
    /// List V4L2 cameras with their formats, sizes and rates.
    Cameras,
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

impl From<anyhow::Error> for Fatal {
    fn from(e: anyhow::Error) -> Self {
        Fatal { code: exit::FAILURE, message: format!("{e:#}") }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    let result = match cli.command {
        Command::Run { config } => run(&config),
        Command::Classify { config, model, logits, images } => classify(&config, model.as_deref(), logits, &images),
        Command::CheckConfig { config } => check_config(&config),
        Command::Cameras => cameras(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("lookout: error: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}

/// journald adds its own timestamps and reads `<N>` priority prefixes, so
/// under systemd (JOURNAL_STREAM set) log lines carry a priority instead.
fn init_logging() {
    let mut b = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"));
    if std::env::var_os("JOURNAL_STREAM").is_some() {
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

/// The trigger stage, its groups and thresholds checked against the labels.
fn triggers(cfg: &Config) -> Result<Option<Triggers>, Fatal> {
    if !cfg.triggers.enabled {
        return Ok(None);
    }
    let labels = lookout::model::load_labels(&cfg.model.labels)?;
    let t =
        Triggers::new(&cfg.triggers, &labels).map_err(|e| Fatal::from(e).prefixed(&cfg.file.display().to_string()))?;
    info!("triggers: {} groups and classes, publishing {:?}", t.groups().len(), cfg.triggers.publish);
    Ok(Some(t))
}

fn check_config(path: &Path) -> Result<(), Fatal> {
    let cfg = Config::load(path)?;
    triggers(&cfg)?;
    print!("# {} is valid; resolved:\n{}", path.display(), cfg.to_toml());
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

fn run(path: &Path) -> Result<(), Fatal> {
    let cfg = Config::load(path)?;
    let shutdown = Shutdown::new();
    handle_signals(&shutdown)?;

    // Before the model: loading a large one takes minutes on a Pi, a typo in
    // a group should not.
    let triggers = triggers(&cfg)?;
    let t = Instant::now();
    let mut classifier = TractClassifier::load(&cfg.model)?;
    info!(
        "model {} ({}x{}, {} classes) loaded in {:.1} s",
        classifier.info().name,
        classifier.info().input_size,
        classifier.info().input_size,
        classifier.info().labels.len(),
        t.elapsed().as_secs_f64()
    );
    let source = capture::open(&cfg.source)?;
    info!("frames from {}", source.name());
    // Ready before connecting: a dead broker must not fail the start; the
    // publisher queues and reconnects.
    systemd::ready(&format!("classifying {} every {:.2} s", source.name(), cfg.schedule.interval.as_secs_f64()));
    let hooks = daemon::Hooks { triggers, thermal: Some(cfg.thermal.clone()), ..Default::default() };
    if let Some(period) = systemd::watchdog_period() {
        let longest = if cfg.thermal.enabled {
            cfg.schedule.interval.mul_f64(cfg.thermal.stretch)
        } else {
            cfg.schedule.interval
        };
        systemd::spawn_watchdog(period, longest, hooks.progress.clone(), shutdown.clone())
            .map_err(|e| anyhow::anyhow!("watchdog thread: {e}"))?;
    }
    let mut publisher: Box<dyn Publisher> = if cfg.mqtt.enabled {
        let p = MqttPublisher::start(&cfg).map_err(|e| {
            let code = if e.is_config() { exit::CONFIG } else { exit::FAILURE };
            Fatal { code, message: e.to_string() }
        })?;
        info!("publishing to {}:{} under {}/{}/", cfg.mqtt.host, cfg.mqtt.port, cfg.mqtt.topic_prefix, cfg.device.id);
        Box::new(p)
    } else {
        Box::new(NoPublisher)
    };
    let opts = daemon::Options {
        interval: cfg.schedule.interval,
        top_k: cfg.model.top_k,
        preprocess: cfg.model.preprocess.clone(),
        color_range: ColorRange::default(),
        health: cfg.health.clone(),
    };
    let stats = daemon::run_with(&opts, source, &mut classifier, publisher.as_mut(), shutdown, hooks)
        .map_err(|e| anyhow::anyhow!(e))?;
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
}

fn classify(config: &Path, model: Option<&Path>, with_logits: bool, images: &[PathBuf]) -> Result<(), Fatal> {
    let mut cfg = Config::load(config)?;
    if let Some(m) = model {
        cfg = cfg.with_model(m)?;
    }
    let mut classifier = TractClassifier::load(&cfg.model)?;
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
        let frame = Frame {
            seq: 0,
            captured_at: SystemTime::now(),
            width: 0,
            height: 0,
            format: PixelFormat::Encoded,
            data,
            origin: image.display().to_string(),
        };
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

fn version() -> &'static str {
    static V: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    V.get_or_init(|| format!("{} (tract {TRACT_VERSION})", env!("CARGO_PKG_VERSION")))
}
