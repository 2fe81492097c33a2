//! The bad-input matrix of issue #10 through the built binary, for the
//! cases tests/cli.rs and tests/mqtt.rs do not cover: out-of-range config
//! values and missing paths, broken and mismatched models, bad frames in a
//! running daemon, a refused and a silent broker, and a full disk under the
//! outbox. Each case asserts the exit code and the one error line, or for
//! faults at run time the log line, that the daemon kept running and that
//! no result was lost.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::common::*;
use serde_json::Value;

const MIN: Duration = Duration::from_secs(60);

fn samples() -> PathBuf {
    root().join("models/digits/samples")
}

fn models() -> PathBuf {
    root().join("models/digits")
}

/// Exit code and stderr of the binary with `args`.
fn run(args: &[&std::ffi::OsStr]) -> (i32, String) {
    let mut cmd = lookout();
    cmd.args(args);
    let out = run_with_timeout(cmd, MIN * 2);
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// The one `lookout: error:` line of a failed run.
fn error_line(stderr: &str) -> String {
    let lines: Vec<&str> = stderr.lines().filter(|l| l.starts_with("lookout: error:")).collect();
    assert_eq!(lines.len(), 1, "exactly one error line in: {stderr}");
    lines[0].to_owned()
}

#[test]
fn out_of_range_values_and_missing_paths_exit_78_naming_file_and_key() {
    let d = tempfile::tempdir().unwrap();
    let good = digits_config(&samples(), "digits-int8.onnx", 1883, "");
    let model = |k: &str| good.replace("[model]\n", &format!("[model]\n{k}\n"));
    let mqtt = |k: &str| good.replace("[mqtt]\n", &format!("[mqtt]\n{k}\n"));
    let source = |k: &str| good.replace("kind = \"files\"\n", &format!("kind = \"files\"\n{k}\n"));
    let cases: Vec<(String, &str)> = vec![
        (model("threads = 257"), "`model.threads` is 257"),
        (model("top_k = 0"), "`model.top_k` is 0"),
        (model("crop_fraction = 1.5"), "`model.crop_fraction` is 1.5"),
        (model("input_size = 4"), "`model.input_size` is 4"),
        (model("std = [0.5, 0.0, 0.5]"), "`model.std`"),
        (model("labels = \"no-such-labels.txt\""), "no-such-labels.txt does not exist"),
        (model("manifest = \"no-such.manifest.json\""), "no-such.manifest.json does not exist"),
        (good.replace(&samples().display().to_string(), "/no/such/frames"), "/no/such/frames does not exist"),
        (source("fps = -1.0"), "`source.fps` is -1"),
        (good.replace("interval = 0.05", "interval = -1.0"), "`schedule.interval` is -1"),
        (good.replace("interval = 0.05", "interval = nan"), "`schedule.interval` is NaN"),
        (good.replace("port = 1883", "port = 0"), "`mqtt.port` is 0"),
        (good.replace("port = 1883", "port = 70000"), "`port`"),
        (mqtt("qos = 3"), "`mqtt.qos` is 3"),
        (mqtt("outbox_max_rows = 0"), "mqtt.outbox_max_rows"),
        (good.replace("reconnect_min = 0.1", "reconnect_min = -0.5"), "mqtt.reconnect_min"),
        (mqtt("keep_alive = -5.0"), "mqtt.keep_alive"),
        (format!("{good}[triggers]\nthreshold = -0.1\n"), "`triggers.threshold` is -0.1"),
        (format!("{good}[triggers]\nthresholds = {{ three = -1.0 }}\n"), "`triggers.thresholds` is -1"),
        (format!("{good}[triggers]\nmargin = 1.5\n"), "`triggers.margin` is 1.5"),
        (format!("{good}[triggers]\nvotes = 0\n"), "triggers.votes"),
        (format!("{good}[health]\ndark_below = 300.0\n"), "`health.dark_below` is 300"),
        (format!("{good}[health]\nstale_after = -1.0\n"), "`health.stale_after` is -1"),
    ];
    for (text, expect) in &cases {
        let cfg = write_config(d.path(), text);
        let (code, err) = run(&["check-config".as_ref(), cfg.as_os_str()]);
        assert_eq!(code, 78, "{expect}: {err}");
        let line = error_line(&err);
        assert!(line.contains(&cfg.display().to_string()) && line.contains(expect), "wanted {expect:?} in: {line}");
    }

    // threads = 0 is in range: it means one thread per core.
    let cfg = write_config(d.path(), &model("threads = 0"));
    let mut cmd = lookout();
    cmd.arg("check-config").arg(&cfg);
    let out = run_with_timeout(cmd, MIN);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("threads = 0"));
}

