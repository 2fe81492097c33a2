//! The loop. Each source captures on a thread of its own and hands its
//! newest frame over through a slot (`slot.rs`); the views (named regions of a
//! source, each on its own schedule) share the one classifier, which runs
//! on the caller's thread. The loop sleeps until the next view is due, a
//! frame a view waits for arrives, a command comes in or a stop is asked
//! for, and never longer than the watchdog allows: its wake-ups are what
//! the systemd watchdog is fed with.
//!
//! Views are served earliest-due first, one at a time, so several views due
//! at once take turns instead of starving each other; a view that falls
//! behind starts again from now (no burst) and its results say how late
//! they were (`late_ms`), the skipped periods are counted.

mod overrides;
mod slot;
mod view;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{info, warn};

pub use overrides::{Overrides, OverridesError, ViewOverride};
pub use view::{LabelSource, View, ViewConfig};

use crate::capture::health::{self, Health, HealthMonitor, HealthParams};
use crate::capture::FrameSource;
use crate::command::{Action, Inbox, Reply, Request};
use crate::model::Classifier;
use crate::postprocess::{softmax, top_k, Classification, Latency, ModelRef};
use crate::preprocess::{ColorRange, Preprocessor};
use crate::publish::Publisher;
use crate::shutdown::Shutdown;
use crate::stats::Stats;
use crate::systemd::Watchdog;
use crate::thermal::{self, ThermalConfig};
use slot::Slot;
use view::Running;

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("cannot start the capture thread: {0}")]
    Thread(String),
    #[error("view `{view}` names the source `{source_name}`, which does not exist")]
    NoSource { view: String, source_name: String },
    #[error("{0}")]
    Overrides(#[from] OverridesError),
}

/// A fault injected on purpose, for tests of what supervises the daemon.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Fault {
    /// The n-th inference (from 1) never returns: the loop hangs as a stuck
    /// model would, and the watchdog must notice.
    HangInferenceAfter(u64),
}

impl Fault {
    /// `LOOKOUT_FAULT=hang-inference-after:N`; anything else is an error.
    pub fn parse(s: &str) -> Result<Fault, String> {
        s.strip_prefix("hang-inference-after:")
            .and_then(|n| n.parse().ok())
            .filter(|n| *n > 0)
            .map(Fault::HangInferenceAfter)
            .ok_or_else(|| format!("LOOKOUT_FAULT={s:?} is not hang-inference-after:N (N from 1)"))
    }
}

/// What the loop needs besides its sources and views.
#[derive(Debug, Default)]
pub struct Options {
    pub top_k: usize,
    pub health: HealthParams,
    /// Stretches every interval while the board is hot.
    pub thermal: Option<ThermalConfig>,
    /// Fed on every wake-up; also caps how long the loop sleeps.
    pub watchdog: Option<Watchdog>,
    /// Where commands' changes and the snapshot rings are kept (`None`:
    /// nothing is kept).
    pub state_dir: Option<PathBuf>,
    pub fault: Option<Fault>,
}

/// A frame source and what the daemon needs to know about it.
pub struct Source {
    pub name: String,
    pub frames: Box<dyn FrameSource>,
    /// How its YUV frames code luma and chroma.
    pub color_range: ColorRange,
}

/// How long a stop waits for a capture thread's current read.
const CAPTURE_STOP: Duration = Duration::from_secs(2);
/// The longest sleep without a watchdog: staleness is still noticed.
const IDLE: Duration = Duration::from_secs(1);

struct RunningSource {
    name: String,
    slot: Arc<Slot>,
    live: bool,
    color_range: ColorRange,
    monitor: HealthMonitor,
    /// The generation whose frame-level health (frozen, dark) was judged.
    judged: u64,
    views: Vec<usize>,
}

/// Runs until `shutdown` triggers or every source has run out of frames.
/// Per-frame failures (bad frame, failed inference, broker away) are
/// logged and counted; they never end the loop.
pub fn run(
    opts: Options,
    sources: Vec<Source>,
    views: Vec<View>,
    classifier: &mut dyn Classifier,
    publisher: &mut dyn Publisher,
    inbox: &Inbox,
    shutdown: Shutdown,
) -> Result<Stats, DaemonError> {
    Loop::start(opts, sources, views, classifier, publisher, inbox, shutdown)?.run()
}

