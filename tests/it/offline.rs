//! Offline for months: power cuts, torn writes, a long outage, and what an
//! SD card pays per hour.
//!
//! The power-cut tests drive the real outbox in a child process (this test
//! binary run again as `offline::writer`), which behaves like the MQTT
//! driver against a broker that acknowledges most results at once, some
//! late, some never, and sometimes goes away. The writer reports on stdout
//! what it considers done before the next step: `sent S` (a result left the
//! process), `acked S` and, per commit, `committed E [S]`: where the commit
//! ends in the WAL file and, when nothing was left in memory, the seq S up
//! to which every result not acknowledged is on disk. The checker kills it or
//! snapshots its files at random instants and checks: the database opens,
//! nothing reported durable is missing, and no `seq` that left is ever
//! handed out again.
//!
//! `OFFLINE_KILLS` and `OFFLINE_SNAPSHOTS` scale the first two (CI runs the
//! defaults); `OFFLINE_OUTAGE_ROWS` the outage; the write budget is run by
//! hand (see [`write_budget`]).

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lookout::publish::outbox::{Outbox, FILE};
use rusqlite::Connection;
use serde_json::Value;

use crate::common::*;

const WRITER_DIR: &str = "OFFLINE_WRITER_DIR";

fn env_or(key: &str, default: usize) -> usize {
    std::env::var(key).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// xorshift64*: reproducible from the seed the test prints.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn seed() -> u64 {
    std::env::var("OFFLINE_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1
    })
}

/// Where the last commit of the current WAL generation ends: frames whose
/// salt matches the header's, up to the last one that closes a commit.
fn wal_commit_end(wal: &Path) -> u64 {
    let Ok(mut f) = std::fs::File::open(wal) else { return 0 };
    let mut header = [0u8; 32];
    if f.read_exact(&mut header).is_err() {
        return 0;
    }
    let be = |b: &[u8]| u32::from_be_bytes(b.try_into().unwrap());
    let (page, salt) = (be(&header[8..12]) as u64, &header[16..24]);
    let (mut at, mut end) = (32u64, 32u64);
    let mut frame = [0u8; 24];
    while f.seek(SeekFrom::Start(at)).is_ok() && f.read_exact(&mut frame).is_ok() {
        if &frame[8..16] != salt {
            break;
        }
        at += 24 + page;
        if be(&frame[4..8]) != 0 {
            end = at;
        }
    }
    end
}