#[test]
fn a_state_dir_that_is_a_file_exits_78_naming_it() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("state-file"), "").unwrap();
    let text = digits_config(&samples(), "digits-int8.onnx", free_port(), "")
        .replace("state_dir = \"state\"", "state_dir = \"state-file\"");
    let cfg = write_config(d.path(), &text);
    let (code, err) = run(&["run".as_ref(), "--config".as_ref(), cfg.as_os_str()]);
    assert_eq!(code, 78, "{err}");
    let line = error_line(&err);
    assert!(line.contains("state-file") && line.contains("device.state_dir"), "{line}");
}

/// `lookout classify --model <model>` of one sample with the digits labels:
/// (exit code, the error line).
fn classify_with(dir: &Path, model: &Path) -> (i32, String) {
    let text = digits_config(&samples(), "digits-int8.onnx", 1883, "")
        .replace("[model]\n", &format!("[model]\nlabels = \"{}\"\n", models().join("labels.txt").display()));
    let cfg = write_config(dir, &text);
    let img = samples().join("3-three.jpg");
    let (code, err) = run(&[
        "classify".as_ref(),
        "--config".as_ref(),
        cfg.as_os_str(),
        "--model".as_ref(),
        model.as_os_str(),
        img.as_os_str(),
    ]);
    let line = if code == 0 { String::new() } else { error_line(&err) };
    (code, line)
}

#[test]
fn broken_and_mismatched_models_exit_79_and_say_what_is_wrong() {
    let d = tempfile::tempdir().unwrap();
    let good = std::fs::read(models().join("digits-int8.onnx")).unwrap();

    let (code, line) = classify_with(d.path(), &d.path().join("absent.onnx"));
    assert_eq!(code, 78, "{line}");
    assert!(line.contains("absent.onnx does not exist"), "{line}");

    let empty = d.path().join("empty.onnx");
    std::fs::write(&empty, b"").unwrap();
    let (code, line) = classify_with(d.path(), &empty);
    assert_eq!(code, 79, "{line}");
    assert!(line.contains("empty.onnx: cannot load the model") && line.contains("ONNX"), "{line}");

    // The first half of the real model: a protobuf cut mid-tensor.
    let truncated = d.path().join("truncated.onnx");
    std::fs::write(&truncated, &good[..good.len() / 2]).unwrap();
    let (code, line) = classify_with(d.path(), &truncated);
    assert_eq!(code, 79, "{line}");
    assert!(line.contains("truncated.onnx: cannot load the model") && line.contains("ONNX"), "{line}");

    // The same cut file with the real model's manifest beside it: the
    // checksum names the mismatch, whatever parsing it said.
    std::fs::copy(models().join("digits-int8.manifest.json"), d.path().join("truncated.manifest.json")).unwrap();
    std::fs::copy(models().join("labels.txt"), d.path().join("labels.txt")).unwrap();
    let (code, line) = classify_with(d.path(), &truncated);
    assert_eq!(code, 79, "{line}");
    assert!(line.contains("truncated.onnx: sha256 is") && line.contains("its manifest says"), "{line}");

    // Valid ONNX files whose input is not a [1, 3, H, W] image
    // (tools/make_bad_models.py).
    let bad = root().join("tests/fixtures/bad-models");
    let (code, line) = classify_with(d.path(), &bad.join("rank2.onnx"));
    assert_eq!(code, 79, "{line}");
    assert!(line.contains("rank2.onnx: input has rank 2") && line.contains("[1, 3, S, S]"), "{line}");
    let (code, line) = classify_with(d.path(), &bad.join("gray.onnx"));
    assert_eq!(code, 79, "{line}");
    assert!(line.contains("gray.onnx: input has 1 channels"), "{line}");
    // Invalid ONNX that tract panics on (a string tensor in raw bytes): a
    // model error like the others, not a crash with a backtrace.
    let (code, line) = classify_with(d.path(), &bad.join("string-raw.onnx"));
    assert_eq!(code, 79, "{line}");
    assert!(line.contains("string-raw.onnx: cannot load the model: tract failed on it"), "{line}");
}

