//! The loop against scripted sources, a brightness "classifier" and a
//! publisher that records everything: the three seams, faked.

use super::*;
use crate::capture::CaptureError;
use crate::command::Control;
use crate::frame::{Frame, PixelFormat};
use crate::model::{ModelError, ModelInfo};
use crate::preprocess::PreprocessParams;
use crate::publish::PublishError;
use crate::shutdown::Bell;
use crate::triggers::{PublishPolicy, Triggers, TriggersConfig};
use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::SystemTime;

/// Replays scripted outcomes: a frame whose left half has one gray level
/// and right half another, or an error. Level 0 is an empty (bad) frame.
struct Scripted {
    script: VecDeque<Result<(u8, u8), &'static str>>,
    live: bool,
    seq: u64,
    /// Between frames, like a camera's frame period.
    pause: Duration,
}

impl FrameSource for Scripted {
    fn next_frame(&mut self) -> Result<Option<Frame>, CaptureError> {
        if !self.pause.is_zero() && self.seq > 0 {
            std::thread::sleep(self.pause);
        }
        let Some(step) = self.script.pop_front() else { return Ok(None) };
        let (left, right) = step.map_err(|r| CaptureError::Read { origin: "script".into(), reason: r.into() })?;
        self.seq += 1;
        let data = if left == 0 {
            vec![]
        } else {
            (0..8 * 4).flat_map(|i| [if i % 8 < 4 { left } else { right }; 3]).collect()
        };
        Ok(Some(Frame {
            seq: self.seq - 1,
            captured_at: SystemTime::now(),
            width: 8,
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

fn script(levels: &[Result<u8, &'static str>], live: bool) -> Scripted {
    let script = levels.iter().map(|l| l.map(|l| (l, l))).collect();
    Scripted { script, live, seq: 0, pause: Duration::ZERO }
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

fn model() -> Brightness {
    let info = ModelInfo {
        name: "b".into(),
        input_size: 2,
        labels: vec!["dark".into(), "bright".into()],
        ..Default::default()
    };
    Brightness { info, input: vec![0.0; 12] }
}

/// Everything the loop hands the publisher, in order.
#[derive(Default)]
struct Record {
    results: Vec<Classification>,
    health: Vec<(String, Health)>,
    controls: Vec<(String, Control)>,
    replies: Vec<Reply>,
    snapshots: Vec<(String, Vec<u8>)>,
}

impl Publisher for Record {
    fn publish(&mut self, r: &Classification) -> Result<(), PublishError> {
        self.results.push(r.clone());
        Ok(())
    }
    fn close(&mut self, _: Duration) {}
    fn health(&mut self, view: &str, h: Health) {
        self.health.push((view.into(), h));
    }
    fn control(&mut self, view: &str, c: &Control) {
        self.controls.push((view.into(), c.clone()));
    }
    fn reply(&mut self, r: &Reply) {
        self.replies.push(r.clone());
    }
    fn snapshot(&mut self, view: &str, jpeg: Vec<u8>) {
        self.snapshots.push((view.into(), jpeg));
    }
}

/// A publisher the test can read while the loop runs on another thread.
#[derive(Clone, Default)]
struct Shared(Arc<Mutex<Record>>);

impl Publisher for Shared {
    fn publish(&mut self, r: &Classification) -> Result<(), PublishError> {
        self.0.lock().unwrap().publish(r)
    }
    fn close(&mut self, _: Duration) {}
    fn health(&mut self, view: &str, h: Health) {
        self.0.lock().unwrap().health(view, h)
    }
    fn control(&mut self, view: &str, c: &Control) {
        self.0.lock().unwrap().control(view, c)
    }
    fn reply(&mut self, r: &Reply) {
        self.0.lock().unwrap().reply(r)
    }
    fn snapshot(&mut self, view: &str, jpeg: Vec<u8>) {
        self.0.lock().unwrap().snapshot(view, jpeg)
    }
}

/// Scripted frames are uniform: the dark check is off unless a test wants it.
fn opts() -> Options {
    Options { top_k: 2, health: no_dark(), ..Options::default() }
}

fn no_dark() -> HealthParams {
    HealthParams { dark_below: 0.0, uniform_below: 0.0, ..HealthParams::default() }
}

fn source(name: &str, frames: Scripted) -> Source {
    Source { name: name.into(), frames: Box::new(frames), color_range: ColorRange::Full }
}

fn view(name: &str, source: &str, interval_ms: u64) -> View {
    View::plain(name, source, &PreprocessParams::default(), Duration::from_millis(interval_ms))
}

/// A view of one half of the frame: `[x, y, w, h]`.
fn region(name: &str, source: &str, roi: [f32; 4]) -> View {
    let p = PreprocessParams { roi: Some(roi), ..PreprocessParams::default() };
    View::plain(name, source, &p, Duration::from_millis(1))
}

fn run_all(opts: Options, sources: Vec<Source>, views: Vec<View>) -> (Stats, Record) {
    let mut out = Record::default();
    let stats = run(opts, sources, views, &mut model(), &mut out, &Inbox::default(), Shutdown::new()).unwrap();
    (stats, out)
}

fn command(inbox: &Inbox, json: &str) {
    assert!(inbox.push(Request::parse(json.as_bytes()).unwrap()));
}

/// Waits until `cond` holds on the record, or fails after 10 s.
fn until(rec: &Shared, what: &str, cond: impl Fn(&Record) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond(&rec.0.lock().unwrap()) {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn a_replay_classifies_every_frame_and_skips_bad_ones() {
    let src = script(&[Ok(10), Err("glitch"), Ok(250), Ok(0), Ok(200)], false);
    let (stats, out) = run_all(opts(), vec![source("cam", src)], vec![view("main", "cam", 1)]);
    let labels: Vec<(u64, u64, &str, &str)> =
        out.results.iter().map(|r| (r.seq, r.frame_seq, r.label.as_str(), r.view.as_str())).collect();
    assert_eq!(labels, vec![(0, 0, "dark", "main"), (1, 1, "bright", "main"), (2, 3, "bright", "main")]);
    assert_eq!((stats.captured, stats.dropped, stats.capture_errors, stats.bad_frames), (4, 0, 1, 1));
    assert!(out.results[1].score > 0.5 && out.results[1].top_k.len() == 2);
    assert_eq!(out.health, vec![("main".to_owned(), Health::Ok)], "health is published once at start");
    let c = Control { paused: false, interval: 0.001, threshold: None };
    assert_eq!(out.controls, vec![("main".to_owned(), c)]);
}

#[test]
fn views_of_one_source_classify_each_frame_once_each_in_their_own_region() {
    // Left half dark, right half bright, then the other way round.
    let frames = Scripted { script: [(10, 250), (250, 10)].map(Ok).into(), live: false, seq: 0, pause: Duration::ZERO };
    let views = vec![region("left", "cam", [0.0, 0.0, 0.5, 1.0]), region("right", "cam", [0.5, 0.0, 0.5, 1.0])];
    let (stats, out) = run_all(opts(), vec![source("cam", frames)], views);
    let mut got: Vec<(u64, &str, &str)> =
        out.results.iter().map(|r| (r.frame_seq, r.view.as_str(), r.label.as_str())).collect();
    got.sort();
    assert_eq!(got, vec![(0, "left", "dark"), (0, "right", "bright"), (1, "left", "bright"), (1, "right", "dark")]);
    assert_eq!((stats.captured, stats.classified), (2, 4));
    let seqs: Vec<u64> = out.results.iter().map(|r| r.seq).collect();
    assert_eq!(seqs, vec![0, 1, 2, 3], "one seq counter for every view");
}

#[test]
fn two_sources_feed_their_own_views() {
    let sources = vec![source("a", script(&[Ok(10), Ok(10)], false)), source("b", script(&[Ok(250)], false))];
    let (stats, out) = run_all(opts(), sources, vec![view("va", "a", 1), view("vb", "b", 1)]);
    let mut got: Vec<(&str, &str)> = out.results.iter().map(|r| (r.view.as_str(), r.label.as_str())).collect();
    got.sort();
    assert_eq!(got, vec![("va", "dark"), ("va", "dark"), ("vb", "bright")]);
    assert_eq!(stats.health.keys().collect::<Vec<_>>(), ["a", "b"]);
}

#[test]
fn a_view_of_a_missing_source_is_an_error() {
    let e = run(
        opts(),
        vec![],
        vec![view("v", "nope", 1)],
        &mut model(),
        &mut Record::default(),
        &Inbox::default(),
        Shutdown::new(),
    );
    let e = e.err().unwrap().to_string();
    assert!(e.contains("view `v` names the source `nope`"), "{e}");
}

#[test]
fn triggers_smooth_and_filter_publishing() {
    let src = script(&[Ok(10), Ok(10), Ok(250), Ok(250), Ok(10)], false);
    let cfg = TriggersConfig { enabled: true, publish: PublishPolicy::Change, heartbeat: 3600.0, ..Default::default() };
    let mut v = view("main", "cam", 1);
    v.triggers = Some(Triggers::new(&cfg, &model().info.labels).unwrap());
    let (stats, out) = run_all(opts(), vec![source("cam", src)], vec![v]);
    let published: Vec<(u64, &str, bool)> = out
        .results
        .iter()
        .map(|r| {
            let t = r.trigger.as_ref().unwrap();
            (r.frame_seq, t.state.as_str(), t.changed)
        })
        .collect();
    assert_eq!(published, vec![(0, "dark", true), (2, "bright", true), (4, "dark", true)]);
    assert_eq!(stats.classified, 5);
    assert_eq!(out.controls[0].1.threshold, Some(0.5), "the control topic carries the threshold");
}

#[test]
fn health_follows_the_frames_goes_out_at_once_and_can_skip_them() {
    let levels = [Ok(100), Ok(100), Ok(100), Ok(10), Ok(200)];
    let health = HealthParams { frozen_frames: 2, dark_below: 50.0, uniform_below: 0.0, ..HealthParams::default() };
    let o = Options { health: health.clone(), ..opts() };
    let (stats, out) = run_all(o, vec![source("cam", script(&levels, false))], vec![view("main", "cam", 1)]);
    let states: Vec<&str> = out.results.iter().map(|r| r.health.as_str()).collect();
    assert_eq!(states, vec!["ok", "ok", "frozen", "dark", "ok"]);
    let changes: Vec<Health> = out.health.iter().map(|(_, h)| *h).collect();
    assert_eq!(changes, vec![Health::Ok, Health::Frozen, Health::Dark, Health::Ok]);
    assert_eq!((stats.health["cam"], stats.unhealthy_skipped), (Health::Ok, 0));

    let o = Options { health: HealthParams { skip_unhealthy: true, ..health }, ..opts() };
    let (stats, out) = run_all(o, vec![source("cam", script(&levels, false))], vec![view("main", "cam", 1)]);
    let frames: Vec<u64> = out.results.iter().map(|r| r.frame_seq).collect();
    assert_eq!(frames, vec![0, 1, 4], "the frozen and the dark frame were not classified");
    assert_eq!(stats.unhealthy_skipped, 2);
}

#[test]
fn a_silent_source_is_reported_stale_at_once_whatever_the_interval_and_recovers() {
    // One frame, then nothing for 0.6 s (a camera unplugged), then frames
    // again; the view classifies once an hour, so only the loop's own
    // wake-ups can notice.
    let frames =
        Scripted { script: [(100, 100); 3].map(Ok).into(), live: true, seq: 0, pause: Duration::from_millis(600) };
    let health = HealthParams { stale_after: Duration::from_millis(200), ..no_dark() };
    let o = Options { health, watchdog: Some(Watchdog::new(Duration::from_millis(400))), ..opts() };
    let rec = Shared::default();
    let (inbox, shutdown) = (Inbox::default(), Shutdown::new());
    let (mut p, stop) = (rec.clone(), shutdown.clone());
    let start = Instant::now();
    let t = std::thread::spawn(move || {
        let v = vec![view("main", "cam", 3_600_000)];
        run(o, vec![source("cam", frames)], v, &mut model(), &mut p, &inbox, stop).unwrap()
    });
    until(&rec, "stale", |r| r.health.iter().any(|(_, h)| *h == Health::Stale));
    let stale_after = start.elapsed();
    until(&rec, "ok again", |r| r.health.last().map(|(_, h)| *h) == Some(Health::Ok) && r.health.len() >= 3);
    shutdown.trigger();
    let stats = t.join().unwrap();
    assert!(stale_after < Duration::from_millis(600 + 200 + 500), "stale after {stale_after:?}");
    let r = rec.0.lock().unwrap();
    assert_eq!(r.results.len(), 1, "one result, then the hour-long interval");
    let changes: Vec<Health> = r.health.iter().map(|(_, h)| *h).collect();
    assert_eq!(&changes[..3], &[Health::Ok, Health::Stale, Health::Ok]);
    assert_eq!(stats.health["cam"], r.health.last().unwrap().1);
}

#[test]
fn shutdown_stops_a_looping_run() {
    let endless = Scripted {
        script: std::iter::repeat_n(Ok((100, 100)), 1_000_000).collect(),
        live: true,
        seq: 0,
        pause: Duration::ZERO,
    };
    let shutdown = Shutdown::new();
    let trigger = shutdown.clone();
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(100));
        trigger.trigger();
    });
    let start = Instant::now();
    let mut out = Record::default();
    let v = vec![view("main", "cam", 3_600_000)];
    let stats =
        run(opts(), vec![source("cam", endless)], v, &mut model(), &mut out, &Inbox::default(), shutdown).unwrap();
    t.join().unwrap();
    assert!(start.elapsed() < Duration::from_secs(10));
    assert_eq!(out.results.len(), 1, "one result, then the hour-long interval is cut short");
    assert!(stats.dropped > 0, "a live source overwrites frames nobody took");
}

#[test]
fn a_slow_loop_says_how_late_it_is_and_counts_skipped_periods() {
    /// Takes 30 ms per inference.
    struct Slow(Brightness);
    impl Classifier for Slow {
        fn info(&self) -> &ModelInfo {
            self.0.info()
        }
        fn input_mut(&mut self) -> &mut [f32] {
            self.0.input_mut()
        }
        fn infer(&mut self) -> Result<Vec<f32>, ModelError> {
            std::thread::sleep(Duration::from_millis(30));
            self.0.infer()
        }
    }
    let frames = Scripted {
        script: std::iter::repeat_n(Ok((100, 100)), 10_000).collect(),
        live: true,
        seq: 0,
        pause: Duration::from_millis(2),
    };
    // Three views due every 10 ms on a 30 ms model: each can only be served
    // every 90 ms.
    let views = vec![view("a", "cam", 10), view("b", "cam", 10), view("c", "cam", 10)];
    let rec = Shared::default();
    let (shutdown, stop) = (Shutdown::new(), Shutdown::new());
    let mut p = rec.clone();
    let s2 = stop.clone();
    let t = std::thread::spawn(move || {
        run(opts(), vec![source("cam", frames)], views, &mut Slow(model()), &mut p, &Inbox::default(), s2).unwrap()
    });
    until(&rec, "12 results", |r| r.results.len() >= 12);
    stop.trigger();
    drop(shutdown);
    let stats = t.join().unwrap();
    let r = rec.0.lock().unwrap();
    let mut served: Vec<&str> = r.results[..9].iter().map(|r| r.view.as_str()).collect();
    served.sort_unstable();
    assert_eq!(served, ["a", "a", "a", "b", "b", "b", "c", "c", "c"], "the views take turns");
    assert!(
        r.results[6..].iter().all(|r| r.late_ms >= 20.0),
        "{:?}",
        r.results.iter().map(|r| r.late_ms).collect::<Vec<_>>()
    );
    assert!(stats.skipped_periods >= 6, "{}", stats.skipped_periods);
}

#[test]
fn commands_classify_pause_set_and_are_kept_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let saved = Overrides::path(dir.path());
    let endless = || Scripted {
        script: std::iter::repeat_n(Ok((100, 100)), 1_000_000).collect(),
        live: true,
        seq: 0,
        pause: Duration::from_millis(2),
    };
    let cfg = TriggersConfig { enabled: true, ..Default::default() };
    let start_daemon = |rec: &Shared, inbox: &Inbox, shutdown: &Shutdown| {
        let mut with_triggers = view("door", "cam", 3_600_000);
        with_triggers.triggers = Some(Triggers::new(&cfg, &model().info.labels).unwrap());
        let views = vec![with_triggers, view("bins", "cam", 3_600_000)];
        let o = Options { state_dir: Some(dir.path().to_owned()), ..opts() };
        let (mut p, inbox, stop, src) = (rec.clone(), inbox.clone(), shutdown.clone(), source("cam", endless()));
        std::thread::spawn(move || run(o, vec![src], views, &mut model(), &mut p, &inbox, stop).unwrap())
    };
    let (rec, inbox, shutdown) = (Shared::default(), Inbox::new(Bell::default()), Shutdown::new());
    let t = start_daemon(&rec, &inbox, &shutdown);
    until(&rec, "the first results", |r| r.results.len() >= 2);

    command(&inbox, r#"{"cmd":"classify","view":"bins","id":"c1"}"#);
    until(&rec, "the classify reply", |r| !r.replies.is_empty());
    {
        let r = rec.0.lock().unwrap();
        let reply = &r.replies[0];
        assert!(reply.ok && reply.id == Some("c1".into()), "{reply:?}");
        let seq = reply.data["seq"].as_u64().unwrap();
        let result = r.results.iter().find(|x| x.seq == seq).expect("the result the reply names was published");
        assert_eq!((result.view.as_str(), result.late_ms), ("bins", 0.0));
    }
    command(&inbox, r#"{"cmd":"set","view":"door","interval":5,"threshold":0.75}"#);
    command(&inbox, r#"{"cmd":"pause","view":"bins"}"#);
    command(&inbox, r#"{"cmd":"set","view":"bins","threshold":0.5}"#);
    command(&inbox, r#"{"cmd":"pause","view":"attic"}"#);
    command(&inbox, r#"{"cmd":"status","id":9}"#);
    until(&rec, "five more replies", |r| r.replies.len() >= 6);
    shutdown.trigger();
    t.join().unwrap();
    {
        let r = rec.0.lock().unwrap();
        let replies: Vec<(bool, Option<&str>)> = r.replies[1..].iter().map(|x| (x.ok, x.error.as_deref())).collect();
        assert_eq!(replies[..2], [(true, None), (true, None)]);
        assert!(replies[2].1.unwrap().contains("view \"bins\" has no triggers"), "{replies:?}");
        assert!(replies[3].1.unwrap().contains("no view \"attic\"; the views are door, bins"), "{replies:?}");
        let status = &r.replies[5].data["views"];
        assert_eq!(status["door"]["interval"], 5.0);
        assert_eq!(status["door"]["threshold"], 0.75);
        assert_eq!(status["bins"]["paused"], true);
        assert_eq!(status["bins"]["health"], "ok");
        let last_control = r.controls.iter().rev().find(|(v, _)| v == "bins").unwrap();
        assert!(last_control.1.paused, "the control topic follows");
    }
    assert_eq!(
        Overrides::load(&saved).unwrap().views["door"],
        ViewOverride { paused: false, interval: Some(5.0), threshold: Some(0.75) }
    );

    // A restart starts from the saved settings: the paused view stays quiet.
    let (rec, inbox, shutdown) = (Shared::default(), Inbox::new(Bell::default()), Shutdown::new());
    let t = start_daemon(&rec, &inbox, &shutdown);
    until(&rec, "a result", |r| !r.results.is_empty());
    std::thread::sleep(Duration::from_millis(100));
    shutdown.trigger();
    t.join().unwrap();
    let r = rec.0.lock().unwrap();
    assert!(r.results.iter().all(|x| x.view == "door"), "the paused view classified");
    let door = &r.controls.iter().find(|(v, _)| v == "door").unwrap().1;
    assert_eq!((door.interval, door.threshold, door.paused), (5.0, Some(0.75), false));
}

#[test]
fn an_injected_hang_stops_the_loop_until_shutdown() {
    let frames = Scripted {
        script: std::iter::repeat_n(Ok((100, 100)), 1000).collect(),
        live: true,
        seq: 0,
        pause: Duration::from_millis(2),
    };
    let rec = Shared::default();
    let shutdown = Shutdown::new();
    let (mut p, stop) = (rec.clone(), shutdown.clone());
    let o = Options { fault: Some(Fault::HangInferenceAfter(3)), ..opts() };
    let t = std::thread::spawn(move || {
        run(o, vec![source("cam", frames)], vec![view("main", "cam", 1)], &mut model(), &mut p, &Inbox::default(), stop)
            .unwrap()
    });
    until(&rec, "two results", |r| r.results.len() >= 2);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(rec.0.lock().unwrap().results.len(), 2, "the third inference hangs");
    assert!(!t.is_finished());
    shutdown.trigger();
    t.join().unwrap();
    assert_eq!(Fault::parse("hang-inference-after:3"), Ok(Fault::HangInferenceAfter(3)));
    assert!(Fault::parse("hang-inference-after:0").unwrap_err().contains("LOOKOUT_FAULT"));
}

#[test]
fn snapshots_follow_state_changes_within_their_rate_limit_and_are_kept() {
    let dir = tempfile::tempdir().unwrap();
    let levels = [Ok(10), Ok(10), Ok(250), Ok(250), Ok(10), Ok(250)];
    let mut v = view("main", "cam", 1);
    v.config.snapshots = Some(crate::snapshot::SnapshotConfig {
        enabled: true,
        max_side: 64,
        quality: 80,
        min_interval: Duration::ZERO,
        keep: 2,
    });
    let o = Options { state_dir: Some(dir.path().to_owned()), ..opts() };
    let mut out = Record::default();
    run(
        o,
        vec![source("cam", script(&levels, false))],
        vec![v],
        &mut model(),
        &mut out,
        &Inbox::default(),
        Shutdown::new(),
    )
    .unwrap();
    // The first result, then each change of label: frames 0, 2, 4, 5.
    assert_eq!(out.snapshots.len(), 4);
    let grays: Vec<u8> = out
        .snapshots
        .iter()
        .map(|(_, jpeg)| image::load_from_memory(jpeg).unwrap().into_rgb8().get_pixel(2, 2).0[0])
        .collect();
    assert!(grays[0] < 30 && grays[1] > 230 && grays[2] < 30 && grays[3] > 230, "{grays:?}");
    let kept = std::fs::read_dir(dir.path().join("snapshots/main")).unwrap().count();
    assert_eq!(kept, 2, "the ring keeps two");

    // With a rate limit of an hour only the first goes out.
    let mut v = view("main", "cam", 1);
    v.config.snapshots = Some(crate::snapshot::SnapshotConfig {
        min_interval: Duration::from_secs(3600),
        keep: 0,
        ..Default::default()
    });
    let (_, out) = run_all(opts(), vec![source("cam", script(&levels, false))], vec![v]);
    assert_eq!(out.snapshots.len(), 1);
}
