//! The pipeline loop. Capture runs on its own thread and hands frames over
//! through a one-slot queue: a live source overwrites an untaken frame (the
//! newest frame is the one worth classifying, and the camera never waits), a
//! replay waits for the slot so no file is skipped. Inference runs on the
//! caller's thread, once per `interval`, on the newest frame.

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use log::{info, warn};

use crate::capture::health::{self, Health, HealthMonitor, HealthParams};
use crate::capture::{CaptureError, FrameSource};
use crate::frame::Frame;
use crate::model::Classifier;
use crate::postprocess::{softmax, top_k, Classification, Latency, ModelRef};
use crate::preprocess::{ColorRange, PreprocessParams, Preprocessor};
use crate::publish::Publisher;
use crate::shutdown::Shutdown;
use crate::systemd::Progress;
use crate::thermal::{self, ThermalConfig};
use crate::triggers::Triggers;

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("cannot start the capture thread: {0}")]
    Thread(String),
}

/// What the loop needs from the configuration.
#[derive(Debug, Clone)]
pub struct Options {
    pub interval: Duration,
    pub top_k: usize,
    pub preprocess: PreprocessParams,
    pub color_range: ColorRange,
    pub health: HealthParams,
}

/// Counters for the end-of-run summary (and, later, diagnostics).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Stats {
    pub captured: u64,
    /// Frames a live source overwrote before inference took them.
    pub dropped: u64,
    pub capture_errors: u64,
    /// Frames that could not be decoded or preprocessed.
    pub bad_frames: u64,
    pub inference_errors: u64,
    pub classified: u64,
    pub publish_errors: u64,
    /// The source's health after the last frame (or wait for one).
    pub health: Health,
    /// Frames not classified because `health.skip_unhealthy` is set.
    pub unhealthy_skipped: u64,
}

/// Optional stages around the loop; [`run`] uses none of them.
#[derive(Default)]
pub struct Hooks {
    /// Counts frames and results for the systemd watchdog.
    pub progress: Arc<Progress>,
    /// Groups, smoothing and the publish policy.
    pub triggers: Option<Triggers>,
    /// Stretches the interval while the board is hot.
    pub thermal: Option<ThermalConfig>,
}

#[derive(Default)]
struct SlotState {
    frame: Option<Frame>,
    ended: bool,
    captured: u64,
    dropped: u64,
    errors: u64,
}

#[derive(Default)]
struct Slot {
    state: Mutex<SlotState>,
    changed: Condvar,
    progress: Arc<Progress>,
}

/// How often blocked waits look at the shutdown trigger.
const POLL: Duration = Duration::from_millis(50);
/// How long a stop waits for the capture thread's current read.
const CAPTURE_STOP: Duration = Duration::from_secs(2);

impl Slot {
    fn lock(&self) -> std::sync::MutexGuard<'_, SlotState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn put(&self, frame: Frame, live: bool, shutdown: &Shutdown) {
        let mut s = self.lock();
        while !live && s.frame.is_some() && !shutdown.is_triggered() {
            s = self.changed.wait_timeout(s, POLL).unwrap_or_else(|e| e.into_inner()).0;
        }
        s.captured += 1;
        self.progress.frame();
        if s.frame.replace(frame).is_some() {
            s.dropped += 1;
        }
        self.changed.notify_all();
    }

    /// Waits up to `limit` for the capture thread to finish.
    fn wait_ended(&self, limit: Duration) -> bool {
        let s = self.lock();
        self.changed.wait_timeout_while(s, limit, |s| !s.ended).unwrap_or_else(|e| e.into_inner()).0.ended
    }

    fn end(&self) {
        self.lock().ended = true;
        self.changed.notify_all();
    }

    /// The newest frame; `Ended` once the source has ended and the slot is
    /// empty, or on shutdown; `Idle` when `within` passed without a frame.
    fn take(&self, shutdown: &Shutdown, within: Duration) -> Take {
        let deadline = Instant::now() + within;
        let mut s = self.lock();
        loop {
            if shutdown.is_triggered() {
                return Take::Ended;
            }
            if let Some(f) = s.frame.take() {
                self.changed.notify_all();
                return Take::Frame(f);
            }
            if s.ended {
                return Take::Ended;
            }
            let now = Instant::now();
            if now >= deadline {
                return Take::Idle;
            }
            s = self.changed.wait_timeout(s, POLL.min(deadline - now)).unwrap_or_else(|e| e.into_inner()).0;
        }
    }
}

