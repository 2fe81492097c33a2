//! Keeps a live source alive: a worker (a camera thread, a child process)
//! feeds frames into a one-frame [`Feed`]; the [`Supervised`] source waits
//! on it with a timeout and, after an error, a timeout or an exit, drops the
//! worker and reconnects with exponential backoff.
//!
//! The backoff never sleeps here: a source that must wait returns
//! [`CaptureError::NotYet`] and the daemon's capture loop waits, so shutdown
//! interrupts the wait and tests drive time through an injected [`Clock`].

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use log::info;

use super::{CaptureError, FrameSource};
use crate::frame::Frame;

/// Doubling delays between reconnects, reset by a frame that arrives.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Backoff {
        Backoff { min, max: max.max(min), next: min }
    }

    /// The delay before the next attempt; doubles for the one after.
    pub fn fail(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        d
    }

    pub fn reset(&mut self) {
        self.next = self.min;
    }
}

/// Time as the supervisor sees it; tests replace it.
pub trait Clock: Send {
    fn now(&self) -> Instant;
}

pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

#[derive(Default)]
struct FeedState {
    frame: Option<Frame>,
    /// Why the worker stopped; it sends nothing after this.
    failed: Option<CaptureError>,
}

/// The newest frame of one connection, shared by its worker and the reader.
/// Older untaken frames are overwritten: only the newest one matters.
#[derive(Clone, Default)]
pub struct Feed(Arc<(Mutex<FeedState>, Condvar)>);

impl Feed {
    fn lock(&self) -> std::sync::MutexGuard<'_, FeedState> {
        self.0 .0.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn push(&self, frame: Frame) {
        self.lock().frame = Some(frame);
        self.0 .1.notify_all();
    }

    /// Ends the connection; the first reason wins.
    pub fn fail(&self, e: CaptureError) {
        self.lock().failed.get_or_insert(e);
        self.0 .1.notify_all();
    }

    /// True once the reader gave up on this connection: workers check it
    /// between frames and leave.
    pub fn is_closed(&self) -> bool {
        self.lock().failed.is_some()
    }

    fn wait(&self, timeout: Duration) -> Result<Frame, Option<CaptureError>> {
        let deadline = Instant::now() + timeout;
        let mut s = self.lock();
        loop {
            if let Some(f) = s.frame.take() {
                return Ok(f);
            }
            if let Some(e) = s.failed.take() {
                return Err(Some(e));
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(None);
            }
            s = self.0 .1.wait_timeout(s, deadline - now).unwrap_or_else(|e| e.into_inner()).0;
        }
    }
}

/// Starts workers. `connect` returns once the worker runs (or failed to
/// start); the worker then pushes into the feed until it fails or sees the
/// feed closed.
pub trait Connector: Send {
    fn connect(&mut self, feed: Feed) -> Result<(), CaptureError>;
    fn name(&self) -> String;
}

/// A [`FrameSource`] over a [`Connector`], reconnecting with backoff.
pub struct Supervised<C: Connector> {
    connector: C,
    /// The current connection's feed; `None` while disconnected.
    feed: Option<Feed>,
    /// No frame within this time means the worker hangs (nokhwa's `frame()`
    /// has no timeout): the connection is dropped and reopened.
    frame_timeout: Duration,
    backoff: Backoff,
    clock: Box<dyn Clock>,
    retry_at: Option<Instant>,
    seq: u64,
    /// Connection attempts so far, for tests and the end-of-run log.
    pub attempts: u64,
}

impl<C: Connector> Supervised<C> {
    pub fn new(connector: C, frame_timeout: Duration, backoff: Backoff) -> Self {
        Self::with_clock(connector, frame_timeout, backoff, Box::new(SystemClock))
    }

    pub fn with_clock(connector: C, frame_timeout: Duration, backoff: Backoff, clock: Box<dyn Clock>) -> Self {
        Supervised { connector, feed: None, frame_timeout, backoff, clock, retry_at: None, seq: 0, attempts: 0 }
    }

    fn disconnect(&mut self, e: CaptureError) -> CaptureError {
        if let Some(feed) = self.feed.take() {
            // Tells a worker that is still running to stop.
            feed.fail(CaptureError::Read { origin: self.connector.name(), reason: "closed".into() });
        }
        let delay = self.backoff.fail();
        self.retry_at = Some(self.clock.now() + delay);
        info!("{}: reconnecting in {:.1} s", self.connector.name(), delay.as_secs_f64());
        e
    }
}

impl<C: Connector> FrameSource for Supervised<C> {
    fn next_frame(&mut self) -> Result<Option<Frame>, CaptureError> {
        if self.feed.is_none() {
            if let Some(at) = self.retry_at {
                let now = self.clock.now();
                if now < at {
                    return Err(CaptureError::NotYet { wait: at - now });
                }
            }
            self.attempts += 1;
            let feed = Feed::default();
            if let Err(e) = self.connector.connect(feed.clone()) {
                return Err(self.disconnect(e));
            }
            self.feed = Some(feed);
        }
        let feed = self.feed.as_ref().expect("connected above");
        match feed.wait(self.frame_timeout) {
            Ok(mut frame) => {
                self.backoff.reset();
                frame.seq = self.seq;
                self.seq += 1;
                Ok(Some(frame))
            }
            Err(Some(e)) => Err(self.disconnect(e)),
            Err(None) => {
                let e = CaptureError::Stalled {
                    source_name: self.connector.name(),
                    secs: self.frame_timeout.as_secs_f64(),
                };
                Err(self.disconnect(e))
            }
        }
    }

    fn is_live(&self) -> bool {
        true
    }

    fn name(&self) -> String {
        self.connector.name()
    }
}