/// The writer: not a test of its own; the power-cut tests run it.
#[test]
#[ignore = "run by the power-cut tests as a child process"]
fn writer() {
    let Some(dir) = std::env::var_os(WRITER_DIR).map(PathBuf::from) else { return };
    let mut rng = Rng(seed());
    let interval = Duration::from_millis(rng.below(30) + 1);
    let mut o = Outbox::open(&dir, 1_000_000, 1 << 30).unwrap().with_commit_interval(interval);
    let out = std::io::stdout();
    let say = |line: String| {
        let mut out = out.lock();
        writeln!(out, "{line}").unwrap();
        out.flush().unwrap();
    };
    let mut seq = o.next_seq();
    say(format!("start {seq}"));
    let (mut connected, mut cursor) = (true, None);
    // (seq, acknowledge at this step)
    let mut waiting: Vec<(u64, u64)> = vec![];
    for step in 0u64.. {
        if rng.below(300) == 0 {
            // The broker goes away or comes back (a new session: resend all).
            connected = !connected;
            (cursor, waiting) = (None, vec![]);
        }
        let payload = format!(r#"{{"seq":{seq},"label":"x","pad":"{}"}}"#, "p".repeat(rng.below(600) as usize));
        o.push(seq, "main", payload.into_bytes());
        seq += 1;
        if connected {
            for (s, _) in o.after(cursor, 64).unwrap() {
                say(format!("sent {s}"));
                cursor = Some(s);
                match rng.below(20) {
                    0 => {}
                    1..=4 => waiting.push((s, step + rng.below(200))),
                    _ => waiting.push((s, step)),
                }
            }
        }
        waiting.retain(|&(s, at)| {
            if at > step {
                return true;
            }
            o.ack(s);
            say(format!("acked {s}"));
            false
        });
        if o.due().is_some_and(|d| d <= Instant::now()) {
            o.commit().unwrap();
            // One line: a reader that has taken the durable seq without the
            // WAL end would cut the test's copy inside the commit that made
            // it durable (seen under load: 528 "lost" rows).
            let wal = wal_commit_end(&dir.join(format!("{FILE}-wal")));
            match o.pending() {
                0 => say(format!("committed {wal} {}", seq - 1)),
                _ => say(format!("committed {wal}")),
            }
        }
    }
}

/// What the writer has reported so far.
#[derive(Default, Clone)]
struct Reported {
    start: Option<u64>,
    sent: BTreeSet<u64>,
    acked: BTreeSet<u64>,
    durable: Option<u64>,
    wal: u64,
}

struct Writer {
    child: Child,
    reported: Arc<Mutex<Reported>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    fn start(dir: &Path, seed: u64) -> Writer {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "offline::writer", "--ignored", "--nocapture", "--test-threads=1"])
            .env(WRITER_DIR, dir)
            .env("OFFLINE_SEED", seed.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let reported = Arc::new(Mutex::new(Reported::default()));
        let (stdout, r) = (child.stdout.take().unwrap(), reported.clone());
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                // The first line follows libtest's "test offline::writer ... ".
                let line = line.rsplit("... ").next().unwrap_or_default();
                let mut words = line.split(' ');
                let what = words.next().unwrap_or_default();
                let Some(Ok(n)) = words.next().map(str::parse::<u64>) else { continue };
                let mut r = r.lock().unwrap();
                match what {
                    "start" => r.start = Some(n),
                    "sent" => _ = r.sent.insert(n),
                    "acked" => _ = r.acked.insert(n),
                    "committed" => {
                        r.wal = n;
                        if let Some(Ok(d)) = words.next().map(str::parse::<u64>) {
                            r.durable = Some(d);
                        }
                    }
                    _ => {}
                }
            }
        });
        Writer { child, reported, reader: Some(reader) }
    }

    fn signal(&self, sig: &str) {
        assert!(Command::new("kill").arg(sig).arg(self.child.id().to_string()).status().unwrap().success());
    }

    /// Waits until the writer has started and made some progress.
    fn wait_started(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.reported.lock().unwrap().start.is_none() {
            assert!(Instant::now() < deadline, "the writer did not start");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// SIGKILL, then everything it reported.
    fn kill(mut self) -> Reported {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.reader.take().unwrap().join().unwrap();
        let r = self.reported.lock().unwrap().clone();
        r
    }
}

/// Across runs: what must be on disk and which seqs have left.
#[derive(Default)]
struct Ledger {
    /// Reported durable and not acknowledged.
    durable: BTreeSet<u64>,
    max_sent: Option<u64>,
}

impl Ledger {
    /// Folds in one run's reports (`base`: its first seq).
    fn add(&mut self, r: &Reported) {
        let start = r.start.expect("a start line");
        if let Some(d) = r.durable {
            self.durable.extend(start..=d);
        }
        for s in &r.acked {
            self.durable.remove(s);
        }
        self.max_sent = self.max_sent.max(r.sent.last().copied());
    }

    /// The database in `dir` opens, holds every durable row, and hands out
    /// a next seq above every seq that left.
    fn check(&self, dir: &Path, what: &str) {
        let c = Connection::open(dir.join(FILE)).unwrap_or_else(|e| panic!("{what}: {e}"));
        let ok: String = c.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
        assert_eq!(ok, "ok", "{what}");
        drop(c);
        let mut o = Outbox::open(dir, 1_000_000, 1 << 30).unwrap_or_else(|e| panic!("{what}: {e}"));
        let on_disk: BTreeSet<u64> = o.after(None, usize::MAX).unwrap().into_iter().map(|(s, _)| s).collect();
        let lost: Vec<&u64> = self.durable.difference(&on_disk).collect();
        assert!(lost.is_empty(), "{what}: {} durable rows lost, first {:?}", lost.len(), &lost[..lost.len().min(10)]);
        if let Some(m) = self.max_sent {
            assert!(o.next_seq() > m, "{what}: next seq {} but seq {m} has left", o.next_seq());
        }
    }
}

#[test]
fn sigkill_at_random_instants_loses_nothing_durable_and_never_reuses_a_seq() {
    let kills = env_or("OFFLINE_KILLS", 25);
    let dir = tempfile::tempdir().unwrap();
    let seed = seed();
    eprintln!("seed {seed} (OFFLINE_SEED), {kills} kills");
    let mut rng = Rng(seed);
    let mut ledger = Ledger::default();
    let (mut sent, mut durable_runs) = (0, 0);
    for k in 0..kills {
        let w = Writer::start(dir.path(), rng.next() | 1);
        w.wait_started();
        std::thread::sleep(Duration::from_millis(rng.below(300)));
        let r = w.kill();
        if let Some(m) = ledger.max_sent {
            assert!(r.start.unwrap() > m, "run {k} started at {} but seq {m} had left before", r.start.unwrap());
        }
        sent += r.sent.len();
        durable_runs += usize::from(r.durable.is_some());
        ledger.add(&r);
        ledger.check(dir.path(), &format!("after kill {k}"));
    }
    eprintln!(
        "{kills} kills: {sent} results sent, {} rows durable at the end, {durable_runs} runs with a durable report",
        ledger.durable.len()
    );
    assert!(sent > kills, "the writer made progress");
}

/// A copy of the writer's files as a power cut could leave them: taken
/// while it is stopped (SIGSTOP), its WAL then cut or overwritten with
/// garbage anywhere after the last commit it reported (what the card may not
/// have written yet; what was fsynced stays).
#[test]
fn torn_and_lost_writes_after_the_last_commit_leave_a_database_that_opens_with_every_durable_row() {
    let snapshots = env_or("OFFLINE_SNAPSHOTS", 40);
    let dir = tempfile::tempdir().unwrap();
    let seed = seed();
    eprintln!("seed {seed} (OFFLINE_SEED), {snapshots} snapshots");
    let mut rng = Rng(seed);
    let w = Writer::start(dir.path(), rng.next() | 1);
    w.wait_started();
    let (mut cut, mut garbage) = (0, 0);
    for n in 0..snapshots {
        std::thread::sleep(Duration::from_millis(rng.below(100)));
        w.signal("-STOP");
        // Let the reader take every line written before the stop.
        std::thread::sleep(Duration::from_millis(30));
        let r = w.reported.lock().unwrap().clone();
        let copy = tempfile::tempdir().unwrap();
        std::fs::copy(dir.path().join(FILE), copy.path().join(FILE)).unwrap();
        let wal = dir.path().join(format!("{FILE}-wal"));
        let wal_copy = copy.path().join(format!("{FILE}-wal"));
        if wal.exists() {
            std::fs::copy(&wal, &wal_copy).unwrap();
        }
        w.signal("-CONT");
        let len = std::fs::metadata(&wal_copy).map_or(0, |m| m.len());
        if len > r.wal {
            let at = r.wal + rng.below(len - r.wal + 1);
            let f = std::fs::OpenOptions::new().write(true).open(&wal_copy).unwrap();
            if rng.below(2) == 0 {
                f.set_len(at).unwrap();
                cut += 1;
            } else {
                let junk: Vec<u8> = (0..(len - at).min(8192)).map(|_| rng.next() as u8).collect();
                std::os::unix::fs::FileExt::write_all_at(&f, &junk, at).unwrap();
                garbage += 1;
            }
        }
        let mut ledger = Ledger::default();
        ledger.add(&r);
        ledger.check(copy.path(), &format!("snapshot {n} (wal {} of {len} bytes kept)", r.wal));
    }
    let r = w.kill();
    eprintln!(
        "{snapshots} snapshots ({cut} WALs cut, {garbage} overwritten with garbage), {} results sent",
        r.sent.len()
    );
    assert!(cut + garbage > 0, "some snapshot caught the writer between commits");
}

/// A long outage with a small outbox: lookout runs with no broker until
/// the outbox dropped results, then a real Mosquitto comes back; the newest
/// rows arrive in order, exactly the dropped ones are missing, and the
/// diagnostics count them.
#[test]
fn a_long_outage_fills_the_outbox_drops_the_oldest_and_delivers_the_rest_in_order() {
    let rows = env_or("OFFLINE_OUTAGE_ROWS", 300) as u64;
    let topic = "lookout/outage/main/result";
    let mut broker = Broker::start_persistent();
    let sub = Listener::persistent_saved(broker.port, topic, "test-outage");
    broker.kill();
    let dir = tempfile::tempdir().unwrap();
    let mqtt = format!(
        "keep_alive = 5\nconnect_timeout = 2\nreconnect_min = 0.2\nreconnect_max = 0.5\ndiagnostics_interval = 1\n\
         outbox_max_rows = {rows}\noutbox_commit_interval = 0.2"
    );
    let text = digits_loop_config("outage", "state", broker.port, &mqtt, 0.005);
    let cfg = write_config(dir.path(), &text);
    let mut lookout = Daemon::start(&cfg, &[("RUST_LOG", "info,lookout::daemon=warn")]);
    let diagnostics = || -> Value {
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("state/diagnostics.json")).unwrap_or_default())
            .unwrap_or(Value::Null)
    };
    let deadline = Instant::now() + Duration::from_secs(600);
    while diagnostics()["outbox"]["dropped"].as_u64().unwrap_or(0) < rows / 2 {
        assert!(Instant::now() < deadline, "no drops: {}\n{}", diagnostics(), lookout.log());
        assert!(lookout.is_running(), "{}", lookout.log());
        std::thread::sleep(Duration::from_millis(200));
    }
    broker.restart();
    lookout.wait_for("MQTT: connected to", Duration::from_secs(60));
    // Replayed: the outbox on disk is empty again (the retained
    // diagnostics say so; the file is written only while the broker is away).
    let diag = Listener::new(broker.port, "lookout/outage/diagnostics");
    let drained = diag.until(Duration::from_secs(120), |m| m.iter().any(|(_, v, _)| v["outbox"]["depth"] == 0));
    assert!(!drained.is_empty(), "not drained:\n{}", lookout.log());
    assert_eq!(lookout.terminate(Duration::from_secs(60)), Some(0), "{}", lookout.log());
    let dropped = diagnostics()["outbox"]["dropped"].as_u64().unwrap();
    let last = lookout
        .log()
        .lines()
        .find_map(|l| {
            l.split(" classified").next()?.rsplit(' ').next()?.parse::<u64>().ok().filter(|_| l.contains("stopped:"))
        })
        .unwrap_or_else(|| panic!("no summary line:\n{}", lookout.log()))
        - 1;
    let msgs = sub.until(Duration::from_secs(120), |m| {
        m.iter().filter_map(|(_, v, _)| v["seq"].as_u64()).collect::<BTreeSet<_>>().contains(&last)
    });
    let mut seen = BTreeSet::new();
    let firsts: Vec<u64> = msgs.iter().filter_map(|(_, v, _)| v["seq"].as_u64()).filter(|s| seen.insert(*s)).collect();
    // The oldest are missing and nothing else; `dropped` counts rows
    // deleted unacknowledged, and one deleted while in flight (the replay
    // sends 64 at a time while new results still overflow the outbox) may
    // arrive all the same.
    let first = *seen.first().unwrap_or_else(|| panic!("nothing arrived:\n{}", lookout.log()));
    let expected: BTreeSet<u64> = (first..=last).collect();
    assert_eq!(seen, expected, "only the oldest are missing; log:\n{}", lookout.log());
    assert!((first..=first + 64).contains(&dropped), "{first} missing, {dropped} counted as dropped");
    assert!(firsts.windows(2).all(|w| w[0] < w[1]), "delivered in seq order");
    let replayed = msgs.iter().filter(|(_, v, _)| v["replayed"] == true).count() as u64;
    assert!(replayed >= rows / 2, "{replayed} replayed");
    assert!(lookout.log().contains("dropped the"), "the drop is logged:\n{}", lookout.log());
    eprintln!(
        "outage: {} results, {dropped} dropped (outbox_max_rows {rows}), {} delivered in order",
        last + 1,
        seen.len()
    );
}