enum Take {
    Frame(Frame),
    Idle,
    Ended,
}

fn log_health(source: &str, h: Health, p: &HealthParams) {
    match h {
        Health::Ok => info!("{source}: health ok: frames look normal again"),
        Health::Stale => warn!("{source}: health stale: no frame for {:.0} s", p.stale_after.as_secs_f64()),
        Health::Frozen => warn!("{source}: health frozen: the last {} frames were identical", p.frozen_frames + 1),
        Health::Dark => warn!("{source}: health dark: frames are nearly black or uniform (lens covered? lights off?)"),
    }
}

fn capture_loop(mut source: Box<dyn FrameSource>, slot: Arc<Slot>, shutdown: Shutdown) {
    let live = source.is_live();
    while !shutdown.is_triggered() {
        match source.next_frame() {
            Ok(Some(frame)) => slot.put(frame, live, &shutdown),
            Ok(None) => {
                info!("{}: no more frames", source.name());
                break;
            }
            // The source is waiting (backoff, or its next frame is not due):
            // wait here, where shutdown can cut it short.
            Err(CaptureError::NotYet { wait }) => {
                shutdown.wait_timeout(wait);
            }
            Err(e) => {
                warn!("{e}");
                slot.lock().errors += 1;
                // Per-frame errors must not turn into a busy loop.
                shutdown.wait_timeout(Duration::from_millis(100));
            }
        }
    }
    slot.end();
}

/// Runs until `shutdown` triggers or a non-looping source runs out of
/// frames. Per-frame failures (bad frame, failed inference, broker away)
/// are logged and counted; they never end the loop.
pub fn run(
    opts: &Options,
    source: Box<dyn FrameSource>,
    classifier: &mut dyn Classifier,
    publisher: &mut dyn Publisher,
    shutdown: Shutdown,
) -> Result<Stats, DaemonError> {
    run_with(opts, source, classifier, publisher, shutdown, Hooks::default())
}

