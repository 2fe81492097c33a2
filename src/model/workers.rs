//! The threads lookout's own ops (int8 layers, fused attention, row-wise
//! norms and quantizers) split their work over, in place of tract's rayon
//! pool.
//!
//! Why not rayon: a transformer layer is a chain of steps of 0.1-1 ms, each
//! split over the threads. Rayon's idle workers go to sleep within
//! microseconds, and waking one (a futex) took 200-440 µs on the 2-vCPU
//! Xeon of BENCHMARKS.md, so the calling thread usually ran every chunk
//! itself and two threads made ViT-L only 1.6x faster than one.
//! onnxruntime's pool spins between steps; so do these helpers, for
//! [`SPIN`] after their last step, then they park on a condition variable.
//! The cost is at most [`SPIN`] of one core per helper after each
//! inference.
//!
//! Work is handed out one part at a time (an atomic counter), so a helper
//! that starts late takes fewer parts instead of holding the step up, and
//! the caller always works too. Which thread computes a part never changes
//! its result.

use std::any::Any;
use std::cell::RefCell;
use std::ops::Range;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::*};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long a helper spins after its last step before it parks.
const SPIN: Duration = Duration::from_millis(5);

/// A buffer's start, for the parts of one step to write without a lock:
/// the closures the workers run must be `Sync`, which `*mut f32` is not.
/// Whoever builds one says why no two parts write the same values.
#[derive(Clone, Copy)]
pub(crate) struct Disjoint(pub(crate) *mut f32);
// SAFETY: sharing the pointer is sound because each part writes only its
// own values (the builder's argument) and every part ends before the step
// returns.
unsafe impl Send for Disjoint {}
unsafe impl Sync for Disjoint {}

impl Disjoint {
    /// `len` values from `at` on.
    ///
    /// # Safety
    /// As `slice::from_raw_parts_mut`, and no other part writes them.
    #[allow(clippy::mut_from_ref)]
    pub(crate) unsafe fn slice(&self, at: usize, len: usize) -> &mut [f32] {
        std::slice::from_raw_parts_mut(self.0.add(at), len)
    }
}

/// Below this many units of work (values, multiply-adds / 64) one thread
/// is faster than splitting.
pub(crate) const PARALLEL_MIN: usize = 1 << 16;

/// Bits of [`Shared::claim`] that hold the next part; the rest hold the step.
const INDEX_BITS: u32 = 24;
const INDEX_MASK: u64 = (1 << INDEX_BITS) - 1;

/// A caller plus `threads - 1` helper threads.
pub(crate) struct Workers {
    shared: Arc<Shared>,
    helpers: Vec<JoinHandle<()>>,
    /// Held by the thread running a step: a second caller (another thread,
    /// or a part that splits its own work) runs its parts alone.
    busy: Mutex<()>,
}

struct Shared {
    /// `step << INDEX_BITS | next part`: a helper claims a part by moving
    /// the index on, only while the step is the one it read the task of.
    claim: AtomicU64,
    /// Parts of the current step not finished yet.
    left: AtomicUsize,
    task: Mutex<Task>,
    sleepers: AtomicUsize,
    wake: Condvar,
    quit: AtomicBool,
    panic: Mutex<Option<Box<dyn Any + Send>>>,
}

#[derive(Clone, Copy)]
struct Task {
    step: u64,
    parts: usize,
    /// The caller's closure, lifetime erased: it lives until `left` is 0,
    /// and a helper calls it only for a part it claimed in this step.
    f: *const (dyn Fn(usize) + Sync),
}

// SAFETY: `f` is Sync and is only called while the caller keeps it alive
// (see `Task::f`).
unsafe impl Send for Task {}

impl Workers {
    /// `threads` of 0 or 1 means the caller alone, with no helper thread.
    /// Helpers are named `{name}{i}`.
    pub(crate) fn new(threads: usize, name: &str) -> Workers {
        let noop: &(dyn Fn(usize) + Sync) = &|_| {};
        let shared = Arc::new(Shared {
            claim: AtomicU64::new(0),
            left: AtomicUsize::new(0),
            task: Mutex::new(Task { step: 0, parts: 0, f: noop as *const _ }),
            sleepers: AtomicUsize::new(0),
            wake: Condvar::new(),
            quit: AtomicBool::new(false),
            panic: Mutex::new(None),
        });
        // Without a thread (a process limit), fewer threads do the work.
        let helpers = (1..threads.max(1))
            .map_while(|i| {
                let shared = shared.clone();
                let spawned = std::thread::Builder::new().name(format!("{name}{i}")).spawn(move || shared.help());
                spawned.map_err(|e| log::warn!("inference runs on {i} of {threads} threads: {e}")).ok()
            })
            .collect();
        Workers { shared, helpers, busy: Mutex::new(()) }
    }

