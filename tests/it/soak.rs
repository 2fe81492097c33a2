//! Soak: lookout classifies replayed frames as fast as it can against a
//! real Mosquitto that is stopped and restarted every few thousand results,
//! while the test samples its memory and open file descriptors. Passes
//! when every result arrived and neither grew after the warm-up.
//!
//! The broker stops with SIGTERM, which saves what it holds: a SIGKILLed
//! broker also loses the messages it acknowledged to lookout but had not
//! yet passed on, which no client can prevent (tests/mqtt.rs kills one with
//! SIGKILL at a slower rate). At full speed lookout classifies faster than
//! an outbox replay drains after a restart, so results can still be
//! waiting in the outbox when the test stops it; a second run on the same
//! state folder must deliver them (the outbox's promise: kept until the
//! broker acknowledged them, across restarts of lookout too).
//!
//! The full run (20,000 results, figures in BENCHMARKS.md), against a
//! release build of lookout (the harness itself may stay a debug build):
//!   cargo build --release
//!   LOOKOUT_BIN=target/release/lookout cargo test --test it soak:: -- --ignored --nocapture
//! SOAK_RESULTS and SOAK_RESTART_EVERY change its size. The short version
//! below runs with the other tests.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::common::*;

const TOPIC: &str = "lookout/soak/main/result";

/// What /proc says about the daemon at one moment.
#[derive(Debug, Clone, Copy)]
struct Sample {
    /// Distinct results the subscriber had received.
    results: usize,
    rss_kb: u64,
    hwm_kb: u64,
    fds: usize,
}

fn sample(pid: u32, results: usize) -> Option<Sample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb = |key: &str| -> Option<u64> {
        status.lines().find(|l| l.starts_with(key))?.split_whitespace().nth(1)?.parse().ok()
    };
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count();
    Some(Sample { results, rss_kb: kb("VmRSS:")?, hwm_kb: kb("VmHWM:")?, fds })
}

struct Report {
    results: u64,
    restarts: usize,
    elapsed: Duration,
    /// At the end of the warm-up and at the end of the run.
    warm: Sample,
    end: Sample,
    /// The most descriptors open after the warm-up.
    fds_after: usize,
    /// Results that arrived more than once (resent after an outage).
    duplicates: usize,
    /// Results still in the outbox when the first run stopped, delivered by
    /// a second run.
    waiting: usize,
}

/// Runs the daemon until `n` results arrived, restarting the broker after
/// every `restart_every`, and checks that every seq arrived.
fn soak(dir: &Path, n: usize, restart_every: usize) -> Report {
    eprintln!("soak: {:?}, {n} results, broker restarted every {restart_every}", lookout().get_program());
    let mut broker = Broker::start_persistent();
    let sub = Listener::persistent(broker.port, TOPIC, "soak-subscriber");
    // No interval to speak of and no fps: the replay runs at the speed of
    // inference. Commits every 0.2 s keep the outbox close behind.
    let mqtt =
        "keep_alive = 5\nconnect_timeout = 2\nreconnect_min = 0.1\nreconnect_max = 0.5\noutbox_commit_interval = 0.2";
    let text = digits_loop_config("soak", "state", broker.port, mqtt, 0.000001);
    let cfg = write_config(dir, &text);
    // No line per result: at this speed logging would be most of the work.
    let mut lookout = Daemon::start(&cfg, &[("RUST_LOG", "info,lookout::daemon=warn")]);
    let pid = lookout.pid();

    let warm_up = n / 5;
    let started = Instant::now();
    let mut seen = BTreeSet::new();
    let mut copies = 0usize;
    let mut samples = vec![];
    let mut warm = None;
    let mut restarts = 0;
    while seen.len() < n {
        assert!(started.elapsed() < Duration::from_secs(3600), "soak took over an hour:\n{}", lookout.log());
        assert!(lookout.is_running(), "lookout stopped:\n{}", lookout.log());
        // Back as soon as a restart is due: at the speed of a small model
        // a whole short soak fits in one 0.2 s wait.
        let due = (restarts + 1) * restart_every;
        for (_, v, _) in sub.until(Duration::from_millis(200), |got| seen.len() + got.len() >= due) {
            copies += 1;
            seen.insert(v["seq"].as_u64().expect("a result has a seq"));
        }
        if let Some(s) = sample(pid, seen.len()) {
            samples.push(s);
            if warm.is_none() && s.results >= warm_up {
                warm = Some(s);
            }
        }
        if seen.len() >= (restarts + 1) * restart_every && seen.len() < n {
            broker.stop();
            broker.restart();
            restarts += 1;
        }
    }
    let end = sample(pid, seen.len()).expect("lookout still running");
    let elapsed = started.elapsed();
    assert_eq!(lookout.terminate(Duration::from_secs(60)), Some(0), "{}", lookout.log());

    // Everything lookout classified before it stopped arrives: what was
    // still in the outbox with the next run.
    let last = last_seq(&lookout.log()).unwrap_or_else(|| panic!("no summary line:\n{}", lookout.log()));
    let waiting = outbox_left(&lookout.log());
    let mut second = (waiting > 0).then(|| Daemon::start(&cfg, &[("RUST_LOG", "info,lookout::daemon=warn")]));
    let deadline = Instant::now() + Duration::from_secs(120);
    while (0..=last).any(|s| !seen.contains(&s)) && Instant::now() < deadline {
        for (_, v, _) in sub.until(Duration::from_millis(200), |_| false) {
            copies += 1;
            seen.insert(v["seq"].as_u64().unwrap());
        }
    }
    if let Some(second) = second.as_mut() {
        assert_eq!(second.terminate(Duration::from_secs(60)), Some(0), "{}", second.log());
    }
    let missing: Vec<u64> = (0..=last).filter(|s| !seen.contains(s)).collect();
    assert!(
        missing.is_empty(),
        "{} of 0..={last} missing, first {:?}:\n{}",
        missing.len(),
        &missing[..missing.len().min(20)],
        lookout.log()
    );

    let warm = warm.expect("a sample after the warm-up");
    let fds_after = samples.iter().filter(|s| s.results >= warm_up).map(|s| s.fds).max().unwrap_or(end.fds);
    Report { results: last + 1, restarts, elapsed, warm, end, fds_after, duplicates: copies - seen.len(), waiting }
}