/// [`run`] with the optional stages in `hooks`.
pub fn run_with(
    opts: &Options,
    source: Box<dyn FrameSource>,
    classifier: &mut dyn Classifier,
    publisher: &mut dyn Publisher,
    shutdown: Shutdown,
    mut hooks: Hooks,
) -> Result<Stats, DaemonError> {
    let slot = Arc::new(Slot { progress: hooks.progress.clone(), ..Slot::default() });
    let source_name = source.name();
    let capture = {
        let (slot, shutdown) = (slot.clone(), shutdown.clone());
        std::thread::Builder::new()
            .name("capture".into())
            .spawn(move || capture_loop(source, slot, shutdown))
            .map_err(|e| DaemonError::Thread(e.to_string()))?
    };

    let info = classifier.info().clone();
    let model = ModelRef { name: info.name.clone(), sha256: info.sha256.clone() };
    let mut pre = Preprocessor::new(&opts.preprocess, info.input_size, opts.color_range);
    let mut stats = Stats::default();
    // Continues from the last run's counter, so `seq` never repeats.
    let mut seq = publisher.first_seq();
    let mut next = Instant::now();
    let mut hot = false;

    let mut monitor = HealthMonitor::new(opts.health.clone(), Instant::now());
    let mut stamper = crate::clock::Stamper::system();

    loop {
        let frame = match slot.take(&shutdown, opts.health.stale_after) {
            Take::Frame(f) => f,
            Take::Ended => break,
            Take::Idle => {
                if let Some(h) = monitor.idle(Instant::now()) {
                    log_health(&source_name, h, &opts.health);
                }
                stats.health = monitor.state();
                continue;
            }
        };
        let t0 = Instant::now();
        let (captured_at, clock) = stamper.stamp(frame.captured_at);
        if let Err(e) = pre.run(&frame, classifier.input_mut()) {
            warn!("{}: frame {} skipped: {e}", frame.origin, frame.seq);
            stats.bad_frames += 1;
            continue;
        }
        // Raw frames give luma without decoding; encoded ones only after.
        let luma = health::luma_of_raw(&frame).unwrap_or_else(|| {
            health::luma_of_input(classifier.input_mut(), opts.preprocess.mean, opts.preprocess.std)
        });
        if let Some(h) = monitor.frame(health::fingerprint(&frame.data), Some(luma), Instant::now()) {
            log_health(&source_name, h, &opts.health);
        }
        stats.health = monitor.state();
        if opts.health.skip_unhealthy && stats.health != Health::Ok {
            stats.unhealthy_skipped += 1;
            // Keep the schedule: a frozen 30 fps camera must not make the
            // loop decode every frame.
            if shutdown.wait_timeout(opts.interval) {
                break;
            }
            continue;
        }
        let t1 = Instant::now();
        let logits = match classifier.infer() {
            Ok(l) => l,
            Err(e) => {
                warn!("{}: frame {}: {e}", frame.origin, frame.seq);
                stats.inference_errors += 1;
                continue;
            }
        };
        let t2 = Instant::now();
        let ranked = top_k(&logits, &info.labels, opts.top_k);
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let mut result = Classification {
            seq,
            frame_seq: frame.seq,
            captured_at,
            label: ranked[0].label.clone(),
            index: ranked[0].index,
            score: ranked[0].score,
            top_k: ranked,
            latency_ms: Latency { preprocess: ms(t1 - t0), inference: ms(t2 - t1), total: ms(t2 - t0) },
            model: model.clone(),
            health: stats.health.as_str().into(),
            clock,
            trigger: None,
        };
        seq += 1;
        stats.classified += 1;
        hooks.progress.result();
        info!(
            "result {} frame {} ({}): {} {:.3} in {:.1} ms",
            result.seq, frame.seq, frame.origin, result.label, result.score, result.latency_ms.total
        );
        if let Some(t) = hooks.triggers.as_mut() {
            let state = t.observe(&softmax(&logits), t2);
            if state.changed {
                info!("state: {} ({:.3})", state.state, state.score);
            }
            result.trigger = Some(state);
        }
        if result.trigger.as_ref().is_none_or(|t| t.publish) {
            if let Err(e) = publisher.publish(&result) {
                warn!("{e}");
                stats.publish_errors += 1;
            }
        }
        {
            let s = slot.lock();
            (stats.captured, stats.dropped, stats.capture_errors) = (s.captured, s.dropped, s.errors);
        }
        publisher.observe(&stats);

        next += thermal_interval(opts.interval, hooks.thermal.as_ref(), &mut hot);
        let now = Instant::now();
        // Behind schedule (slow model): start again now rather than burst.
        if next < now {
            next = now;
        }
        if shutdown.wait_timeout(next - now) {
            break;
        }
    }
    // A live source may sit in a blocking read; the trigger lets the capture
    // thread leave at its next frame.
    shutdown.trigger();
    // A hung camera never returns from its read: leave its thread behind
    // (it ends with the process) rather than miss systemd's stop timeout.
    if slot.wait_ended(CAPTURE_STOP) {
        let _ = capture.join();
    } else {
        warn!("the frame source did not stop within {} s; leaving it behind", CAPTURE_STOP.as_secs());
    }
    let s = slot.lock();
    stats.captured = s.captured;
    stats.dropped = s.dropped;
    stats.capture_errors = s.errors;
    Ok(stats)
}