    pub(crate) fn threads(&self) -> usize {
        self.helpers.len() + 1
    }

    /// How many of `items` each thread takes (at least 1) when they cost
    /// `work` units together: all of them when that is too little to be
    /// worth splitting.
    pub(crate) fn share(&self, items: usize, work: usize) -> usize {
        let parts = if work < PARALLEL_MIN { 1 } else { self.threads() };
        items.div_ceil(parts).max(1)
    }

    /// Calls `f` on runs of adjacent indices covering `0..items`, one run
    /// per thread ([`Workers::share`]): neighbours share cache lines and
    /// prefetched streams, which handing out single items loses.
    pub(crate) fn for_ranges(&self, items: usize, work: usize, f: &(dyn Fn(Range<usize>) + Sync)) {
        let per = self.share(items, work);
        self.for_each(items.div_ceil(per), &|i| f(i * per..((i + 1) * per).min(items)));
    }

    /// Calls `f(i)` for every `i` in `0..parts`, on the caller and the
    /// helpers; returns when all are done. A panic in a part is resumed
    /// here, after the others finish.
    pub(crate) fn for_each(&self, parts: usize, f: &(dyn Fn(usize) + Sync)) {
        let guard = match self.busy.try_lock() {
            Ok(guard) if parts > 1 && !self.helpers.is_empty() => guard,
            _ => return (0..parts).for_each(f),
        };
        assert!((parts as u64) < INDEX_MASK, "{parts} parts");
        let s = &*self.shared;
        let step = {
            let mut task = s.task.lock().unwrap_or_else(|e| e.into_inner());
            task.step += 1;
            task.parts = parts;
            // SAFETY (of the erased lifetime): `f` outlives this call, and
            // this call returns only when no part is left to run.
            task.f = unsafe { std::mem::transmute::<&(dyn Fn(usize) + Sync), &'static (dyn Fn(usize) + Sync)>(f) };
            task.step
        };
        s.left.store(parts, SeqCst);
        s.claim.store(step << INDEX_BITS, SeqCst);
        if s.sleepers.load(SeqCst) > 0 {
            let _task = s.task.lock().unwrap_or_else(|e| e.into_inner());
            s.wake.notify_all();
        }
        s.run_parts(step, parts, f);
        while s.left.load(Acquire) != 0 {
            std::hint::spin_loop();
        }
        drop(guard);
        if let Some(payload) = s.panic.lock().unwrap_or_else(|e| e.into_inner()).take() {
            resume_unwind(payload);
        }
    }

    /// Calls `f` on every item, each on whichever thread claims it.
    pub(crate) fn each<T: Send>(&self, items: impl IntoIterator<Item = T>, f: impl Fn(T) + Sync) {
        let slots: Vec<Mutex<Option<T>>> = items.into_iter().map(|t| Mutex::new(Some(t))).collect();
        self.for_each(slots.len(), &|i| {
            if let Some(item) = slots[i].lock().unwrap_or_else(|e| e.into_inner()).take() {
                f(item)
            }
        });
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.shared.quit.store(true, SeqCst);
        drop(self.shared.task.lock().unwrap_or_else(|e| e.into_inner()));
        self.shared.wake.notify_all();
        for helper in self.helpers.drain(..) {
            let _ = helper.join();
        }
    }
}

impl Shared {
    /// Claims and runs parts of `step` until none is left to claim.
    fn run_parts(&self, step: u64, parts: usize, f: &(dyn Fn(usize) + Sync)) {
        let mut c = self.claim.load(Acquire);
        loop {
            let i = (c & INDEX_MASK) as usize;
            if c >> INDEX_BITS != step || i >= parts {
                return;
            }
            match self.claim.compare_exchange_weak(c, c + 1, AcqRel, Acquire) {
                Ok(_) => {
                    if let Err(payload) = catch_unwind(AssertUnwindSafe(|| f(i))) {
                        self.panic.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert(payload);
                    }
                    self.left.fetch_sub(1, Release);
                    c = self.claim.load(Acquire);
                }
                Err(now) => c = now,
            }
        }
    }