impl<C: Connector> Drop for Supervised<C> {
    fn drop(&mut self) {
        if let Some(feed) = self.feed.take() {
            feed.fail(CaptureError::Read { origin: self.connector.name(), reason: "closed".into() });
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::frame::PixelFormat;
    use std::collections::VecDeque;
    use std::time::SystemTime;

    /// Time that only moves when the test says so.
    #[derive(Clone)]
    pub struct FakeClock(pub Arc<Mutex<Instant>>);

    impl FakeClock {
        pub fn new() -> FakeClock {
            FakeClock(Arc::new(Mutex::new(Instant::now())))
        }
        pub fn advance(&self, d: Duration) {
            *self.0.lock().unwrap() += d;
        }
    }

    impl Clock for FakeClock {
        fn now(&self) -> Instant {
            *self.0.lock().unwrap()
        }
    }

    pub fn gray(level: u8) -> Frame {
        Frame {
            seq: 99,
            captured_at: SystemTime::now(),
            width: 4,
            height: 2,
            format: PixelFormat::Gray8,
            data: vec![level; 8],
            origin: "script".into(),
        }
    }

    /// What one connection does, scripted.
    #[derive(Clone)]
    enum Conn {
        /// `connect` itself fails (busy, permission denied, not found).
        Refused,
        /// Delivers these frames, then fails (unplugged).
        Frames(Vec<u8>),
        /// Connects, then never delivers (a hung `frame()`).
        Hang,
    }

    struct Script {
        conns: VecDeque<Conn>,
        /// Feeds of hung connections, to check they were told to stop.
        hung: Arc<Mutex<Vec<Feed>>>,
    }

    impl Connector for Script {
        fn connect(&mut self, feed: Feed) -> Result<(), CaptureError> {
            let name = self.name();
            match self.conns.pop_front().unwrap_or(Conn::Refused) {
                Conn::Refused => Err(CaptureError::Open { source_name: name, reason: "device busy".into() }),
                Conn::Frames(levels) => {
                    std::thread::spawn(move || {
                        for l in levels {
                            feed.push(gray(l));
                            // Waits until the reader took it, so no frame is overwritten.
                            while feed.0 .0.lock().unwrap().frame.is_some() {
                                std::thread::yield_now();
                            }
                        }
                        feed.fail(CaptureError::Read { origin: name, reason: "unplugged".into() });
                    });
                    Ok(())
                }
                Conn::Hang => {
                    self.hung.lock().unwrap().push(feed);
                    Ok(())
                }
            }
        }
        fn name(&self) -> String {
            "script".into()
        }
    }

    /// Drives the source like the capture loop does, but advances the fake
    /// clock instead of sleeping. Returns what each call produced.
    fn drive(src: &mut Supervised<Script>, clock: &FakeClock, calls: usize) -> Vec<String> {
        (0..calls)
            .map(|_| match src.next_frame() {
                Ok(Some(f)) => format!("frame {} level {}", f.seq, f.data[0]),
                Ok(None) => "end".into(),
                Err(CaptureError::NotYet { wait }) => {
                    clock.advance(wait);
                    format!("wait {}", wait.as_secs())
                }
                Err(e) => format!("error {e}"),
            })
            .collect()
    }

    #[test]
    fn errors_timeouts_and_recovery_follow_a_doubling_backoff() {
        let clock = FakeClock::new();
        let hung = Arc::new(Mutex::new(vec![]));
        let conns = vec![
            Conn::Refused,
            Conn::Refused,
            Conn::Hang,
            Conn::Frames(vec![10, 20]),
            Conn::Refused,
            Conn::Frames(vec![30]),
        ];
        let script = Script { conns: conns.into(), hung: hung.clone() };
        let mut src = Supervised::with_clock(
            script,
            Duration::from_millis(30),
            Backoff::new(Duration::from_secs(1), Duration::from_secs(4)),
            Box::new(clock.clone()),
        );
        let got = drive(&mut src, &clock, 14);
        let want = [
            "error script: cannot open: device busy",
            "wait 1",
            "error script: cannot open: device busy",
            "wait 2",
            "error script: no frame for 0.03 s (the device hangs); reopening it",
            "wait 4",
            "frame 0 level 10",
            "frame 1 level 20",
            // A frame reset the backoff to its minimum.
            "error script: cannot read frame: unplugged",
            "wait 1",
            "error script: cannot open: device busy",
            "wait 2",
            "frame 2 level 30",
            "error script: cannot read frame: unplugged",
        ];
        assert_eq!(got, want);
        assert_eq!(src.attempts, 6, "one attempt per scripted connection, no retries in between");
        assert!(hung.lock().unwrap()[0].is_closed(), "the hung worker was told to stop");
    }

    #[test]
    fn the_backoff_is_capped_and_never_zero() {
        let clock = FakeClock::new();
        let script = Script { conns: VecDeque::new(), hung: Arc::default() };
        let mut src = Supervised::with_clock(
            script,
            Duration::from_millis(10),
            Backoff::new(Duration::from_millis(500), Duration::from_secs(8)),
            Box::new(clock.clone()),
        );
        // An hour of a camera that is always busy.
        let mut waited = Duration::ZERO;
        let mut waits = vec![];
        while waited < Duration::from_secs(3600) {
            if let Err(CaptureError::NotYet { wait }) = src.next_frame() {
                assert!(!wait.is_zero());
                waits.push(wait.as_millis());
                clock.advance(wait);
                waited += wait;
            }
        }
        assert_eq!(&waits[..6], &[500, 1000, 2000, 4000, 8000, 8000]);
        assert!(src.attempts <= 3600 / 8 + 6, "{} attempts in an hour", src.attempts);
    }
}
