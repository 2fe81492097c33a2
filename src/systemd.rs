//! systemd integration: readiness, status, stopping and the watchdog.
//!
//! The watchdog is fed by the daemon's loop itself, on every wake-up, and
//! the loop wakes at least every quarter period whatever its interval: so
//! the pings prove that the loop runs, not that a timer thread does. A hung
//! inference stops them and systemd restarts the service; a camera that
//! delivers nothing does not (that is a health state the loop publishes,
//! and restarting would only reload the model). Every call is a no-op when
//! not started by systemd (no `NOTIFY_SOCKET`).

use std::time::{Duration, Instant};

use log::debug;
use sd_notify::NotifyState;

fn notify(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        debug!("sd_notify: {e}");
    }
}

/// The model is loaded and the frame sources open.
pub fn ready(status: &str) {
    notify(&[NotifyState::Ready, NotifyState::Status(status)]);
}

pub fn stopping(status: &str) {
    notify(&[NotifyState::Stopping, NotifyState::Status(status)]);
}

/// Pings systemd's watchdog from the daemon's loop.
#[derive(Debug)]
pub struct Watchdog {
    period: Duration,
    last: Option<Instant>,
}

impl Watchdog {
    /// The watchdog systemd asked for (`WatchdogSec=`), if any.
    pub fn from_env() -> Option<Watchdog> {
        sd_notify::watchdog_enabled().filter(|d| !d.is_zero()).map(Watchdog::new)
    }

    pub fn new(period: Duration) -> Watchdog {
        Watchdog { period, last: None }
    }

    pub fn period(&self) -> Duration {
        self.period
    }

    /// The longest the loop may sleep: a quarter period, so that one late
    /// wake-up (a slow inference) still leaves time before systemd acts.
    pub fn max_sleep(&self) -> Duration {
        self.period / 4
    }

    /// The loop is alive: ping (at most every eighth of the period; the
    /// loop may wake for every frame) with a status line for `systemctl
    /// status`.
    pub fn pet(&mut self, now: Instant, status: impl FnOnce() -> String) {
        if self.last.is_some_and(|t| now.duration_since(t) < self.period / 8) {
            return;
        }
        self.last = Some(now);
        notify(&[NotifyState::Watchdog, NotifyState::Status(&status())]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pets_are_rate_limited_to_an_eighth_of_the_period() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let sock = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        sock.set_nonblocking(true).unwrap();
        // sd_notify reads NOTIFY_SOCKET at each call; no other test sets it.
        std::env::set_var("NOTIFY_SOCKET", &path);
        let mut w = Watchdog::new(Duration::from_secs(8));
        assert_eq!(w.max_sleep(), Duration::from_secs(2));
        let t0 = Instant::now();
        let mut pings = vec![];
        let mut buf = [0u8; 256];
        for ms in [0u64, 500, 999, 1000, 1500, 2100] {
            w.pet(t0 + Duration::from_millis(ms), || format!("at {ms}"));
            while let Ok(n) = sock.recv(&mut buf) {
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                assert!(text.contains("WATCHDOG=1"), "{text}");
                pings.push(text.lines().find_map(|l| l.strip_prefix("STATUS=")).unwrap_or("").to_owned());
            }
        }
        std::env::remove_var("NOTIFY_SOCKET");
        assert_eq!(pings, vec!["at 0", "at 1000", "at 2100"]);
    }
}