// ---- faults while the daemon runs -------------------------------------------

fn result_topic() -> &'static str {
    "lookout/e2e/main/result"
}

/// Result seqs received, duplicates dropped.
fn received(msgs: &[(String, Value, bool)]) -> BTreeSet<u64> {
    msgs.iter().filter(|(t, _, _)| t == result_topic()).filter_map(|(_, v, _)| v["seq"].as_u64()).collect()
}

/// Waits until every seq in 0..=last arrived, then asserts it.
fn assert_all_arrive(sub: &Listener, mut msgs: Vec<(String, Value, bool)>, last: u64, log: &str) {
    let seen = received(&msgs);
    msgs.extend(sub.until(MIN, |m| {
        let mut all = seen.clone();
        all.extend(received(m));
        (0..=last).all(|s| all.contains(&s))
    }));
    let got = received(&msgs);
    let missing: Vec<u64> = (0..=last).filter(|s| !got.contains(s)).collect();
    assert!(missing.is_empty(), "missing seqs {missing:?} of 0..={last}; log:\n{log}");
}

/// The digits samples replayed in a loop, ten a second, with fast reconnects
/// and commits.
fn looping_config(dir: &Path, port: u16) -> PathBuf {
    let text = digits_config(&samples(), "digits-int8.onnx", port, "")
        .replace("kind = \"files\"\n", "kind = \"files\"\nloop = true\n")
        .replace("interval = 0.05", "interval = 0.1")
        .replace("[mqtt]\n", "[mqtt]\nconnect_timeout = 1\noutbox_commit_interval = 0.2\n");
    write_config(dir, &text)
}

/// A JPEG whose header claims 16000x16000 pixels on 700 bytes of data.
fn claiming_16000(good: &[u8]) -> Vec<u8> {
    let mut data = good.to_vec();
    let sof = data.windows(2).position(|w| w == [0xFF, 0xC0]).unwrap();
    data[sof + 5..sof + 9].copy_from_slice(&[0x3E, 0x80, 0x3E, 0x80]);
    data
}

#[test]
fn bad_frames_in_run_are_named_and_skipped_and_every_good_result_arrives() {
    let broker = Broker::start();
    let sub = Listener::new(broker.port, result_topic());
    let d = tempfile::tempdir().unwrap();
    let frames = d.path().join("frames");
    std::fs::create_dir(&frames).unwrap();
    for e in std::fs::read_dir(samples()).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|e| e == "jpg") {
            std::fs::copy(&p, frames.join(p.file_name().unwrap())).unwrap();
        }
    }
    let three = std::fs::read(samples().join("3-three.jpg")).unwrap();
    std::fs::write(frames.join("3b-truncated.jpg"), &three[..three.len() / 2]).unwrap();
    std::fs::write(frames.join("5b-empty.jpg"), b"").unwrap();
    std::fs::write(frames.join("7b-huge.jpg"), claiming_16000(&three)).unwrap();
    let cfg = write_config(d.path(), &digits_config(&frames, "digits-int8.onnx", broker.port, ""));

    let mut cmd = lookout();
    cmd.arg("run").arg("--config").arg(&cfg);
    let out = run_with_timeout(cmd, MIN * 2);
    let log = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{log}");
    // Frames are numbered in name order: 0-zero .. 3-three are 0..3.
    for (name, frame, why) in [
        ("3b-truncated.jpg", 4, "truncated JPEG"),
        ("5b-empty.jpg", 7, "empty"),
        ("7b-huge.jpg", 10, "declares 16000x16000 pixels"),
    ] {
        let line = log.lines().find(|l| l.contains(&format!("{name}: frame {frame} skipped"))).unwrap_or_default();
        assert!(line.contains(why), "no {why:?} for {name} in:\n{log}");
    }
    assert!(log.contains("13 frames captured, 10 classified") && log.contains("3 bad"), "{log}");

    let expected: std::collections::BTreeMap<String, String> =
        serde_json::from_str(&std::fs::read_to_string(samples().join("expected.json")).unwrap()).unwrap();
    let msgs = sub.until(MIN, |m| received(m).len() >= 10);
    let results: Vec<&Value> = msgs.iter().filter(|(t, _, _)| t == result_topic()).map(|(_, v, _)| v).collect();
    assert_eq!(results.len(), 10, "{log}");
    for (i, (r, label)) in results.iter().zip(expected.values()).enumerate() {
        assert_eq!((r["seq"].as_u64(), r["label"].as_str()), (Some(i as u64), Some(label.as_str())), "{r}");
    }
}