/// A fresh ext4 file system on a loop device, as an SD card of its own:
/// its block counters see only what lookout writes (file data, the file
/// system's journal and metadata).
struct Card {
    mount: tempfile::TempDir,
    device: String,
    _image: tempfile::TempDir,
}

impl Card {
    fn new() -> Option<Card> {
        let image = tempfile::tempdir().unwrap();
        let file = image.path().join("card.img");
        std::fs::File::create(&file).unwrap().set_len(256 << 20).unwrap();
        let ok = |c: &mut Command| c.stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success());
        if !ok(Command::new("mkfs.ext4").arg("-q").arg(&file)) {
            return None;
        }
        let mount = tempfile::tempdir().unwrap();
        if !ok(Command::new("mount").arg("-o").arg("loop").arg(&file).arg(mount.path())) {
            return None;
        }
        let out = Command::new("losetup").arg("-j").arg(&file).output().unwrap();
        let device = String::from_utf8_lossy(&out.stdout).split(':').next()?.trim_start_matches("/dev/").to_owned();
        Some(Card { mount, device, _image: image })
    }

    /// Bytes written to the device so far (sectors of 512 bytes).
    fn written(&self) -> u64 {
        let stat = std::fs::read_to_string(format!("/sys/block/{}/stat", self.device)).unwrap();
        stat.split_whitespace().nth(6).unwrap().parse::<u64>().unwrap() * 512
    }
}

