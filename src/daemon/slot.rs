//! One source's capture thread and the slot it hands frames over in.
//!
//! The slot holds the newest frame, shared by the views of that source. A
//! live source overwrites it (the newest frame is the one worth
//! classifying, and the camera never waits for the model or the broker); a
//! replay waits until every view has had the frame, so no file is skipped.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use log::{info, warn};

use crate::capture::{CaptureError, FrameSource};
use crate::frame::Frame;
use crate::shutdown::{Bell, Shutdown};

/// How often a blocked replay looks at the shutdown trigger.
const POLL: Duration = Duration::from_millis(50);
/// Arrival times kept: enough for a view to find when the first frame it
/// had not seen came, unless it is far behind (then it is late anyway).
const ARRIVALS: usize = 64;

/// The newest frame and its generation (1 for the first frame).
#[derive(Clone)]
pub struct Latest {
    pub frame: Arc<Frame>,
    pub gen: u64,
    /// When the frame reached the slot.
    pub at: Instant,
}

#[derive(Default)]
struct State {
    latest: Option<Latest>,
    /// A view has looked at `latest` (else overwriting it drops a frame).
    seen: bool,
    /// `latest` was consumed by every view: a replay may put the next one.
    consumed: bool,
    gen: u64,
    /// The loop waits for a frame newer than it has: ring the bell.
    wanted: bool,
    last_put: Option<Instant>,
    /// When the last few generations arrived, oldest first.
    arrivals: VecDeque<(u64, Instant)>,
    ended: bool,
    captured: u64,
    dropped: u64,
    errors: u64,
}

pub struct Slot {
    state: Mutex<State>,
    changed: Condvar,
    bell: Bell,
}

/// Counters the loop copies into its stats.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Counts {
    pub captured: u64,
    pub dropped: u64,
    pub errors: u64,
}

impl Slot {
    pub fn new(bell: Bell) -> Slot {
        Slot { state: Mutex::default(), changed: Condvar::new(), bell }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn put(&self, frame: Frame, live: bool, shutdown: &Shutdown) {
        let mut s = self.lock();
        while !live && s.latest.is_some() && !s.consumed && !shutdown.is_triggered() {
            s = self.changed.wait_timeout(s, POLL).unwrap_or_else(|e| e.into_inner()).0;
        }
        s.captured += 1;
        if s.latest.is_some() && !s.seen {
            s.dropped += 1;
        }
        s.gen += 1;
        let now = Instant::now();
        s.latest = Some(Latest { frame: Arc::new(frame), gen: s.gen, at: now });
        (s.seen, s.consumed, s.last_put) = (false, false, Some(now));
        let gen = s.gen;
        if s.arrivals.len() == ARRIVALS {
            s.arrivals.pop_front();
        }
        s.arrivals.push_back((gen, now));
        if std::mem::take(&mut s.wanted) {
            self.bell.ring();
        }
    }

    /// The newest frame, if newer than generation `after`. Asks for a ring
    /// when none is.
    pub fn newer_than(&self, after: u64) -> Option<Latest> {
        let mut s = self.lock();
        match &s.latest {
            Some(l) if l.gen > after => {
                let l = l.clone();
                s.seen = true;
                Some(l)
            }
            _ => {
                s.wanted = true;
                None
            }
        }
    }

    /// The newest frame whatever its generation (a forced classification).
    pub fn latest(&self) -> Option<Latest> {
        let mut s = self.lock();
        s.seen |= s.latest.is_some();
        s.latest.clone()
    }

    /// The newest generation (0 before the first frame).
    pub fn gen(&self) -> u64 {
        self.lock().gen
    }

    /// Every view is done with generation `gen`: a replay moves on.
    pub fn consume(&self, gen: u64) {
        let mut s = self.lock();
        if s.gen == gen {
            s.consumed = true;
            self.changed.notify_all();
        }
    }

    /// When generation `gen` arrived, if it was recent.
    pub fn arrival(&self, gen: u64) -> Option<Instant> {
        self.lock().arrivals.iter().find(|(g, _)| *g == gen).map(|(_, at)| *at)
    }

    /// When the source last delivered a frame.
    pub fn last_put(&self) -> Option<Instant> {
        self.lock().last_put
    }

    /// The source has ended and every view is done with its last frame.
    pub fn finished(&self) -> bool {
        let s = self.lock();
        s.ended && (s.latest.is_none() || s.consumed)
    }

    pub fn counts(&self) -> Counts {
        let s = self.lock();
        Counts { captured: s.captured, dropped: s.dropped, errors: s.errors }
    }

    fn end(&self) {
        self.lock().ended = true;
        self.changed.notify_all();
        self.bell.ring();
    }

    /// Waits up to `limit` for the capture thread to finish.
    pub fn wait_ended(&self, limit: Duration) -> bool {
        let s = self.lock();
        self.changed.wait_timeout_while(s, limit, |s| !s.ended).unwrap_or_else(|e| e.into_inner()).0.ended
    }
}

/// Starts the capture thread of `source`.
pub fn spawn(mut source: Box<dyn FrameSource>, slot: Arc<Slot>, shutdown: Shutdown) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new().name("capture".into()).spawn(move || {
        let live = source.is_live();
        while !shutdown.is_triggered() {
            match source.next_frame() {
                Ok(Some(frame)) => slot.put(frame, live, &shutdown),
                Ok(None) => {
                    info!("{}: no more frames", source.name());
                    break;
                }
                // The source is waiting (backoff, or its next frame is not
                // due): wait here, where shutdown can cut it short.
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
    })
}