#[test]
fn a_refused_connection_keeps_results_in_the_outbox_until_a_broker_appears() {
    let mut broker = Broker::start_persistent();
    let sub = Listener::persistent(broker.port, result_topic(), "test-refused");
    broker.stop();
    let d = tempfile::tempdir().unwrap();
    let mut lookout = Daemon::start(&looping_config(d.path(), broker.port), &[]);
    lookout.wait_results(15, MIN * 2);
    assert!(lookout.log().contains("connection refused (is the broker running"), "{}", lookout.log());
    assert!(lookout.is_running());

    broker.restart();
    lookout.wait_for("connected to", MIN);
    let n = lookout.seqs().len();
    lookout.wait_results(n + 3, MIN);
    assert_eq!(lookout.terminate(MIN), Some(0), "{}", lookout.log());
    let last = *lookout.seqs().last().unwrap();
    assert_all_arrive(&sub, vec![], last, &lookout.log());
}

#[test]
fn a_broker_that_accepts_and_never_answers_is_retried_with_backoff_and_results_arrive_later() {
    let mut broker = Broker::start_persistent();
    let sub = Listener::persistent(broker.port, result_topic(), "test-silent");
    broker.stop();
    let silent = Silent::bind(broker.port);
    let d = tempfile::tempdir().unwrap();
    let cfg = looping_config(d.path(), broker.port);
    let text = std::fs::read_to_string(&cfg).unwrap().replace("reconnect_max = 0.5", "reconnect_max = 2");
    std::fs::write(&cfg, text.replace("reconnect_min = 0.1", "reconnect_min = 0.5")).unwrap();
    // Debug level: every failed attempt is logged, not only the first.
    let mut lookout = Daemon::start(&cfg, &[("RUST_LOG", "info,lookout::publish=debug")]);
    lookout.wait_for("no answer within mqtt.connect_timeout", MIN * 2);
    let started = std::time::Instant::now();
    lookout.wait_results(40, MIN);
    assert!(lookout.is_running());
    assert!(silent.accepted() >= 2, "lookout (and the test's subscriber) connected");
    // No reconnect storm (rumqttc alone retries as fast as it is polled):
    // each attempt costs the 1 s timeout plus its backoff.
    let attempts = lookout.log().matches("no answer within mqtt.connect_timeout").count();
    let most = started.elapsed().as_secs() as usize + 2;
    assert!((2..=most).contains(&attempts), "{attempts} attempts, {most} at most:\n{}", lookout.log());

    // The silent listener goes, the real broker comes back on its port.
    silent.close();
    broker.restart();
    lookout.wait_for("connected to", MIN);
    let n = lookout.seqs().len();
    lookout.wait_results(n + 3, MIN);
    assert_eq!(lookout.terminate(MIN), Some(0), "{}", lookout.log());
    let last = *lookout.seqs().last().unwrap();
    assert_all_arrive(&sub, vec![], last, &lookout.log());
}

/// A TCP listener that accepts every connection and never says a word (no
/// CONNACK), like a wedged broker or a port forwarder to nowhere.
struct Silent {
    stop: Arc<AtomicBool>,
    accepted: Arc<AtomicUsize>,
    thread: std::thread::JoinHandle<()>,
}