impl Drop for Card {
    fn drop(&mut self) {
        let _ = Command::new("sync").status();
        let _ = Command::new("umount").arg(self.mount.path()).status();
    }
}

/// Bytes a process caused to be written to storage (`/proc/PID/io`).
fn write_bytes(pid: u32) -> u64 {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).unwrap_or_default();
    io.lines().find_map(|l| l.strip_prefix("write_bytes: ")).and_then(|v| v.trim().parse().ok()).unwrap_or(0)
}

/// Bytes per hour that reach the state directory's device at one result a
/// second, with a healthy broker and with none, for this build and (with
/// `LOOKOUT_BIN_BEFORE`) another; all cases side by side, each on a card of
/// its own. Root only (mount).
///   cargo build && LOOKOUT_BIN_BEFORE=/path/to/old/lookout \
///   WRITE_BUDGET_SECONDS=600 cargo test --test it offline::write_budget -- --ignored --nocapture
#[test]
#[ignore = "minutes, root: run by hand for BENCHMARKS.md"]
fn write_budget() {
    let seconds = env_or("WRITE_BUDGET_SECONDS", 600) as u64;
    let broker = Broker::start();
    let mut bins = vec![("this build", lookout().get_program().to_owned())];
    if let Some(before) = std::env::var_os("LOOKOUT_BIN_BEFORE") {
        bins.push(("before", before));
    }
    let mut runs = vec![];
    for (name, bin) in &bins {
        for healthy in [true, false] {
            let Some(card) = Card::new() else {
                eprintln!("skipped: cannot mount a loop device (needs root)");
                return;
            };
            let port = if healthy { broker.port } else { free_port() };
            let state = format!("{}/state", card.mount.path().display());
            let text =
                digits_loop_config("budget", &state, port, &format!("client_id = \"budget-{}\"", runs.len()), 1.0);
            let dir = tempfile::tempdir().unwrap();
            let cfg = write_config(dir.path(), &text);
            let child = Command::new(bin)
                .args(["run", "--config"])
                .arg(&cfg)
                .env("RUST_LOG", "warn")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            runs.push((name, healthy, card, child, dir, 0u64, 0u64));
        }
    }
    // Past start-up (the outbox file created, the first commits).
    std::thread::sleep(Duration::from_secs(20));
    let _ = Command::new("sync").status();
    for r in runs.iter_mut() {
        (r.5, r.6) = (r.2.written(), write_bytes(r.3.id()));
    }
    let started = Instant::now();
    std::thread::sleep(Duration::from_secs(seconds));
    let _ = Command::new("sync").status();
    let hours = started.elapsed().as_secs_f64() / 3600.0;
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("model name\t: ").map(str::to_owned))
        .unwrap_or_default();
    eprintln!("write budget, {seconds} s at 1 result/s, ext4 on a loop device per case, {cpu}:");
    for (name, healthy, card, mut child, _dir, dev0, io0) in runs {
        let (dev, io) = (card.written() - dev0, write_bytes(child.id()) - io0);
        let _ = child.kill();
        let _ = child.wait();
        eprintln!(
            "  {name:>10}, {:>14}: device {:>8.0} kB/h, process write_bytes {:>8.0} kB/h",
            if healthy { "healthy broker" } else { "no broker" },
            dev as f64 / hours / 1000.0,
            io as f64 / hours / 1000.0
        );
    }
}