    /// A helper's life: spin while steps come, park when they stop.
    fn help(&self) {
        let mut seen = 0;
        loop {
            let mut last = Instant::now();
            let mut spins = 0u32;
            loop {
                if self.quit.load(Relaxed) {
                    return;
                }
                let step = self.claim.load(Acquire) >> INDEX_BITS;
                if step != seen {
                    seen = step;
                    let task = *self.task.lock().unwrap_or_else(|e| e.into_inner());
                    if task.step == step {
                        // SAFETY: parts of `step` are claimed only while
                        // its caller waits in `for_each`, keeping `f` alive.
                        self.run_parts(step, task.parts, unsafe { &*task.f });
                    }
                    last = Instant::now();
                    continue;
                }
                std::hint::spin_loop();
                spins = spins.wrapping_add(1);
                if spins.is_multiple_of(64) && last.elapsed() > SPIN {
                    break;
                }
            }
            let mut task = self.task.lock().unwrap_or_else(|e| e.into_inner());
            // Paired with the caller's store of `claim` then load of
            // `sleepers`: either it sees this helper asleep and notifies
            // under the lock, or this load sees its new step.
            self.sleepers.fetch_add(1, SeqCst);
            while !self.quit.load(SeqCst) && self.claim.load(SeqCst) >> INDEX_BITS == seen {
                task = self.wake.wait(task).unwrap_or_else(|e| e.into_inner());
            }
            self.sleepers.fetch_sub(1, SeqCst);
        }
    }
}

thread_local! {
    static CURRENT: RefCell<Option<Arc<Workers>>> = const { RefCell::new(None) };
}

/// Runs `f` with `workers` as what [`current`] returns on this thread.
pub(crate) fn install<R>(workers: &Arc<Workers>, f: impl FnOnce() -> R) -> R {
    let previous = CURRENT.with_borrow_mut(|c| c.replace(workers.clone()));
    struct Restore(Option<Arc<Workers>>);
    impl Drop for Restore {
        fn drop(&mut self) {
            CURRENT.with_borrow_mut(|c| *c = self.0.take());
        }
    }
    let _restore = Restore(previous);
    f()
}

/// The workers the running model was given ([`install`]), or the caller
/// alone outside a model run.
pub(crate) fn current() -> Arc<Workers> {
    static ALONE: OnceLock<Arc<Workers>> = OnceLock::new();
    CURRENT.with_borrow(|c| c.clone()).unwrap_or_else(|| ALONE.get_or_init(|| Arc::new(Workers::new(1, ""))).clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_part_runs_once_on_every_thread_count() {
        for threads in [1, 2, 3, 5] {
            let workers = Workers::new(threads, "test-w");
            for parts in [0, 1, 2, 7, 1000] {
                let counts: Vec<AtomicUsize> = (0..parts).map(|_| AtomicUsize::new(0)).collect();
                workers.for_each(parts, &|i| {
                    counts[i].fetch_add(1, Relaxed);
                });
                assert!(counts.iter().all(|c| c.load(Relaxed) == 1), "{threads} threads, {parts} parts");
            }
        }
    }

    #[test]
    fn helpers_take_parts_and_wake_after_parking() {
        let workers = Workers::new(2, "test-w");
        let me = std::thread::current().id();
        for round in 0..3 {
            if round > 0 {
                // Long enough for the helper to park.
                std::thread::sleep(SPIN * 3);
            }
            let others = AtomicUsize::new(0);
            // Each part waits until some part ran elsewhere (or 2 s pass),
            // so the caller cannot finish the step alone.
            let t = Instant::now();
            workers.for_each(2, &|_| {
                if std::thread::current().id() != me {
                    others.fetch_add(1, SeqCst);
                }
                while others.load(SeqCst) == 0 && t.elapsed() < Duration::from_secs(2) {
                    std::hint::spin_loop();
                }
            });
            // Both, when the caller lost its core meanwhile (a busy machine).
            assert!(others.load(SeqCst) >= 1, "round {round}: the helper ran no part");
        }
    }

    #[test]
    fn a_panicking_part_panics_the_caller_after_the_rest() {
        let workers = Workers::new(3, "test-w");
        let done = AtomicUsize::new(0);
        let result = catch_unwind(AssertUnwindSafe(|| {
            workers.for_each(50, &|i| {
                assert_ne!(i, 17, "part 17");
                done.fetch_add(1, SeqCst);
            })
        }));
        let message = *result.unwrap_err().downcast::<String>().unwrap();
        assert!(message.contains("part 17"), "{message}");
        assert_eq!(done.load(SeqCst), 49);
        // The workers still work.
        let sum = AtomicUsize::new(0);
        workers.for_each(10, &|i| {
            sum.fetch_add(i, SeqCst);
        });
        assert_eq!(sum.load(SeqCst), 45);
    }

    #[test]
    fn a_nested_split_runs_on_the_calling_thread() {
        let workers = Workers::new(2, "test-w");
        let sum = AtomicUsize::new(0);
        workers.for_each(4, &|i| {
            workers.for_each(3, &|j| {
                sum.fetch_add(i * 3 + j, SeqCst);
            })
        });
        assert_eq!(sum.load(SeqCst), (0..12).sum::<usize>());
    }

    #[test]
    fn each_hands_out_owned_items() {
        let workers = Workers::new(2, "test-w");
        let mut data = vec![0u32; 1000];
        workers.each(data.chunks_mut(7).enumerate(), |(i, chunk)| chunk.iter_mut().for_each(|v| *v = i as u32));
        assert!(data.iter().enumerate().all(|(j, &v)| v == (j / 7) as u32));
    }
}