/// Results the daemon left in its outbox, from its `N results stay in the
/// outbox for the next run` line (0 without one).
fn outbox_left(log: &str) -> usize {
    let line = log.lines().find(|l| l.contains("stay in the outbox for the next run"));
    line.and_then(|l| l.split(" results stay").next()?.rsplit(' ').next()?.parse().ok()).unwrap_or(0)
}

/// The seq of the last result, from `stopped: N frames captured, M classified`.
fn last_seq(log: &str) -> Option<u64> {
    let line = log.lines().find(|l| l.contains("stopped:"))?;
    let classified: u64 = line.split(" classified").next()?.rsplit(' ').next()?.parse().ok()?;
    classified.checked_sub(1)
}

fn check(r: &Report) -> (f64, f64) {
    let growth = |a: u64, b: u64| (b as f64 / a as f64 - 1.0) * 100.0;
    let (rss, hwm) = (growth(r.warm.rss_kb, r.end.rss_kb), growth(r.warm.hwm_kb, r.end.hwm_kb));
    eprintln!(
        "soak: {} results in {:.1} s ({:.0}/s), {} broker restarts, {} duplicates, {} delivered by a second run\n\
         after warm-up ({} results): VmRSS {} kB, VmHWM {} kB, {} fds\n\
         at the end: VmRSS {} kB ({rss:+.2} %), VmHWM {} kB ({hwm:+.2} %), {} fds (at most {} after warm-up)",
        r.results,
        r.elapsed.as_secs_f64(),
        r.results as f64 / r.elapsed.as_secs_f64(),
        r.restarts,
        r.duplicates,
        r.waiting,
        r.warm.results,
        r.warm.rss_kb,
        r.warm.hwm_kb,
        r.warm.fds,
        r.end.rss_kb,
        r.end.hwm_kb,
        r.end.fds,
        r.fds_after,
    );
    assert!(r.fds_after <= r.warm.fds + 1, "descriptors grew: {} -> {}", r.warm.fds, r.fds_after);
    (rss, hwm)
}

#[test]
fn short_soak_delivers_every_result_across_a_broker_restart() {
    let d = tempfile::tempdir().unwrap();
    let r = soak(d.path(), 200, 100);
    assert_eq!(r.restarts, 1);
    check(&r);
}

#[test]
#[ignore = "minutes; run against a release build (see the module doc)"]
fn soak_20000_results() {
    let env = |k: &str, default: usize| std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(default);
    let d = tempfile::tempdir().unwrap();
    let r = soak(d.path(), env("SOAK_RESULTS", 20_000), env("SOAK_RESTART_EVERY", 4_000));
    let (rss, hwm) = check(&r);
    assert!(hwm < 2.0, "peak RSS grew {hwm:.2} % after the warm-up");
    assert!(rss < 2.0, "RSS grew {rss:.2} % after the warm-up");
}