/// libfaketime, which the clock-step test preloads into lookout.
fn libfaketime() -> PathBuf {
    let found = std::fs::read_dir("/usr/lib")
        .unwrap()
        .flatten()
        .map(|d| d.path().join("faketime/libfaketime.so.1"))
        .find(|p| p.exists());
    found.expect("libfaketime is not installed: run tools/test.sh, which installs it")
}

/// The wall clock stepped by hours while lookout runs (libfaketime moves
/// what the process sees, as NTP would): results keep coming at the
/// interval, `seq` runs on by one, the time since boot runs on with it,
/// and `captured_at` follows the wall clock.
#[test]
fn a_clock_stepped_by_hours_keeps_seq_and_the_schedule() {
    let broker = Broker::start();
    let topic = "lookout/e2e/main/result";
    let sub = Listener::new(broker.port, topic);
    let dir = tempfile::tempdir().unwrap();
    let samples = root().join("models/digits/samples");
    let text = digits_config(&samples, "digits-int8.onnx", broker.port, "")
        // fps: a camera, which keeps only its newest frame.
        .replace("kind = \"files\"\n", "kind = \"files\"\nloop = true\nfps = 20\n")
        .replace("interval = 0.05", "interval = 0.5");
    let cfg = write_config(dir.path(), &text);
    let offset = dir.path().join("faketime");
    std::fs::write(&offset, "+0\n").unwrap();
    let lib = libfaketime();
    let env = [
        ("LD_PRELOAD", lib.to_str().unwrap()),
        ("FAKETIME_TIMESTAMP_FILE", offset.to_str().unwrap()),
        ("FAKETIME_NO_CACHE", "1"),
        ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
    ];
    let mut lookout = Daemon::start(&cfg, &env);
    // (arrival, payload) per result.
    let mut got: Vec<(Instant, Value)> = vec![];
    let mut take = |n: usize| {
        let want = got.len() + n;
        let mut seen = 0;
        sub.until(Duration::from_secs(120), |m| {
            for (_, v, _) in &m[seen..] {
                got.push((Instant::now(), v.clone()));
            }
            seen = m.len();
            got.len() >= want
        });
        assert!(got.len() >= want, "results stopped after {}:\n{}", got.len(), lookout.log());
        got.len()
    };
    take(6);
    std::fs::write(&offset, "+3h\n").unwrap();
    take(6);
    std::fs::write(&offset, "-2h\n").unwrap();
    take(6);
    assert_eq!(lookout.terminate(Duration::from_secs(60)), Some(0), "{}", lookout.log());

    let seqs: Vec<u64> = got.iter().map(|(_, v)| v["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "seq runs on by one: {seqs:?}");
    let mono: Vec<f64> = got.iter().map(|(_, v)| v["clock"]["monotonic_s"].as_f64().unwrap()).collect();
    let gaps: Vec<f64> = mono.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(gaps.iter().all(|g| (0.3..3.0).contains(g)), "time since boot between results: {gaps:?}");
    // Arrivals keep the interval: no stall of hours, no burst to catch up.
    let arrivals: Vec<f64> = got.windows(2).map(|w| (w[1].0 - w[0].0).as_secs_f64()).collect();
    assert!(arrivals.iter().all(|a| *a < 3.0), "gaps between arrivals: {arrivals:?}");
    let span = (got.last().unwrap().0 - got[0].0).as_secs_f64();
    assert!(span > 0.4 * (got.len() - 1) as f64, "{} results in {span:.1} s: a burst", got.len());
    let wall = |i: usize| unix_seconds(got[i].1["captured_at"].as_str().unwrap());
    let step = |i: usize| (wall(i) - wall(i - 1)) - (mono[i] - mono[i - 1]);
    let steps: Vec<f64> = (1..got.len()).map(step).filter(|s| s.abs() > 60.0).collect();
    assert_eq!(steps.len(), 2, "captured_at follows both steps: {steps:?}");
    assert!((steps[0] - 3.0 * 3600.0).abs() < 10.0 && (steps[1] + 5.0 * 3600.0).abs() < 10.0, "{steps:?}");
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
    assert_eq!(got[0].1["clock"]["boot_id"], boot.trim());
}

/// `2026-12-01T00:00:00.25Z` -> seconds since 1970 (days from the civil
/// date, Howard Hinnant's algorithm).
fn unix_seconds(t: &str) -> f64 {
    let n = |r: std::ops::Range<usize>| t[r].parse::<i64>().unwrap();
    let (y, m, d) = (n(0..4), n(5..7), n(8..10));
    let (y, m) = if m <= 2 { (y - 1, m + 9) } else { (y, m - 3) };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + d - 1;
    let days = era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468;
    let secs: f64 = t[17..t.len() - 1].parse().unwrap();
    (days * 86_400 + n(11..13) * 3600 + n(14..16) * 60) as f64 + secs
}

#[test]
fn unix_seconds_reads_rfc3339() {
    assert_eq!(unix_seconds("1970-01-01T00:00:01.5Z"), 1.5);
    assert_eq!(unix_seconds("2026-12-01T00:00:00Z"), 1_796_083_200.0);
}
