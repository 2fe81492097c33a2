//! Offline for months: power cuts, torn writes, a long outage, and what an
//! SD card pays per hour.
//!
//! The power-cut tests drive the real outbox in a child process (this test
//! binary run again as `offline::writer`), which behaves like the MQTT
//! driver against a broker that acknowledges most results at once, some
//! late, some never, and sometimes goes away. The writer reports on stdout
//! what it considers done before the next step: `sent S` (a result left the
//! process), `acked S`, `durable S` (a commit returned with nothing left in
//! memory: every result up to S not acknowledged is on disk) and `wal E`
//! (where that commit ends in the WAL file). The checker kills it or
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
    let mut say = |line: String| {
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
        o.push(seq, payload.into_bytes());
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
            if o.pending() == 0 {
                say(format!("durable {}", seq - 1));
            }
            say(format!("wal {}", wal_commit_end(&dir.join(format!("{FILE}-wal")))));
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
                let Some((what, n)) = line.split_once(' ') else { continue };
                let Ok(n) = n.parse::<u64>() else { continue };
                let mut r = r.lock().unwrap();
                match what {
                    "start" => r.start = Some(n),
                    "sent" => _ = r.sent.insert(n),
                    "acked" => _ = r.acked.insert(n),
                    "durable" => r.durable = Some(n),
                    "wal" => r.wal = n,
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
    let topic = "lookout/outage/result";
    let mut broker = Broker::start_persistent();
    let sub = Listener::persistent_saved(broker.port, topic, "test-outage");
    broker.kill();
    let dir = tempfile::tempdir().unwrap();
    let models = root().join("models/digits");
    let text = format!(
        "[device]\nid = \"outage\"\nstate_dir = \"state\"\n\n\
         [source]\nkind = \"files\"\npath = \"{}\"\nloop = true\n\n\
         [model]\npath = \"{}\"\nthreads = 1\n\n\
         [mqtt]\nhost = \"127.0.0.1\"\nport = {}\nkeep_alive = 5\nconnect_timeout = 2\n\
         reconnect_min = 0.2\nreconnect_max = 0.5\ndiagnostics_interval = 1\n\
         outbox_max_rows = {rows}\noutbox_commit_interval = 0.2\n\n\
         [schedule]\ninterval = 0.005\n",
        models.join("samples").display(),
        models.join("digits-int8.onnx").display(),
        broker.port,
    );
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
    // Replayed: the outbox on disk is empty again.
    let deadline = Instant::now() + Duration::from_secs(120);
    while diagnostics()["mqtt"]["connected"] != true || diagnostics()["outbox"]["depth"].as_u64() != Some(0) {
        assert!(Instant::now() < deadline, "not drained: {}\n{}", diagnostics(), lookout.log());
        std::thread::sleep(Duration::from_millis(200));
    }
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
        m.iter().filter_map(|(_, v, _)| v["seq"].as_u64()).collect::<BTreeSet<_>>().len() as u64 >= last + 1 - dropped
    });
    let mut seen = BTreeSet::new();
    let firsts: Vec<u64> = msgs.iter().filter_map(|(_, v, _)| v["seq"].as_u64()).filter(|s| seen.insert(*s)).collect();
    let expected: BTreeSet<u64> = (dropped..=last).collect();
    assert_eq!(
        seen.len(),
        expected.len(),
        "dropped {dropped}, last {last}: got {} of {}; log:\n{}",
        seen.len(),
        expected.len(),
        lookout.log()
    );
    assert_eq!(seen, expected, "exactly the {dropped} oldest are missing");
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