impl Silent {
    fn bind(port: u16) -> Silent {
        let listener = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
        listener.set_nonblocking(true).unwrap();
        let (stop, accepted) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicUsize::new(0)));
        let (halt, count) = (stop.clone(), accepted.clone());
        let thread = std::thread::spawn(move || {
            let mut open = vec![];
            while !halt.load(Ordering::SeqCst) {
                if let Ok((s, _)) = listener.accept() {
                    open.push(s);
                    count.fetch_add(1, Ordering::SeqCst);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        Silent { stop, accepted, thread }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Closes the listener and every connection it accepted.
    fn close(self) {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.join().unwrap();
    }
}

/// `lookout run` whose file size limit the test can lower and raise
/// (RLIMIT_FSIZE, as `ulimit -f` does): over the limit every write fails
/// with EFBIG, as on a full disk. SIGXFSZ is ignored (set by the shell,
/// kept across exec) so the write fails instead of killing the process. The
/// log goes through a pipe into the test, which has no limit.
struct Limited {
    child: std::process::Child,
    log: Arc<std::sync::Mutex<String>>,
}

impl Limited {
    fn start(config: &Path) -> Limited {
        use std::io::BufRead;
        let mut child = std::process::Command::new("sh")
            .arg("-c")
            .arg("trap '' XFSZ; exec \"$0\" \"$@\"")
            .arg(env!("CARGO_BIN_EXE_lookout"))
            .arg("run")
            .arg("--config")
            .arg(config)
            .env("RUST_LOG", "info")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let log = Arc::new(std::sync::Mutex::new(String::new()));
        let (stderr, sink) = (child.stderr.take().unwrap(), log.clone());
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push_str(&(line + "\n"));
            }
        });
        Limited { child, log }
    }

    /// Sets the soft file size limit (the hard one stays unlimited, so it
    /// can be raised again without privileges).
    fn limit_file_size(&self, bytes: Option<u64>) {
        let soft = bytes.map_or("unlimited".into(), |b| b.to_string());
        let status = std::process::Command::new("prlimit")
            .arg(format!("--pid={}", self.child.id()))
            .arg(format!("--fsize={soft}:unlimited"))
            .status()
            .expect("prlimit (util-linux)");
        assert!(status.success());
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    fn seqs(&self) -> Vec<u64> {
        self.log()
            .lines()
            .filter_map(|l| l.split("lookout::daemon] result ").nth(1))
            .filter_map(|r| r.split(' ').next()?.parse().ok())
            .collect()
    }

    fn wait(&self, what: &str, limit: Duration, done: impl Fn(&str) -> bool) {
        let deadline = std::time::Instant::now() + limit;
        while !done(&self.log()) {
            assert!(std::time::Instant::now() < deadline, "no {what} within {limit:?}:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn wait_results(&self, n: usize) {
        self.wait(&format!("{n} results"), MIN, |_| self.seqs().len() >= n);
    }

    fn terminate(&mut self) -> Option<i32> {
        let _ = std::process::Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        let deadline = std::time::Instant::now() + MIN;
        while std::time::Instant::now() < deadline {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        None
    }
}

impl Drop for Limited {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_full_disk_under_the_outbox_is_reported_and_delivery_resumes_when_space_returns() {
    let broker = Broker::start();
    let sub = Listener::new(broker.port, result_topic());
    let d = tempfile::tempdir().unwrap();
    let mut lookout = Limited::start(&looping_config(d.path(), broker.port));
    let msgs = sub.until(MIN * 2, |m| received(m).len() >= 5);
    assert!(received(&msgs).len() >= 5, "{}", lookout.log());

    // No file may grow past its first byte: the outbox's next commit fails.
    lookout.limit_file_size(Some(1));
    lookout.wait("the outbox reported full", MIN, |l| l.contains("outbox") && l.contains("cannot be written"));
    let full_at = lookout.seqs().len();
    lookout.wait_results(full_at + 20);
    assert_eq!(lookout.log().matches("cannot be written").count(), 1, "reported once, not per commit");
    let line = lookout.log().lines().find(|l| l.contains("cannot be written")).unwrap().to_owned();
    let outbox = d.path().join("state/outbox.sqlite");
    assert!(line.contains(&outbox.display().to_string()) && line.contains("free space"), "{line}");
    assert!(lookout.child.try_wait().unwrap().is_none(), "still running:\n{}", lookout.log());

    lookout.limit_file_size(None);
    lookout.wait("the outbox written again", MIN, |l| l.contains("written again"));
    let n = lookout.seqs().len();
    lookout.wait_results(n + 3);
    assert_eq!(lookout.terminate(), Some(0), "{}", lookout.log());
    let last = *lookout.seqs().last().unwrap();
    assert_all_arrive(&sub, msgs, last, &lookout.log());
}
