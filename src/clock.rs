//! Whether a result's wall-clock time can be trusted, and what it needs so
//! that it can be fixed later.
//!
//! Boards without a real-time clock (Raspberry Pi) restart after a power cut
//! at the last saved time (fake-hwclock, timesyncd's clock file) or 1970,
//! and keep it until NTP answers, which in the field may take days. So every
//! result carries a [`ClockStamp`]: whether the kernel considered the clock
//! synchronised, the boot id, and the time since boot (CLOCK_BOOTTIME, which
//! no clock step moves). [`settle`] turns that into a corrected
//! `captured_at` once the clock is synchronised, just before a stored result
//! leaves the outbox; docs/offline.md says what consumers see.
//!
//! Where the facts come from, and what the shipped unit allows:
//! - Synchronised: `adjtimex(2)` with no mode bits only reads (TIME_ERROR or
//!   STA_UNSYNC: not synchronised). systemd's `ProtectClock=yes` and
//!   `SystemCallFilter=~@privileged` deny the whole `@clock` set, reads
//!   included (EPERM; systemd's `apply_protect_clock`), so under lookout's
//!   unit the answer comes from systemd-timesyncd instead: it creates
//!   `/run/systemd/timesync/synchronized` at its first synchronisation of a
//!   boot (and its runtime folder when it starts). Neither available (chrony
//!   or ntpd under the unit): unknown, `synced: null`.
//! - Boot id: `/proc/sys/kernel/random/boot_id` (the unit must not set
//!   `ProcSubset=pid`, which hides it, and `/proc/cpuinfo` with it). None
//!   readable: `boot_id: null`, and nothing stored is ever corrected.

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// What a result says about the clock at the moment its frame was taken.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClockStamp {
    /// The kernel (or timesyncd) said the wall clock was synchronised;
    /// `None` where neither can be asked.
    pub synced: Option<bool>,
    /// The kernel's boot id: `monotonic_s` only means something within one
    /// boot.
    pub boot_id: Option<String>,
    /// Seconds since boot (CLOCK_BOOTTIME) at capture; clock steps do not
    /// move it.
    pub monotonic_s: f64,
}

/// One look at the clocks.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    pub wall: SystemTime,
    pub since_boot: Duration,
    pub synced: Option<bool>,
    pub boot_id: Option<String>,
}

/// The seam for tests: the system, or a scripted clock.
pub trait Clock: Send + Sync {
    fn read(&self) -> Reading;
}

/// The system's clocks, as the module doc describes.
pub struct SystemClock {
    boot_id: Option<String>,
    timesyncd: PathBuf,
}

/// Where systemd-timesyncd keeps its runtime state.
const TIMESYNCD: &str = "/run/systemd/timesync";
/// The kernel's boot id.
const BOOT_ID: &str = "/proc/sys/kernel/random/boot_id";

impl SystemClock {
    fn new() -> SystemClock {
        let boot_id = std::fs::read_to_string(BOOT_ID).ok().map(|s| s.trim().to_owned()).filter(|s| !s.is_empty());
        SystemClock { boot_id, timesyncd: TIMESYNCD.into() }
    }

    fn synced(&self) -> Option<bool> {
        let kernel = kernel_synced();
        if kernel == Some(true) || self.timesyncd.join("synchronized").exists() {
            return Some(true);
        }
        if kernel.is_some() || self.timesyncd.is_dir() {
            return Some(false);
        }
        None
    }
}

/// The system's clocks now.
pub fn now() -> Reading {
    system().read()
}

/// The system clock, read once per process for its boot id.
pub fn system() -> &'static SystemClock {
    static CLOCK: OnceLock<SystemClock> = OnceLock::new();
    CLOCK.get_or_init(SystemClock::new)
}

impl Clock for SystemClock {
    fn read(&self) -> Reading {
        Reading {
            wall: SystemTime::now(),
            since_boot: boottime(),
            synced: self.synced(),
            boot_id: self.boot_id.clone(),
        }
    }
}