struct Loop<'a> {
    opts: Options,
    sources: Vec<RunningSource>,
    threads: Vec<std::thread::JoinHandle<()>>,
    views: Vec<Running>,
    classifier: &'a mut dyn Classifier,
    publisher: &'a mut dyn Publisher,
    inbox: &'a Inbox,
    shutdown: Shutdown,
    model: ModelRef,
    labels: Vec<String>,
    stats: Stats,
    /// The `seq` of the next result; continues from the last run's.
    seq: u64,
    inferences: u64,
    hot: bool,
    overrides: Overrides,
}

impl<'a> Loop<'a> {
    fn start(
        opts: Options,
        sources: Vec<Source>,
        views: Vec<View>,
        classifier: &'a mut dyn Classifier,
        publisher: &'a mut dyn Publisher,
        inbox: &'a Inbox,
        shutdown: Shutdown,
    ) -> Result<Loop<'a>, DaemonError> {
        let bell = inbox.bell();
        shutdown.ring_on_trigger(&bell);
        let now = Instant::now();
        let info = classifier.info().clone();
        let mut running_sources = vec![];
        let mut threads = vec![];
        let mut color = vec![];
        for s in sources {
            let slot = Arc::new(Slot::new(bell.clone()));
            let live = s.frames.is_live();
            let thread = slot::spawn(s.frames, slot.clone(), shutdown.clone())
                .map_err(|e| DaemonError::Thread(e.to_string()))?;
            threads.push(thread);
            color.push(s.color_range);
            running_sources.push(RunningSource {
                name: s.name,
                slot,
                live,
                color_range: s.color_range,
                monitor: HealthMonitor::new(opts.health.clone(), now),
                judged: 0,
                views: vec![],
            });
        }
        let overrides = match &opts.state_dir {
            Some(dir) => Overrides::load(&Overrides::path(dir))?,
            None => Overrides::default(),
        };
        let mut running = vec![];
        for v in views {
            let Some(source) = running_sources.iter().position(|s| s.name == v.config.source) else {
                shutdown.trigger();
                return Err(DaemonError::NoSource { view: v.config.name, source_name: v.config.source });
            };
            running_sources[source].views.push(running.len());
            let mut r = Running {
                name: v.config.name.clone(),
                source,
                pre: Preprocessor::new(&v.preprocess, info.input_size, color[source]),
                mean: v.preprocess.mean,
                std: v.preprocess.std,
                triggers: v.triggers,
                interval: v.config.interval,
                paused: false,
                next_due: now,
                last_gen: 0,
                forced: vec![],
                roi: v.config.roi,
                crop_fraction: v.config.crop_fraction,
                ring: v.config.snapshots.as_ref().filter(|c| c.keep > 0).and_then(|c| {
                    opts.state_dir.as_deref().map(|dir| crate::snapshot::Ring::new(dir, &v.config.name, c.keep))
                }),
                snapshots: v.config.snapshots.clone(),
                last_snapshot: None,
                snapshot_asked: false,
                last_label: None,
                classes: v.classes,
                labels: v.config.labels,
                triggers_config: v.config.triggers.clone(),
                teach_class: None,
                stamper: crate::clock::Stamper::system(),
            };
            if let Some(o) = overrides.views.get(&r.name) {
                r.paused = o.paused;
                if let Some(i) = o.interval {
                    r.interval = Duration::from_secs_f64(i);
                }
                if let (Some(t), Some(tr)) = (o.threshold, r.triggers.as_mut()) {
                    tr.set_threshold(t);
                }
                r.teach_class = o.teach_class.clone();
                info!("view {}: settings from earlier commands: {:?}", r.name, r.control());
            }
            running.push(r);
        }
        for name in overrides.views.keys().filter(|n| !running.iter().any(|v| &v.name == *n)) {
            warn!("overrides for view {name:?}, which the config no longer has, are ignored");
        }
        let seq = publisher.first_seq();
        let mut l = Loop {
            opts,
            sources: running_sources,
            threads,
            views: running,
            classifier,
            publisher,
            inbox,
            shutdown,
            model: ModelRef { name: info.name, sha256: info.sha256 },
            labels: info.labels,
            stats: Stats::default(),
            seq,
            inferences: 0,
            hot: false,
            overrides,
        };
        for s in 0..l.sources.len() {
            l.stats.health.insert(l.sources[s].name.clone(), Health::Ok);
            l.publish_health(s);
        }
        for v in 0..l.views.len() {
            let c = l.views[v].control();
            l.publisher.control(&l.views[v].name, &c);
        }
        Ok(l)
    }

    fn run(mut self) -> Result<Stats, DaemonError> {
        let bell = self.inbox.bell();
        loop {
            let rung = bell.rings();
            if self.shutdown.is_triggered() {
                break;
            }
            let commands = self.inbox.drain();
            if !commands.is_empty() {
                for req in commands {
                    self.command(req);
                }
                // A view paused while a replay waited for it.
                for s in 0..self.sources.len() {
                    self.consume(s, self.sources[s].slot.gen());
                }
            }
            let now = Instant::now();
            self.watch_staleness(now);
            if let Some(v) = self.ready_view(now) {
                self.serve(v);
                self.pet();
                continue;
            }
            if self.sources.iter().all(|s| s.slot.finished()) {
                break;
            }
            self.pet();
            let max = self.opts.watchdog.as_ref().map_or(IDLE, |w| w.max_sleep().min(IDLE));
            let due = self.views.iter().filter(|v| !v.paused).map(|v| v.next_due).min();
            let sleep = due.map_or(max, |d| d.saturating_duration_since(Instant::now()).min(max));
            bell.wait(rung, sleep);
        }
        self.stop();
        Ok(self.stats)
    }

    fn pet(&mut self) {
        let Some(w) = self.opts.watchdog.as_mut() else { return };
        let stats = &self.stats;
        w.pet(Instant::now(), || {
            let health: Vec<String> = stats.health.iter().map(|(s, h)| format!("{s} {h}")).collect();
            format!("{} results; {}", stats.classified, health.join(", "))
        });
    }

    /// Marks sources stale that delivered nothing for `stale_after`, and
    /// ok again when they deliver: arrival alone clears staleness (frozen
    /// and dark are judged on the frames the views classify).
    fn watch_staleness(&mut self, now: Instant) {
        for s in 0..self.sources.len() {
            let src = &mut self.sources[s];
            let changed = match src.slot.last_put() {
                Some(at) if now.saturating_duration_since(at) < self.opts.health.stale_after => src.monitor.arrived(at),
                _ => None,
            }
            .or_else(|| src.monitor.idle(now));
            if let Some(h) = changed {
                self.health_changed(s, h);
            }
        }
    }

    fn health_changed(&mut self, s: usize, h: Health) {
        let p = &self.opts.health;
        let name = &self.sources[s].name;
        match h {
            Health::Ok => info!("{name}: health ok: frames look normal again"),
            Health::Stale => warn!("{name}: health stale: no frame for {:.1} s", p.stale_after.as_secs_f64()),
            Health::Frozen => warn!("{name}: health frozen: the last {} frames were identical", p.frozen_frames + 1),
            Health::Dark => {
                warn!("{name}: health dark: frames are nearly black or uniform (lens covered? lights off?)")
            }
        }
        self.stats.health.insert(name.clone(), h);
        self.publish_health(s);
        self.publisher.observe(&self.stats);
    }

    fn publish_health(&mut self, s: usize) {
        let h = self.sources[s].monitor.state();
        for &v in &self.sources[s].views {
            self.publisher.health(&self.views[v].name, h);
        }
    }

    /// The due view with the earliest due time whose source has a frame it
    /// has not classified (or any frame, when a command forces it).
    fn ready_view(&mut self, now: Instant) -> Option<usize> {
        let mut best: Option<(Instant, usize)> = None;
        for (i, v) in self.views.iter().enumerate() {
            let forced = !v.forced.is_empty();
            if v.paused && !forced {
                continue;
            }
            let due = if forced { now.min(v.next_due) } else { v.next_due };
            if due > now || best.is_some_and(|(d, _)| d <= due) {
                continue;
            }
            let slot = &self.sources[v.source].slot;
            let fresh = if forced { slot.latest().is_some() } else { slot.newer_than(v.last_gen).is_some() };
            if fresh {
                best = Some((due, i));
            }
        }
        best.map(|(_, i)| i)
    }

    /// Classifies view `v`'s newest frame and publishes the result.
    fn serve(&mut self, v: usize) {
        let start = Instant::now();
        let forced = std::mem::take(&mut self.views[v].forced);
        let s = self.views[v].source;
        let slot = self.sources[s].slot.clone();
        let latest = if forced.is_empty() { slot.newer_than(self.views[v].last_gen) } else { slot.latest() };
        let Some(latest) = latest else { return };
        let due = self.views[v].next_due;
        if forced.is_empty() || start >= due {
            self.schedule(v, due, start);
        }
        // Late from the due time, or from when the first frame this view
        // had not seen arrived, if that was later (a snapshot camera polled
        // more slowly than the interval is not the loop being late).
        let fresh_at = slot.arrival(self.views[v].last_gen + 1).unwrap_or(latest.at);
        let late = start.saturating_duration_since(due.max(fresh_at));
        self.views[v].last_gen = latest.gen;
        self.consume(s, latest.gen);
        let frame = &latest.frame;

        let view = &mut self.views[v];
        let (captured_at, clock) = view.stamper.stamp(frame.captured_at);
        if let Err(e) = view.pre.run(frame, self.classifier.input_mut()) {
            warn!("{}: frame {} skipped: {e}", frame.origin, frame.seq);
            self.stats.bad_frames += 1;
            for req in &forced {
                self.publisher.reply(&Reply::error(req, format!("the frame could not be used: {e}")));
            }
            return;
        }
        if self.sources[s].judged < latest.gen {
            self.sources[s].judged = latest.gen;
            // Raw frames give luma without decoding; encoded ones only after.
            let luma = health::luma_of_raw(frame)
                .unwrap_or_else(|| health::luma_of_input(self.classifier.input_mut(), view.mean, view.std));
            if let Some(h) = self.sources[s].monitor.frame(health::fingerprint(&frame.data), Some(luma), start) {
                self.health_changed(s, h);
            }
        }
        let health = self.sources[s].monitor.state();
        if self.opts.health.skip_unhealthy && health != Health::Ok && forced.is_empty() {
            self.stats.unhealthy_skipped += 1;
            return;
        }

        let t1 = Instant::now();
        self.inferences += 1;
        if self.opts.fault == Some(Fault::HangInferenceAfter(self.inferences)) {
            warn!("LOOKOUT_FAULT: inference {} hangs on purpose", self.inferences);
            while !self.shutdown.wait_timeout(Duration::from_secs(3600)) {}
            return;
        }
        let logits = match self.classifier.infer() {
            Ok(l) => l,
            Err(e) => {
                warn!("{}: frame {}: {e}", frame.origin, frame.seq);
                self.stats.inference_errors += 1;
                for req in &forced {
                    self.publisher.reply(&Reply::error(req, e.to_string()));
                }
                return;
            }
        };
        let t2 = Instant::now();
        let view = &mut self.views[v];
        let embedding = self.classifier.embedding();
        let custom = view.classes.as_ref().ok().zip(embedding).and_then(|(store, e)| store.classify(e));
        // What the label, the top-k and the triggers see: the model's
        // classes, or the view's own (one-hot on the nearest class, nothing
        // when it is unknown: the calibrated threshold already decided).
        let (ranked, probs) = match (view.labels, view.classes.as_ref()) {
            (LabelSource::Custom, Ok(store)) => custom_ranking(store, embedding, custom.as_ref(), self.opts.top_k),
            _ => (top_k(&logits, &self.labels, self.opts.top_k), softmax(&logits)),
        };
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let (label, index, score) = ranked.first().map_or((crate::custom::UNKNOWN.to_owned(), 0, 0.0), |r| {
            let unknown = view.labels == LabelSource::Custom && custom.as_ref().is_none_or(|c| c.unknown);
            (if unknown { crate::custom::UNKNOWN.to_owned() } else { r.label.clone() }, r.index, r.score)
        });
        let mut result = Classification {
            seq: self.seq,
            view: view.name.clone(),
            frame_seq: frame.seq,
            captured_at,
            label,
            index,
            score,
            top_k: ranked,
            latency_ms: Latency { preprocess: ms(t1 - start), inference: ms(t2 - t1), total: ms(t2 - start) },
            late_ms: if forced.is_empty() { (ms(late) * 10.0).round() / 10.0 } else { 0.0 },
            model: self.model.clone(),
            health: health.as_str().into(),
            trigger: None,
            custom,
            clock,
        };
        self.seq += 1;
        self.stats.classified += 1;
        info!(
            "result {} {} frame {} ({}): {} {:.3} in {:.1} ms",
            result.seq, view.name, frame.seq, frame.origin, result.label, result.score, result.latency_ms.total
        );
        if let Some(t) = view.triggers.as_mut() {
            let state = t.observe(&probs, t2);
            if state.changed {
                info!("{}: state {} ({:.3})", view.name, state.state, state.score);
            }
            result.trigger = Some(state);
        }
        for req in forced.iter().filter(|r| matches!(r.action, Action::Teach { .. })) {
            let reply = self.teach(v, frame, req);
            self.publisher.reply(&reply);
        }
        // A command asked for this result: it goes out whatever the policy.
        let publish = !forced.is_empty() || result.trigger.as_ref().is_none_or(|t| t.publish);
        if publish {
            if let Err(e) = self.publisher.publish(&result) {
                warn!("{e}");
                self.stats.publish_errors += 1;
            }
        }
        let snapshot = self.snapshot(v, frame, &result);
        for req in forced.iter().filter(|r| !matches!(r.action, Action::Teach { .. })) {
            let mut reply =
                Reply::ok(req).with("seq", result.seq).with("label", &result.label).with("score", result.score);
            if req.action == Action::Snapshot {
                reply = match &snapshot {
                    Some(Ok(bytes)) => reply.with("snapshot_bytes", bytes),
                    Some(Err(e)) => Reply::error(req, e.clone()),
                    None => Reply::error(req, "no snapshot was taken"),
                };
            }
            self.publisher.reply(&reply);
        }
        self.refresh_counts();
        self.publisher.observe(&self.stats);
    }

    /// Adds view `v`'s picture, just classified, to a custom class.
    fn teach(&mut self, v: usize, frame: &crate::frame::Frame, req: &Request) -> Reply {
        use crate::custom::{EXAMPLE_QUALITY, EXAMPLE_SIDE};
        let range = self.sources[self.views[v].source].color_range;
        let side = EXAMPLE_SIDE.max(self.classifier.info().input_size);
        let view = &mut self.views[v];
        let class = match (&req.action, &view.teach_class) {
            (Action::Teach { class: Some(c) }, _) | (Action::Teach { class: None }, Some(c)) => c.clone(),
            _ => {
                return Reply::error(
                    req,
                    "no class to teach: give \"class\", or set the view's teach_class first (Home Assistant's Class to teach)",
                )
            }
        };
        let Some(embedding) = self.classifier.embedding().map(<[f32]>::to_vec) else {
            return Reply::error(req, "the model gave no embedding");
        };
        let picture = crate::snapshot::view_rgb(frame, range, view.roi, view.crop_fraction, side)
            .and_then(|img| crate::snapshot::jpeg(&img, EXAMPLE_QUALITY));
        let added = match (view.classes.as_mut(), picture) {
            (Err(why), _) => Err(why.clone()),
            (_, Err(e)) => Err(e.to_string()),
            (Ok(store), Ok(jpeg)) => store.add(&class, &embedding, &jpeg).map_err(|e| e.to_string()).map(|id| {
                let list = store.list();
                (id, list)
            }),
        };
        match added {
            Ok((id, list)) => {
                info!("{}: taught class {class:?} example {id}", view.name);
                let reply = Reply::ok(req).with("class", &class).with("example", id).with("classes", list);
                self.classes_changed(v);
                reply
            }
            Err(e) => Reply::error(req, e),
        }
    }

    /// A view's custom classes changed: its triggers (when they work on
    /// them) are built again over the new classes, and Home Assistant is
    /// told the new list.
    fn classes_changed(&mut self, v: usize) {
        let view = &mut self.views[v];
        let Ok(store) = &view.classes else { return };
        let labels: Vec<String> = store.prototypes().labels().to_vec();
        if view.labels == LabelSource::Custom && view.triggers_config.enabled {
            let threshold = view.triggers.as_ref().map(|t| t.threshold());
            view.triggers = custom_triggers(&view.name, &view.triggers_config, &labels);
            if let (Some(t), Some(tr)) = (threshold, view.triggers.as_mut()) {
                tr.set_threshold(t);
            }
        }
        let name = view.name.clone();
        self.publisher.classes(&name, &labels);
    }

    /// Publishes (and keeps) the picture view `v` classified, when the state
    /// changed or a command asked, within the view's rate limit. Returns the
    /// JPEG's size or why there is none, when one was wanted.
    fn snapshot(
        &mut self,
        v: usize,
        frame: &crate::frame::Frame,
        result: &Classification,
    ) -> Option<Result<usize, String>> {
        let range = self.sources[self.views[v].source].color_range;
        let view = &mut self.views[v];
        let changed = match &result.trigger {
            Some(t) => t.changed,
            None => view.last_label.as_deref() != Some(result.label.as_str()),
        };
        view.last_label = Some(result.label.clone());
        let asked = std::mem::take(&mut view.snapshot_asked);
        let cfg = view.snapshots.as_ref()?;
        let now = Instant::now();
        let due = view.last_snapshot.is_none_or(|t| now.duration_since(t) >= cfg.min_interval);
        if !(asked || changed && due) {
            return None;
        }
        view.last_snapshot = Some(now);
        let picture = crate::snapshot::view_rgb(frame, range, view.roi, view.crop_fraction, cfg.max_side)
            .and_then(|img| crate::snapshot::jpeg(&img, cfg.quality));
        let jpeg = match picture {
            Ok(j) => j,
            Err(e) => {
                warn!("{}: no snapshot: {e}", view.name);
                return Some(Err(e.to_string()));
            }
        };
        if let Some(ring) = &view.ring {
            if let Err(e) = ring.save(result.seq, &result.label, &jpeg) {
                warn!("{e}");
            }
        }
        let len = jpeg.len();
        let name = view.name.clone();
        self.publisher.snapshot(&name, jpeg);
        Some(Ok(len))
    }

    /// Sets view `v`'s next due time after serving the period due at `due`
    /// at `now`.
    fn schedule(&mut self, v: usize, due: Instant, now: Instant) {
        let base = self.views[v].interval;
        let interval = thermal_interval(base, self.opts.thermal.as_ref(), &mut self.hot);
        let view = &mut self.views[v];
        let mut next = due + interval;
        if next < now {
            // Behind (a slow model, several views due at once): count the
            // whole periods missed and start again from now, not in a burst.
            self.stats.skipped_periods += (now - next).as_secs_f64().div_euclid(interval.as_secs_f64()) as u64;
            next = now;
        }
        view.next_due = next;
    }

    /// A replay source moves on once every active view had the frame.
    fn consume(&self, s: usize, gen: u64) {
        let src = &self.sources[s];
        if src.live {
            return;
        }
        let active: Vec<&Running> = src.views.iter().map(|&v| &self.views[v]).filter(|v| !v.paused).collect();
        if !active.is_empty() && active.iter().all(|v| v.last_gen >= gen) {
            src.slot.consume(gen);
        }
    }

    fn refresh_counts(&mut self) {
        let (mut captured, mut dropped, mut errors) = (0, 0, 0);
        for s in &self.sources {
            let c = s.slot.counts();
            (captured, dropped, errors) = (captured + c.captured, dropped + c.dropped, errors + c.errors);
        }
        (self.stats.captured, self.stats.dropped, self.stats.capture_errors) = (captured, dropped, errors);
    }

    /// The views a command names: one, or all when it names none.
    fn targets(&self, req: &Request) -> Result<Vec<usize>, String> {
        match &req.view {
            None => Ok((0..self.views.len()).collect()),
            Some(name) => match self.views.iter().position(|v| &v.name == name) {
                Some(i) => Ok(vec![i]),
                None => {
                    let names: Vec<&str> = self.views.iter().map(|v| v.name.as_str()).collect();
                    Err(format!("no view {name:?}; the views are {}", names.join(", ")))
                }
            },
        }
    }

    fn command(&mut self, req: Request) {
        let targets = match self.targets(&req) {
            Ok(t) => t,
            Err(e) => return self.publisher.reply(&Reply::error(&req, e)),
        };
        info!("command {} for {}", req.action.name(), req.view.as_deref().unwrap_or("every view"));
        let now = Instant::now();
        match &req.action {
            // Replied to with the result.
            Action::Classify => {
                for &v in &targets {
                    let view = Some(self.views[v].name.clone());
                    self.views[v].forced.push(Request { view, ..req.clone() });
                }
                return;
            }
            Action::Pause | Action::Resume => {
                let pause = req.action == Action::Pause;
                for &v in &targets {
                    let view = &mut self.views[v];
                    view.paused = pause;
                    view.next_due = now;
                }
            }
            Action::Set { interval, threshold, teach_class } => {
                if threshold.is_some() {
                    if let Some(v) = targets.iter().find(|&&v| self.views[v].triggers.is_none()) {
                        let name = &self.views[*v].name;
                        let e = format!("view {name:?} has no triggers ([triggers] enabled = false), so no threshold");
                        return self.publisher.reply(&Reply::error(&req, e));
                    }
                }
                for &v in &targets {
                    let view = &mut self.views[v];
                    if let Some(i) = interval {
                        // Counted from the view's last period, at once: a
                        // longer interval also cancels a classification
                        // that was already due under the old one.
                        let last = view.next_due.checked_sub(view.interval);
                        view.interval = Duration::from_secs_f64(*i);
                        view.next_due = last.map_or(now, |t| t + view.interval);
                    }
                    if let (Some(t), Some(tr)) = (threshold, view.triggers.as_mut()) {
                        tr.set_threshold(*t);
                    }
                    if teach_class.is_some() {
                        view.teach_class = teach_class.clone();
                    }
                }
            }
            Action::Status => {
                let views: serde_json::Map<String, serde_json::Value> = self
                    .views
                    .iter()
                    .map(|v| {
                        let health = self.sources[v.source].monitor.state();
                        let mut c = serde_json::to_value(v.control()).unwrap_or_default();
                        c["health"] = health.as_str().into();
                        c["source"] = self.sources[v.source].name.clone().into();
                        (v.name.clone(), c)
                    })
                    .collect();
                return self.publisher.reply(&Reply::ok(&req).with("views", views));
            }
            Action::Snapshot => {
                if let Some(&v) = targets.iter().find(|&&v| self.views[v].snapshots.is_none()) {
                    let name = &self.views[v].name;
                    let e = format!("snapshots are off for view {name:?} ([snapshots] enabled = true turns them on)");
                    return self.publisher.reply(&Reply::error(&req, e));
                }
                for &v in &targets {
                    let view = Some(self.views[v].name.clone());
                    self.views[v].snapshot_asked = true;
                    self.views[v].forced.push(Request { view, ..req.clone() });
                }
                return;
            }
            Action::Teach { .. } => {
                let Some(name) = &req.view else {
                    return self.publisher.reply(&Reply::error(&req, "`teach` needs the view whose picture to learn"));
                };
                let v = targets[0];
                if let Err(why) = &self.views[v].classes {
                    let e = format!("custom classes are not available for view {name:?}: {why}");
                    return self.publisher.reply(&Reply::error(&req, e));
                }
                // Replied to after the next inference, with the example.
                self.views[v].forced.push(req.clone());
                return;
            }
            Action::Forget { class, example } => {
                let v = targets[0];
                let reply = match self.views[v].classes.as_mut() {
                    Err(why) => Reply::error(&req, format!("no custom classes: {why}")),
                    Ok(store) => {
                        let done = match example {
                            Some(id) => store.remove_example(*id).and_then(|owner| {
                                if owner == *class {
                                    Ok(1)
                                } else {
                                    Err(crate::custom::CustomError::NoExample(*id))
                                }
                            }),
                            None => store.remove_class(class),
                        };
                        match done {
                            Ok(n) => Reply::ok(&req).with("removed", n).with("classes", store.list()),
                            Err(e) => Reply::error(&req, e.to_string()),
                        }
                    }
                };
                if reply.ok {
                    self.classes_changed(v);
                }
                return self.publisher.reply(&reply);
            }
            Action::Classes => {
                let classes: serde_json::Map<String, serde_json::Value> = targets
                    .iter()
                    .map(|&v| {
                        let list = match &self.views[v].classes {
                            Ok(store) => serde_json::to_value(store.list()).unwrap_or_default(),
                            Err(why) => serde_json::json!({ "unavailable": why }),
                        };
                        (self.views[v].name.clone(), list)
                    })
                    .collect();
                return self.publisher.reply(&Reply::ok(&req).with("views", classes));
            }
        }
        // The settings changed: keep them, publish them, answer.
        for &v in &targets {
            let c = self.views[v].control();
            self.publisher.control(&self.views[v].name, &c);
            let o = self.overrides.views.entry(self.views[v].name.clone()).or_default();
            o.paused = c.paused;
            o.interval = interval_override(&req.action, o.interval);
            o.threshold = threshold_override(&req.action, o.threshold);
            o.teach_class = c.teach_class.clone();
        }
        if let Some(dir) = &self.opts.state_dir {
            if let Err(e) = self.overrides.save(&Overrides::path(dir)) {
                warn!("{e}");
                return self
                    .publisher
                    .reply(&Reply::error(&req, format!("applied, but not kept across restarts: {e}")));
            }
        }
        let controls: serde_json::Map<String, serde_json::Value> = targets
            .iter()
            .map(|&v| (self.views[v].name.clone(), serde_json::to_value(self.views[v].control()).unwrap_or_default()))
            .collect();
        self.publisher.reply(&Reply::ok(&req).with("views", controls));
    }

    fn stop(&mut self) {
        // A live source may sit in a blocking read; the trigger lets the
        // capture threads leave at their next frame.
        self.shutdown.trigger();
        // A hung camera never returns from its read: leave its thread
        // behind (it ends with the process) rather than miss systemd's stop
        // timeout.
        for (s, thread) in self.sources.iter().zip(self.threads.drain(..)) {
            if s.slot.wait_ended(CAPTURE_STOP) {
                let _ = thread.join();
            } else {
                warn!(
                    "{}: the frame source did not stop within {} s; leaving it behind",
                    s.name,
                    CAPTURE_STOP.as_secs()
                );
            }
        }
        self.refresh_counts();
    }
}

