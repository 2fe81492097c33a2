//! Waking things up. [`Shutdown`] is a cloneable stop trigger: signal
//! handlers, tests and the daemon's own end-of-input stop the pipeline
//! through it, and every wait in the pipeline wakes on it, so a stop never
//! waits out a full interval. [`Bell`] wakes the daemon's loop, which sleeps
//! until its next view is due unless a frame, a command or a stop arrives.

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

#[derive(Clone, Default)]
pub struct Shutdown {
    inner: Arc<(Mutex<State>, Condvar)>,
}

#[derive(Default)]
struct State {
    stopped: bool,
    /// Rung on trigger, so loops that sleep on a bell notice the stop.
    bells: Vec<Bell>,
}

impl Shutdown {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn trigger(&self) {
        let (lock, cvar) = &*self.inner;
        let bells = {
            let mut s = lock.lock().unwrap_or_else(|e| e.into_inner());
            s.stopped = true;
            s.bells.clone()
        };
        cvar.notify_all();
        bells.iter().for_each(Bell::ring);
    }

    pub fn is_triggered(&self) -> bool {
        self.inner.0.lock().unwrap_or_else(|e| e.into_inner()).stopped
    }

    /// Rings `bell` when the trigger fires (at once if it already has).
    pub fn ring_on_trigger(&self, bell: &Bell) {
        let mut s = self.inner.0.lock().unwrap_or_else(|e| e.into_inner());
        if s.stopped {
            bell.ring();
        }
        s.bells.push(bell.clone());
    }

    /// Sleeps for `timeout` or until triggered; returns true if triggered.
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let (lock, cvar) = &*self.inner;
        let mut s = lock.lock().unwrap_or_else(|e| e.into_inner());
        while !s.stopped {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            s = cvar.wait_timeout(s, deadline - now).unwrap_or_else(|e| e.into_inner()).0;
        }
        s.stopped
    }
}

/// A wake-up counter: [`Bell::ring`] from any thread, [`Bell::wait`] in one.
/// Counting rings (instead of a flag) means a ring between two waits is
/// never lost.
#[derive(Clone, Default)]
pub struct Bell(Arc<(Mutex<u64>, Condvar)>);

impl Bell {
    pub fn ring(&self) {
        *self.0 .0.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        self.0 .1.notify_all();
    }

    /// The number of rings so far.
    pub fn rings(&self) -> u64 {
        *self.0 .0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits until the count differs from `seen` or `timeout` passes;
    /// returns the count.
    pub fn wait(&self, seen: u64, timeout: Duration) -> u64 {
        let (lock, cvar) = &*self.0;
        let guard = lock.lock().unwrap_or_else(|e| e.into_inner());
        *cvar.wait_timeout_while(guard, timeout, |n| *n == seen).unwrap_or_else(|e| e.into_inner()).0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trigger_wakes_a_waiter_early() {
        let s = Shutdown::new();
        let t = s.clone();
        let start = Instant::now();
        let h = std::thread::spawn(move || t.wait_timeout(Duration::from_secs(30)));
        std::thread::sleep(Duration::from_millis(20));
        s.trigger();
        assert!(h.join().unwrap());
        assert!(start.elapsed() < Duration::from_secs(10));
        assert!(!Shutdown::new().wait_timeout(Duration::from_millis(1)));
    }

    #[test]
    fn a_bell_keeps_rings_between_waits_and_the_trigger_rings_it() {
        let bell = Bell::default();
        let seen = bell.rings();
        bell.ring();
        let start = Instant::now();
        assert_eq!(bell.wait(seen, Duration::from_secs(30)), seen + 1, "a ring before the wait counts");
        assert!(start.elapsed() < Duration::from_secs(10));
        assert_eq!(bell.wait(seen + 1, Duration::from_millis(10)), seen + 1, "no ring: the timeout");

        let s = Shutdown::new();
        s.ring_on_trigger(&bell);
        let (b, t) = (bell.clone(), s.clone());
        let h = std::thread::spawn(move || b.wait(seen + 1, Duration::from_secs(30)));
        std::thread::sleep(Duration::from_millis(20));
        t.trigger();
        assert_eq!(h.join().unwrap(), seen + 2);
        let late = Bell::default();
        s.ring_on_trigger(&late);
        assert_eq!(late.rings(), 1, "attached after the trigger: rung at once");
    }
}