/// `None` when the call is refused (seccomp under the unit).
fn kernel_synced() -> Option<bool> {
    // SAFETY: modes = 0 only reads; the struct is plain data.
    let mut tx: libc::timex = unsafe { std::mem::zeroed() };
    let state = unsafe { libc::adjtimex(&mut tx) };
    (state >= 0).then_some(state != libc::TIME_ERROR && tx.status & libc::STA_UNSYNC == 0)
}

fn boottime() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid clock id and a valid pointer; CLOCK_BOOTTIME exists
    // since Linux 2.6.39.
    if unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) } != 0 {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Stamps frames. Kept by the loop because it remembers the offset between
/// wall clock and time since boot at the previous stamp: a change of that
/// offset is a clock step.
pub struct Stamper {
    clock: &'static dyn Clock,
    /// Wall clock minus time since boot, and time since boot, at the
    /// previous stamp (seconds).
    last: Option<(f64, f64)>,
}

/// How far the wall clock may move against the time since boot between two
/// stamps before it counts as a step: NTP slews at most 500 ppm.
const SLEW: f64 = 0.0005;

impl Stamper {
    pub fn new(clock: &'static dyn Clock) -> Stamper {
        Stamper { clock, last: None }
    }

    pub fn system() -> Stamper {
        Stamper::new(system())
    }

    /// The stamp of a frame taken at `captured_at` (wall clock), and the
    /// `captured_at` to publish: the frame's own, unless the clock stepped
    /// since the previous stamp or the frame's age by the wall clock cannot
    /// be (negative, or over twice the time since the previous stamp: a
    /// frame waits in the slot for one classification at most, a replayed
    /// file for two). Such a `captured_at` predates a step while the
    /// synchronised flag is read after it, so the frame is taken as
    /// captured now (off by at most its age, under a frame period for a
    /// live camera) rather than published with a pre-step time marked good.
    pub fn stamp(&mut self, captured_at: SystemTime) -> (SystemTime, ClockStamp) {
        let now = self.clock.read();
        let since_boot = now.since_boot.as_secs_f64();
        let offset = seconds(now.wall) - since_boot;
        let stepped = self.last.is_some_and(|(o, t)| (offset - o).abs() > 1.0 + SLEW * (since_boot - t).abs());
        let longest = self.last.map(|(_, t)| 2.0 * (since_boot - t) + 1.0);
        self.last = Some((offset, since_boot));
        let age = now.wall.duration_since(captured_at).ok().map(|d| d.as_secs_f64());
        let (captured_at, age) = match age {
            Some(a) if !stepped && longest.is_none_or(|l| a <= l) => (captured_at, a.min(since_boot)),
            _ => (now.wall, 0.0),
        };
        let stamp = ClockStamp { synced: now.synced, boot_id: now.boot_id, monotonic_s: round_ms(since_boot - age) };
        (captured_at, stamp)
    }
}

fn seconds(t: SystemTime) -> f64 {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => d.as_secs_f64(),
        Err(e) => -e.duration().as_secs_f64(),
    }
}

fn round_ms(s: f64) -> f64 {
    (s * 1000.0).round() / 1000.0
}

/// What [`settle`] decided for a stored result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    /// Synchronised now, same boot: `captured_at` recomputed from the time
    /// since boot.
    Corrected,
    /// Taken unsynchronised in an earlier boot (or with no boot id): its
    /// time cannot be fixed.
    Uncorrectable,
}