/// Triggers over a view's custom classes; label groups naming a class not
/// taught yet are left out (with a warning) rather than losing the triggers.
pub fn custom_triggers(
    view: &str,
    cfg: &crate::triggers::TriggersConfig,
    labels: &[String],
) -> Option<crate::triggers::Triggers> {
    use crate::triggers::Triggers;
    if labels.is_empty() {
        return None;
    }
    let cfg = crate::triggers::TriggersConfig { builtin_groups: crate::triggers::BuiltinGroups::None, ..cfg.clone() };
    match Triggers::new(&cfg, labels) {
        Ok(t) => Some(t),
        Err(e) => {
            warn!("{view}: triggers over the custom classes without their groups: {e}");
            let bare = crate::triggers::TriggersConfig { groups: vec![], thresholds: Default::default(), ..cfg };
            Triggers::new(&bare, labels).ok()
        }
    }
}

/// The top-k over a view's custom classes (cosine similarity as the score)
/// and the one-hot vector the triggers get.
fn custom_ranking(
    store: &crate::custom::ClassStore,
    embedding: Option<&[f32]>,
    best: Option<&crate::custom::CustomMatch>,
    k: usize,
) -> (Vec<crate::postprocess::Ranked>, Vec<f32>) {
    let labels = store.prototypes().labels();
    let sims = embedding.map(|e| store.prototypes().similarities(e)).unwrap_or_default();
    let mut ranked: Vec<crate::postprocess::Ranked> = sims
        .iter()
        .enumerate()
        .map(|(i, &s)| crate::postprocess::Ranked { index: i, label: labels[i].clone(), score: s })
        .collect();
    ranked.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.index.cmp(&b.index)));
    ranked.truncate(k);
    let mut probs = vec![0.0; labels.len()];
    if let Some(m) = best.filter(|m| !m.unknown) {
        if let Some(i) = labels.iter().position(|l| *l == m.label) {
            probs[i] = 1.0;
        }
    }
    (ranked, probs)
}

fn interval_override(a: &Action, old: Option<f64>) -> Option<f64> {
    match a {
        Action::Set { interval: Some(i), .. } => Some(*i),
        _ => old,
    }
}

fn threshold_override(a: &Action, old: Option<f32>) -> Option<f32> {
    match a {
        Action::Set { threshold: Some(t), .. } => Some(*t),
        _ => old,
    }
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
            warn!("board hot ({reading}): classifying {:.1}x less often", cfg.stretch);
        } else {
            info!("board cooled down ({reading}): back to the configured intervals");
        }
    }
    interval
}

#[cfg(test)]
mod tests;