/// The interval for the next result, logging when the board turns hot or
/// cools down (`hot` remembers which it was).
fn thermal_interval(base: Duration, cfg: Option<&ThermalConfig>, hot: &mut bool) -> Duration {
    let Some(cfg) = cfg.filter(|c| c.enabled) else { return base };
    let reading = thermal::read(cfg);
    let now_hot = reading.hot(cfg);
    let interval = thermal::interval(base, &reading, cfg);
    if now_hot != std::mem::replace(hot, now_hot) {
        if now_hot {
            warn!(
                "board hot ({reading}): classifying every {:.2} s instead of {:.2} s",
                interval.as_secs_f64(),
                base.as_secs_f64()
            );
        } else {
            info!("board cooled down ({reading}): back to every {:.2} s", base.as_secs_f64());
        }
    }
    interval
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::CaptureError;
    use crate::frame::PixelFormat;
    use crate::model::{ModelError, ModelInfo};
    use crate::publish::PublishError;
    use std::collections::VecDeque;
    use std::time::SystemTime;

    /// Replays scripted outcomes: a frame with a solid gray level, an error.
    struct Scripted {
        script: VecDeque<Result<u8, &'static str>>,
        live: bool,
        seq: u64,
    }

    impl FrameSource for Scripted {
        fn next_frame(&mut self) -> Result<Option<Frame>, CaptureError> {
            let Some(step) = self.script.pop_front() else { return Ok(None) };
            let level = step.map_err(|r| CaptureError::Read { origin: "script".into(), reason: r.into() })?;
            self.seq += 1;
            let data = if level == 0 { vec![] } else { vec![level; 4 * 4 * 3] };
            Ok(Some(Frame {
                seq: self.seq - 1,
                captured_at: SystemTime::now(),
                width: 4,
                height: 4,
                format: PixelFormat::Rgb8,
                data,
                origin: "script".into(),
            }))
        }
        fn is_live(&self) -> bool {
            self.live
        }
        fn name(&self) -> String {
            "script".into()
        }
    }

    /// "Classifies" by brightness: class 1 when the mean input is above 0.
    struct Brightness {
        info: ModelInfo,
        input: Vec<f32>,
    }

    impl Classifier for Brightness {
        fn info(&self) -> &ModelInfo {
            &self.info
        }
        fn input_mut(&mut self) -> &mut [f32] {
            &mut self.input
        }
        fn infer(&mut self) -> Result<Vec<f32>, ModelError> {
            let mean = self.input.iter().sum::<f32>() / self.input.len() as f32;
            Ok(vec![-mean, mean])
        }
    }

    #[derive(Default)]
    struct Collect(Vec<Classification>);

    impl Publisher for Collect {
        fn publish(&mut self, r: &Classification) -> Result<(), PublishError> {
            self.0.push(r.clone());
            Ok(())
        }
        fn close(&mut self, _: Duration) {}
    }

    fn setup(script: Vec<Result<u8, &'static str>>, live: bool) -> (Options, Box<dyn FrameSource>, Brightness) {
        let opts = Options {
            interval: Duration::from_millis(1),
            top_k: 2,
            preprocess: PreprocessParams::default(),
            color_range: ColorRange::Full,
            health: HealthParams::default(),
        };
        let source = Box::new(Scripted { script: script.into(), live, seq: 0 });
        let info =
            ModelInfo { name: "b".into(), sha256: None, input_size: 2, labels: vec!["dark".into(), "bright".into()] };
        (opts, source, Brightness { info, input: vec![0.0; 12] })
    }

    #[test]
    fn a_replay_classifies_every_frame_and_skips_bad_ones() {
        let (opts, source, mut model) = setup(vec![Ok(10), Err("glitch"), Ok(250), Ok(0), Ok(200)], false);
        let mut out = Collect::default();
        let stats = run(&opts, source, &mut model, &mut out, Shutdown::new()).unwrap();
        let labels: Vec<(u64, u64, &str)> = out.0.iter().map(|r| (r.seq, r.frame_seq, r.label.as_str())).collect();
        assert_eq!(labels, vec![(0, 0, "dark"), (1, 1, "bright"), (2, 3, "bright")]);
        assert_eq!((stats.captured, stats.dropped, stats.capture_errors, stats.bad_frames), (4, 0, 1, 1));
        assert!(out.0[1].score > 0.5 && out.0[1].top_k.len() == 2);
    }

    #[test]
    fn hooks_smooth_filter_publishing_and_count_progress() {
        let (opts, source, mut model) = setup(vec![Ok(10), Ok(10), Ok(250), Ok(250), Ok(10)], false);
        let cfg = crate::triggers::TriggersConfig {
            enabled: true,
            publish: crate::triggers::PublishPolicy::Change,
            heartbeat: 3600.0,
            ..Default::default()
        };
        let hooks = Hooks { triggers: Some(Triggers::new(&cfg, &model.info.labels).unwrap()), ..Default::default() };
        let progress = hooks.progress.clone();
        let mut out = Collect::default();
        let stats = run_with(&opts, source, &mut model, &mut out, Shutdown::new(), hooks).unwrap();
        let published: Vec<(u64, &str, bool)> = out
            .0
            .iter()
            .map(|r| {
                let t = r.trigger.as_ref().unwrap();
                (r.frame_seq, t.state.as_str(), t.changed)
            })
            .collect();
        assert_eq!(published, vec![(0, "dark", true), (2, "bright", true), (4, "dark", true)]);
        assert_eq!(stats.classified, 5);
        assert_eq!(progress.counts(), (5, 5));
    }

    #[test]
    fn health_follows_the_frames_goes_out_with_results_and_can_skip_them() {
        let script = vec![Ok(100), Ok(100), Ok(100), Ok(10), Ok(200)];
        let health = HealthParams { frozen_frames: 2, dark_below: 50.0, uniform_below: 0.0, ..HealthParams::default() };
        let (mut opts, source, mut model) = setup(script.clone(), false);
        opts.health = health.clone();
        let mut out = Collect::default();
        let stats = run(&opts, source, &mut model, &mut out, Shutdown::new()).unwrap();
        let states: Vec<&str> = out.0.iter().map(|r| r.health.as_str()).collect();
        assert_eq!(states, vec!["ok", "ok", "frozen", "dark", "ok"]);
        assert_eq!((stats.health, stats.unhealthy_skipped), (Health::Ok, 0));

        let (mut opts, source, mut model) = setup(script, false);
        opts.health = HealthParams { skip_unhealthy: true, ..health };
        let mut out = Collect::default();
        let stats = run(&opts, source, &mut model, &mut out, Shutdown::new()).unwrap();
        let frames: Vec<u64> = out.0.iter().map(|r| r.frame_seq).collect();
        assert_eq!(frames, vec![0, 1, 4], "the frozen and the dark frame were not classified");
        assert_eq!(stats.unhealthy_skipped, 2);
    }

    #[test]
    fn a_source_that_stops_delivering_becomes_stale() {
        // Each error costs the capture loop 100 ms: 300 ms without a frame,
        // six times stale_after.
        let (mut opts, source, mut model) = setup(vec![Ok(100), Err("gone"), Err("gone"), Err("gone")], true);
        opts.health = HealthParams { stale_after: Duration::from_millis(50), ..HealthParams::default() };
        let mut out = Collect::default();
        let stats = run(&opts, source, &mut model, &mut out, Shutdown::new()).unwrap();
        assert_eq!(out.0.len(), 1);
        assert_eq!(stats.health, Health::Stale);
        assert_eq!(stats.capture_errors, 3);
    }

    #[test]
    fn shutdown_stops_a_looping_run() {
        let (mut opts, _, mut model) = setup(vec![], true);
        opts.interval = Duration::from_secs(3600);
        let endless =
            Box::new(Scripted { script: std::iter::repeat_n(Ok(100), 1_000_000).collect(), live: true, seq: 0 });
        let shutdown = Shutdown::new();
        let trigger = shutdown.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            trigger.trigger();
        });
        let start = Instant::now();
        let mut out = Collect::default();
        let stats = run(&opts, endless, &mut model, &mut out, shutdown).unwrap();
        t.join().unwrap();
        assert!(start.elapsed() < Duration::from_secs(10));
        assert_eq!(out.0.len(), 1, "one result, then the hour-long interval is cut short");
        assert!(stats.dropped > 0, "a live source overwrites frames nobody took");
    }
}
