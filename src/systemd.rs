//! systemd integration: readiness, status, stopping and a watchdog that is
//! only fed while the pipeline makes progress. A daemon that pings from a
//! timer thread would look alive with a hung camera or a stuck inference;
//! this one stops pinging and systemd restarts it. Every call is a no-op
//! when not started by systemd (no `NOTIFY_SOCKET`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use sd_notify::NotifyState;

use crate::shutdown::Shutdown;

/// Counters the pipeline bumps and the watchdog reads.
#[derive(Debug, Default)]
pub struct Progress {
    frames: AtomicU64,
    results: AtomicU64,
}

impl Progress {
    pub fn frame(&self) {
        self.frames.fetch_add(1, Ordering::Relaxed);
    }
    pub fn result(&self) {
        self.results.fetch_add(1, Ordering::Relaxed);
    }
    /// (frames, results) so far.
    pub fn counts(&self) -> (u64, u64) {
        (self.frames.load(Ordering::Relaxed), self.results.load(Ordering::Relaxed))
    }
}

/// Decides, from successive counter readings, whether the pipeline is alive:
/// both counters must have moved within `stall`.
#[derive(Debug)]
pub struct Liveness {
    stall: Duration,
    last: (u64, u64),
    frame_moved: Instant,
    result_moved: Instant,
}

impl Liveness {
    pub fn new(stall: Duration, counts: (u64, u64), now: Instant) -> Liveness {
        Liveness { stall, last: counts, frame_moved: now, result_moved: now }
    }

    pub fn alive(&mut self, counts: (u64, u64), now: Instant) -> bool {
        if counts.0 != self.last.0 {
            self.frame_moved = now;
        }
        if counts.1 != self.last.1 {
            self.result_moved = now;
        }
        self.last = counts;
        now.duration_since(self.frame_moved) < self.stall && now.duration_since(self.result_moved) < self.stall
    }

    /// Which stage stalled, for the log.
    pub fn stalled_stage(&self, now: Instant) -> &'static str {
        if now.duration_since(self.frame_moved) >= self.stall {
            "no frame captured"
        } else {
            "no result produced"
        }
    }
}

fn notify(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        debug!("sd_notify: {e}");
    }
}

/// The model is loaded and the frame source open.
pub fn ready(status: &str) {
    notify(&[NotifyState::Ready, NotifyState::Status(status)]);
}

pub fn stopping(status: &str) {
    notify(&[NotifyState::Stopping, NotifyState::Status(status)]);
}

/// The watchdog period systemd asked for (`WatchdogSec=`), if any.
pub fn watchdog_period() -> Option<Duration> {
    sd_notify::watchdog_enabled().filter(|d| !d.is_zero())
}

/// Pings systemd's watchdog every quarter `period` while frames and results
/// keep coming. Half the period without progress counts as a stall, so a
/// stall is reported to systemd within one period. `interval` is the
/// longest gap between results in normal operation.
pub fn spawn_watchdog(
    period: Duration,
    interval: Duration,
    progress: Arc<Progress>,
    shutdown: Shutdown,
) -> std::io::Result<JoinHandle<()>> {
    let stall = period / 2;
    if interval >= stall {
        warn!(
            "the classification interval ({:.1} s, stretched when hot) is not well below half of WatchdogSec ({:.1} s): \
             raise WatchdogSec= or systemd may restart a healthy lookout",
            interval.as_secs_f64(),
            period.as_secs_f64()
        );
    }
    info!("systemd watchdog: {:.1} s", period.as_secs_f64());
    std::thread::Builder::new().name("watchdog".into()).spawn(move || {
        let mut live = Liveness::new(stall, progress.counts(), Instant::now());
        // The stall last reported, so each is logged once.
        let mut reported = None;
        while !shutdown.wait_timeout(period / 4) {
            let (frames, results) = progress.counts();
            let now = Instant::now();
            if live.alive((frames, results), now) {
                let status = format!("{results} results from {frames} frames");
                notify(&[NotifyState::Watchdog, NotifyState::Status(&status)]);
                reported = None;
            } else {
                let what = live.stalled_stage(now);
                if reported.replace(what) != Some(what) {
                    warn!("{what} for {:.1} s: no longer feeding the systemd watchdog", stall.as_secs_f64());
                    notify(&[NotifyState::Status(&format!("stalled: {what}"))]);
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn liveness_needs_both_frames_and_results() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut l = Liveness::new(Duration::from_secs(10), (0, 0), t0);
        // (time ms, frames, results, alive)
        let table = [
            (1_000, 0, 0, true),    // grace after start
            (9_999, 0, 0, true),    //
            (10_000, 0, 0, false),  // nothing for 10 s
            (11_000, 5, 1, true),   // moving again
            (20_000, 90, 1, true),  // frames move, results stalled for 9 s
            (21_000, 99, 1, false), // ... and now for 10 s: a hung inference
            (22_000, 100, 2, true),
            (31_999, 100, 9, true),   // results move, frames stalled 9.999 s
            (32_000, 100, 10, false), // a hung camera
        ];
        for (ms, f, r, want) in table {
            assert_eq!(l.alive((f, r), at(ms)), want, "at {ms} ms");
        }
        assert_eq!(l.stalled_stage(at(32_000)), "no frame captured");
    }
}