/// Fixes a stored result's time just before it leaves, given the clock now:
/// a result taken with an unsynchronised clock gets `captured_at` = now -
/// (time since boot now - its time since boot) once the clock is
/// synchronised in the same boot, and `"clock": {"corrected": true}`;
/// one from an earlier boot gets `"corrected": false`. `None` when the
/// payload stays as it is (synchronised when taken, still waiting for a
/// synchronised clock, already settled, or not a result with a stamp).
pub fn settle(payload: &[u8], now: &Reading) -> Option<(Vec<u8>, Settled)> {
    // Most rows were taken synchronised: skip parsing them.
    if !contains(payload, br#""synced":false"#) {
        return None;
    }
    let Ok(Value::Object(mut map)) = serde_json::from_slice::<Value>(payload) else { return None };
    let clock = map.get_mut("clock")?.as_object_mut()?;
    if clock.get("synced")? != &Value::Bool(false) || clock.contains_key("corrected") {
        return None;
    }
    let boot = clock.get("boot_id").and_then(Value::as_str);
    let same_boot = boot.is_some() && boot == now.boot_id.as_deref();
    let other_boot = boot.is_some() && now.boot_id.is_some() && !same_boot;
    let settled = match (now.synced == Some(true), same_boot) {
        (true, true) => {
            let taken = clock.get("monotonic_s")?.as_f64()?;
            let back = Duration::from_secs_f64((now.since_boot.as_secs_f64() - taken).max(0.0));
            let at = now.wall.checked_sub(back)?;
            let text = time::OffsetDateTime::from(at).format(&time::format_description::well_known::Rfc3339).ok()?;
            clock.insert("corrected".into(), Value::Bool(true));
            map.insert("captured_at".into(), Value::String(text));
            Settled::Corrected
        }
        (true, false) => {
            clock.insert("corrected".into(), Value::Bool(false));
            Settled::Uncorrectable
        }
        (false, _) if other_boot => {
            clock.insert("corrected".into(), Value::Bool(false));
            Settled::Uncorrectable
        }
        (false, _) => return None,
    };
    Some((serde_json::to_vec(&map).ok()?, settled))
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// A clock the test moves by hand.
    struct Scripted(Mutex<Reading>);

    impl Clock for Scripted {
        fn read(&self) -> Reading {
            self.0.lock().unwrap().clone()
        }
    }

    fn at(unix: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(unix)
    }

    fn reading(wall: u64, since_boot: f64, synced: bool, boot: &str) -> Reading {
        Reading {
            wall: at(wall),
            since_boot: Duration::from_secs_f64(since_boot),
            synced: Some(synced),
            boot_id: Some(boot.into()),
        }
    }

    fn leak(r: Reading) -> &'static Scripted {
        Box::leak(Box::new(Scripted(Mutex::new(r))))
    }

    /// 2026-12-01T00:00:00Z
    const DEC1: u64 = 1_796_083_200;

    #[test]
    fn a_stamp_carries_the_time_since_boot_of_the_capture() {
        // A board that came up in 1970 (no RTC), 100 s after boot.
        let clock = leak(reading(100, 100.0, false, "b1"));
        let mut s = Stamper::new(clock);
        let (t, st) = s.stamp(at(98));
        assert_eq!(t, at(98), "the frame keeps its own time");
        assert_eq!(st, ClockStamp { synced: Some(false), boot_id: Some("b1".into()), monotonic_s: 98.0 });
    }

    #[test]
    fn a_step_between_capture_and_stamp_does_not_mark_a_pre_step_time_as_good() {
        let clock = leak(reading(100, 100.0, false, "b1"));
        let mut s = Stamper::new(clock);
        s.stamp(at(99));
        // NTP answers and steps the clock by 56 years, between the capture
        // (still at 1970 time) and the stamp.
        *clock.0.lock().unwrap() = reading(DEC1, 101.0, true, "b1");
        let (t, st) = s.stamp(at(100));
        assert_eq!((t, st.synced, st.monotonic_s), (at(DEC1), Some(true), 101.0));
        // A second frame from before the step (a replayed file waits for
        // two classifications): its age by the wall clock cannot be.
        *clock.0.lock().unwrap() = reading(DEC1 + 1, 102.0, true, "b1");
        let (t, st) = s.stamp(at(100));
        assert_eq!((t, st.monotonic_s), (at(DEC1 + 1), 102.0));
        // An hour of normal running later: no step.
        *clock.0.lock().unwrap() = reading(DEC1 + 3600, 3701.0, true, "b1");
        let (t, st) = s.stamp(at(DEC1 + 3599));
        assert_eq!((t, st.monotonic_s), (at(DEC1 + 3599), 3700.0));
    }

    fn stored(synced: bool, boot: &str, mono: f64, captured: &str) -> Vec<u8> {
        format!(
            r#"{{"seq":3,"captured_at":"{captured}","label":"x","clock":{{"synced":{synced},"boot_id":"{boot}","monotonic_s":{mono}}}}}"#
        )
        .into_bytes()
    }

    fn json(b: &[u8]) -> Value {
        serde_json::from_slice(b).unwrap()
    }

    #[test]
    fn an_unsynced_result_of_this_boot_gets_its_time_from_the_time_since_boot() {
        let row = stored(false, "b1", 98.5, "1970-01-01T00:01:38.5Z");
        // Still unsynchronised: leaves as it is.
        assert_eq!(settle(&row, &reading(200, 200.0, false, "b1")), None);
        // Synchronised at 1000 s since boot: taken 901.5 s before now.
        let (fixed, how) = settle(&row, &reading(DEC1, 1000.0, true, "b1")).unwrap();
        let v = json(&fixed);
        assert_eq!(how, Settled::Corrected);
        assert_eq!(v["captured_at"], "2026-11-30T23:44:58.5Z");
        assert_eq!(
            v["clock"],
            serde_json::json!({"synced": false, "boot_id": "b1", "monotonic_s": 98.5, "corrected": true})
        );
        assert_eq!((v["seq"].clone(), v["label"].clone()), (3.into(), "x".into()), "the rest is kept");
        assert_eq!(settle(&fixed, &reading(DEC1 + 5, 1005.0, true, "b1")), None, "settled once");
    }

    #[test]
    fn an_unsynced_result_of_an_earlier_boot_is_marked_uncorrectable() {
        let row = stored(false, "b0", 98.5, "1970-01-01T00:01:38.5Z");
        for now in [reading(DEC1, 1000.0, true, "b1"), reading(300, 300.0, false, "b1")] {
            let (out, how) = settle(&row, &now).unwrap();
            let v = json(&out);
            assert_eq!(how, Settled::Uncorrectable);
            assert_eq!(v["captured_at"], "1970-01-01T00:01:38.5Z", "the time is left as taken");
            assert_eq!(v["clock"]["corrected"], false);
        }
    }

    #[test]
    fn synced_results_unknown_clocks_and_other_payloads_are_left_alone() {
        let now = reading(DEC1, 1000.0, true, "b1");
        assert_eq!(settle(&stored(true, "b1", 5.0, "2026-11-30T23:44:00Z"), &now), None);
        assert_eq!(settle(br#"{"seq":1,"label":"x"}"#, &now), None);
        assert_eq!(settle(br#"not json "synced":false"#, &now), None);
        let unknown = br#"{"seq":1,"clock":{"synced":null,"boot_id":null,"monotonic_s":3.0}}"#;
        assert_eq!(settle(unknown, &now), None);
        // No boot id when taken (unit without the bind): cannot be fixed.
        let no_boot = br#"{"seq":1,"clock":{"synced":false,"boot_id":null,"monotonic_s":3.0}}"#;
        assert_eq!(settle(no_boot, &now).unwrap().1, Settled::Uncorrectable);
    }

    #[test]
    fn the_system_clock_reads_a_boot_id_and_a_time_since_boot() {
        let r = system().read();
        let uptime: f64 = std::fs::read_to_string("/proc/uptime").unwrap().split(' ').next().unwrap().parse().unwrap();
        assert!((r.since_boot.as_secs_f64() - uptime).abs() < 5.0, "{r:?} vs /proc/uptime {uptime}");
        let id = std::fs::read_to_string(BOOT_ID).unwrap();
        assert_eq!(r.boot_id.as_deref(), Some(id.trim()));
    }
}
