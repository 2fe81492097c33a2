//! The durable outbox: every result is either acknowledged by the broker or
//! on disk within `outbox_commit_interval` of being taken, and stays on disk
//! until the broker acknowledged it, so a broker outage, a frozen broker, a
//! kill -9 or a power cut of lookout loses nothing older than that
//! (rumqttc's in-memory queue loses its whole in-flight window; FACTS.md).
//!
//! SQLite in WAL mode with `synchronous=FULL` (each commit is on the card
//! when it returns; a power cut keeps every commit that returned).
//!
//! SD cards wear out by writes, so the healthy case writes nothing per
//! result: a result goes to the broker straight from memory, and only one
//! still unacknowledged `outbox_commit_interval` after it was taken is
//! written (then all results waiting with it, in one commit, which is the
//! batching that cut write amplification from 67x to 12x; FACTS.md).
//! Acknowledged before that, it never touches the disk.
//!
//! `seq` must never repeat, also after a crash, although results leave
//! before anything about them is on disk: the stored counter is a
//! reservation. A result leaves from memory only when its `seq` is below the
//! stored counter; when it is not, the next commit (at once) stores the
//! counter [`RESERVE`] results ahead. A run that ends cleanly stores the
//! exact counter, and so does the first commit of an outage, so `seq` runs
//! on without a gap there; after a crash in the healthy case the next run
//! skips the unused rest of the reservation (at most [`RESERVE`] numbers)
//! and says so in its log. A commit that writes results (the broker did not
//! acknowledge them in time: an outage) stores the exact counter too.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rusqlite::{params, Connection, OptionalExtension};

use super::PublishError;

pub const FILE: &str = "outbox.sqlite";

/// How far ahead the stored counter reserves `seq`s: at one result a second
/// one commit of the counter every 17 minutes.
pub const RESERVE: u64 = 1000;

/// The shortest wait before a failed commit is tried again.
const RETRY: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
#[error("outbox {path}: {reason}")]
pub struct OutboxError {
    path: PathBuf,
    reason: String,
}

/// A result as sent: `(seq, payload)`.
pub type Row = (u64, Vec<u8>);

/// A result that is not on disk.
struct Pending {
    seq: u64,
    payload: Vec<u8>,
    /// When it was pushed: it must be on disk by this plus the interval
    /// unless acknowledged before.
    pushed: Instant,
}

pub struct Outbox {
    conn: Connection,
    path: PathBuf,
    max_rows: u64,
    max_bytes: u64,
    /// How long a result may stay only in memory; zero writes every result
    /// at the next commit.
    commit_interval: Duration,
    /// Results not on disk, in `seq` order. While commits fail (a full
    /// disk) they stay here, within the same bounds as the rows on disk.
    pending: VecDeque<Pending>,
    pending_bytes: u64,
    /// Acknowledged rows waiting for the next commit to delete them; skipped
    /// by [`Outbox::after`] meanwhile so they are not sent twice.
    acked: BTreeSet<u64>,
    next_seq: u64,
    /// The counter on disk: every `seq` that may have left is below it.
    stored_next: u64,
    /// [`Outbox::after`] held back a result whose `seq` is not below
    /// `stored_next`: the next commit reserves more, at once.
    want_reservation: bool,
    /// Set by [`Outbox::finish`]: the next commit writes everything and the
    /// exact counter.
    finishing: bool,
    last_commit: Instant,
    /// After a failed commit, the next try waits until then.
    retry_at: Option<Instant>,
    /// Rows dropped because the outbox was full, over its whole life.
    dropped: u64,
    /// `dropped` as stored.
    dropped_stored: u64,
    /// Of those, results dropped from `pending` since the last look.
    dropped_in_memory: u64,
    depth: u64,
    bytes: u64,
    /// Each view's newest result, re-published as its retained state after
    /// every reconnect, even when the broker forgot it.
    last_state: BTreeMap<String, Vec<u8>>,
    /// Views whose `last_state` the next commit writes.
    state_dirty: BTreeSet<String>,
}

impl Outbox {
    /// Opens (creating if needed) `dir/outbox.sqlite`. Results are written
    /// at the next commit: [`Outbox::with_commit_interval`] lets them wait
    /// for the broker's acknowledgement instead.
    pub fn open(dir: &Path, max_rows: u64, max_bytes: u64) -> Result<Outbox, PublishError> {
        let dir_error = |reason: String| PublishError::StateDir { path: dir.to_owned(), reason };
        if !dir.is_dir() {
            std::fs::create_dir(dir).map_err(|e| dir_error(format!("it does not exist and cannot be created: {e}")))?;
        }
        let path = dir.join(FILE);
        // Probe write access ourselves: SQLite's "readonly database" names
        // neither the file nor the fix.
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| dir_error(format!("{} is not writable: {e}", path.display())))?;
        let err = |e: rusqlite::Error| PublishError::Outbox { path: path.clone(), reason: e.to_string() };
        let conn = Connection::open(&path).map_err(err)?;
        // FULL: a commit that returned survives a power cut. The counter's
        // reservation depends on it: results leave on its strength.
        // 2 KiB pages (new files only; WAL mode keeps an existing file's):
        // a commit of one result and the meta row rewrites two pages, 7.6
        // instead of 13.5 kB per result during an outage (BENCHMARKS.md).
        conn.execute_batch(
            "PRAGMA page_size=2048; PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;
             CREATE TABLE IF NOT EXISTS outbox (seq INTEGER PRIMARY KEY, payload BLOB NOT NULL);
             CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value);",
        )
        .map_err(err)?;
        let meta_int = |key: &str| -> Result<i64, rusqlite::Error> {
            let v: Option<i64> =
                conn.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0)).optional()?;
            Ok(v.unwrap_or(0))
        };
        let stored_next = meta_int("next_seq").map_err(err)?;
        let dropped = meta_int("dropped").map_err(err)?;
        let reserved = meta_int("reserved").map_err(err)? != 0;
        let mut last_state = BTreeMap::new();
        {
            let mut q = conn.prepare("SELECT key, value FROM meta WHERE key LIKE 'last_state%'").map_err(err)?;
            let rows = q.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, Vec<u8>>(1)?))).map_err(err)?;
            for row in rows {
                let (key, value) = row.map_err(err)?;
                // Before views, one result stream: the view `main`.
                let view = key.strip_prefix("last_state/").unwrap_or("main").to_owned();
                last_state.insert(view, value);
            }
        }
        let (min_seq, max_seq): (Option<i64>, Option<i64>) =
            conn.query_row("SELECT min(seq), max(seq) FROM outbox", [], |r| Ok((r.get(0)?, r.get(1)?))).map_err(err)?;
        // lookout never writes these; a damaged or hand-edited file would
        // overflow the counters (a panic, or in release a seq reused).
        let in_range = |v: i64| (0..i64::MAX - RESERVE as i64).contains(&v);
        let damaged = [("next_seq", Some(stored_next)), ("dropped", Some(dropped)), ("seq", min_seq), ("seq", max_seq)]
            .into_iter()
            .find_map(|(what, v)| v.filter(|v| !in_range(*v)).map(|v| format!("{what} {v} is out of range")));
        if let Some(reason) = damaged {
            return Err(PublishError::Outbox { path, reason: format!("{reason} (the file is damaged)") });
        }
        let (stored_next, dropped) = (stored_next as u64, dropped as u64);
        let next_seq = stored_next.max(max_seq.map_or(0, |s| s as u64 + 1));
        // A reservation on disk: the last run ended without closing the
        // outbox (crash, kill -9, power cut) while the broker was connected.
        // Its last state on disk may be older than the broker's retained
        // one, which a re-publish would then overwrite.
        let last_state = if reserved {
            log::warn!(
                "MQTT outbox {}: the last run did not stop cleanly; results continue at seq {next_seq} (up to {RESERVE} \
                 numbers before it were reserved and never used)",
                path.display()
            );
            BTreeMap::new()
        } else {
            last_state
        };
        let mut outbox = Outbox {
            conn,
            path: path.clone(),
            max_rows,
            max_bytes,
            commit_interval: Duration::ZERO,
            pending: VecDeque::new(),
            pending_bytes: 0,
            acked: BTreeSet::new(),
            next_seq,
            stored_next,
            want_reservation: false,
            finishing: false,
            last_commit: Instant::now(),
            retry_at: None,
            dropped,
            dropped_stored: dropped,
            dropped_in_memory: 0,
            depth: 0,
            bytes: 0,
            last_state,
            state_dirty: BTreeSet::new(),
        };
        outbox.count().map_err(err)?;
        Ok(outbox)
    }

    /// Lets results wait up to `interval` in memory for the broker's
    /// acknowledgement before they are written (`mqtt.outbox_commit_interval`).
    pub fn with_commit_interval(mut self, interval: Duration) -> Outbox {
        self.commit_interval = interval;
        self
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The `seq` the next result must get.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    pub fn push(&mut self, seq: u64, view: &str, payload: Vec<u8>) {
        self.next_seq = self.next_seq.max(seq + 1);
        self.last_state.insert(view.to_owned(), payload.clone());
        self.state_dirty.insert(view.to_owned());
        self.pending_bytes += payload.len() as u64;
        self.pending.push_back(Pending { seq, payload, pushed: Instant::now() });
        // Only reached while commits fail: the oldest go first, as on disk.
        while self.pending.len() as u64 > self.max_rows || self.pending_bytes > self.max_bytes {
            let Some(old) = self.pending.pop_front() else { break };
            self.pending_bytes -= old.payload.len() as u64;
            self.dropped += 1;
            self.dropped_in_memory += 1;
        }
    }

    /// Results not written to disk yet.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Results dropped from memory because commits kept failing; the
    /// counter restarts at each call.
    pub fn take_dropped_in_memory(&mut self) -> u64 {
        std::mem::take(&mut self.dropped_in_memory)
    }

    /// The broker has `seq`: a result still in memory is forgotten (it is
    /// never written), a row on disk is deleted by the next commit.
    pub fn ack(&mut self, seq: u64) {
        if let Ok(i) = self.pending.binary_search_by_key(&seq, |p| p.seq) {
            let p = self.pending.remove(i).expect("found");
            self.pending_bytes -= p.payload.len() as u64;
        } else {
            self.acked.insert(seq);
        }
    }

    /// When [`Outbox::commit`] has work: a result unacknowledged for the
    /// commit interval, a reservation (at once), deletes (one interval after
    /// the last commit); after a failed commit not before its retry time.
    pub fn due(&self) -> Option<Instant> {
        let mut due: Option<Instant> = None;
        let mut at = |t: Instant| due = Some(due.map_or(t, |d| d.min(t)));
        if self.finishing || self.want_reservation {
            at(Instant::now());
        }
        if let Some(p) = self.pending.front() {
            at(p.pushed + self.commit_interval);
        }
        if !self.acked.is_empty() || self.dropped != self.dropped_stored {
            at(self.last_commit + self.commit_interval);
        }
        match (due, self.retry_at) {
            (Some(d), Some(r)) => Some(d.max(r)),
            _ => due,
        }
    }

    /// Rows waiting for the broker on disk (written, not acknowledged).
    pub fn depth(&self) -> u64 {
        self.depth
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Each view's newest result.
    pub fn last_states(&self) -> &BTreeMap<String, Vec<u8>> {
        &self.last_state
    }

    /// The newest `seq` waiting for the broker, on disk or in memory.
    pub fn newest(&self) -> Result<Option<u64>, OutboxError> {
        if let Some(p) = self.pending.back() {
            return Ok(Some(p.seq));
        }
        let v: Option<i64> =
            self.conn.query_row("SELECT max(seq) FROM outbox", [], |r| r.get(0)).map_err(|e| self.error(e))?;
        Ok(v.map(|s| s as u64))
    }

    /// The next commit writes every result in memory and the exact counter,
    /// so the next run continues without a gap.
    pub fn finish(&mut self) {
        self.finishing = true;
    }

    /// Writes what is due in one transaction: every result in memory once
    /// the oldest waited the commit interval, deletes of acknowledged rows,
    /// the counter when it must move; then drops the oldest rows beyond
    /// the bounds.
    pub fn commit(&mut self) -> Result<(), OutboxError> {
        let r = self.commit_inner();
        if r.is_err() {
            self.retry_at = Some(Instant::now() + self.commit_interval.max(RETRY));
        }
        r.map_err(|e| self.error(e))
    }

    fn commit_inner(&mut self) -> Result<(), rusqlite::Error> {
        let now = Instant::now();
        let write_rows = self.finishing || self.pending.front().is_some_and(|p| p.pushed + self.commit_interval <= now);
        // The counter to store. Every seq that left is below `next_seq`.
        let mark = if self.finishing {
            self.next_seq
        } else if self.want_reservation {
            self.next_seq + RESERVE
        } else if write_rows && self.stored_next > self.next_seq {
            // Results the broker did not acknowledge in time: an outage.
            // Give the reservation back, so a crash now leaves no gap (a
            // slow broker then pays one more commit for the next one).
            self.next_seq
        } else {
            self.stored_next
        };
        let write_mark = mark != self.stored_next || self.finishing;
        let write_dropped = self.dropped != self.dropped_stored;
        if !write_rows && !write_mark && !write_dropped && self.acked.is_empty() {
            return Ok(());
        }
        let tx = self.conn.transaction()?;
        {
            let mut insert = tx.prepare_cached("INSERT OR REPLACE INTO outbox (seq, payload) VALUES (?1, ?2)")?;
            for p in self.pending.iter().filter(|_| write_rows) {
                insert.execute(params![p.seq as i64, p.payload])?;
            }
            let mut delete = tx.prepare_cached("DELETE FROM outbox WHERE seq = ?1")?;
            for seq in &self.acked {
                delete.execute([*seq as i64])?;
            }
        }
        let (rows, bytes): (i64, i64) =
            tx.query_row("SELECT count(*), coalesce(sum(length(payload)), 0) FROM outbox", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })?;
        let (mut rows, mut bytes) = (rows as u64, bytes as u64);
        let mut dropped = 0u64;
        if rows > self.max_rows || bytes > self.max_bytes {
            let mut cutoff = None;
            {
                let mut oldest = tx.prepare("SELECT seq, length(payload) FROM outbox ORDER BY seq")?;
                let mut it = oldest.query([])?;
                while rows > self.max_rows || bytes > self.max_bytes {
                    let Some(row) = it.next()? else { break };
                    let (seq, len): (i64, i64) = (row.get(0)?, row.get(1)?);
                    cutoff = Some(seq);
                    rows -= 1;
                    bytes -= len as u64;
                    dropped += 1;
                }
            }
            if let Some(c) = cutoff {
                tx.execute("DELETE FROM outbox WHERE seq <= ?1", [c])?;
            }
        }
        // Meta rows only when they change: on the healthy path a commit is
        // a reservation, and each rewritten row is a page.
        let set = "INSERT OR REPLACE INTO meta (key, value) VALUES (?1, ?2)";
        if write_mark {
            tx.execute(set, params!["next_seq", mark as i64])?;
            tx.execute(set, params!["reserved", i64::from(mark > self.next_seq)])?;
        }
        if write_dropped || dropped > 0 {
            tx.execute(set, params!["dropped", (self.dropped + dropped) as i64])?;
        }
        // The meta page is written anyway; keep the states it restores fresh.
        if write_rows || write_mark {
            for view in &self.state_dirty {
                if let Some(s) = self.last_state.get(view) {
                    tx.execute(set, params![format!("last_state/{view}"), s])?;
                }
            }
        }
        tx.commit()?;
        if dropped > 0 {
            log::warn!(
                "MQTT outbox full ({} rows / {} bytes max): dropped the {dropped} oldest unsent results",
                self.max_rows,
                self.max_bytes
            );
        }
        self.dropped += dropped;
        self.dropped_stored = self.dropped;
        if write_rows {
            self.pending.clear();
            self.pending_bytes = 0;
        }
        if write_rows || write_mark {
            self.state_dirty.clear();
        }
        self.acked.clear();
        self.stored_next = mark;
        self.want_reservation = false;
        self.last_commit = now;
        self.retry_at = None;
        (self.depth, self.bytes) = (rows, bytes);
        Ok(())
    }

    fn count(&mut self) -> Result<(), rusqlite::Error> {
        let (rows, bytes): (i64, i64) =
            self.conn.query_row("SELECT count(*), coalesce(sum(length(payload)), 0) FROM outbox", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })?;
        (self.depth, self.bytes) = (rows as u64, bytes as u64);
        Ok(())
    }

    /// Up to `limit` unacknowledged results after `after` (all when `None`),
    /// oldest first, that may be sent: the rows on disk, then those in
    /// memory whose `seq` the stored counter covers. One it does not cover
    /// asks the next commit for a reservation.
    pub fn after(&mut self, after: Option<u64>, limit: usize) -> Result<Vec<Row>, OutboxError> {
        let from = after.map_or(-1, |s| s as i64);
        let want = limit.saturating_add(self.acked.len());
        // The rows to send, and how many the query returned.
        let run = || -> Result<(Vec<Row>, usize), rusqlite::Error> {
            let mut q =
                self.conn.prepare_cached("SELECT seq, payload FROM outbox WHERE seq > ?1 ORDER BY seq LIMIT ?2")?;
            let rows = q.query_map(params![from, i64::try_from(want).unwrap_or(-1)], |r| {
                Ok((r.get::<_, i64>(0)? as u64, r.get(1)?))
            })?;
            let (mut out, mut seen) = (vec![], 0);
            for row in rows {
                let (seq, payload) = row?;
                seen += 1;
                if !self.acked.contains(&seq) && out.len() < limit {
                    out.push((seq, payload));
                }
            }
            Ok((out, seen))
        };
        let (mut out, seen) = run().map_err(|e| self.error(e))?;
        // Memory only once the disk has nothing more: `seq` order.
        if seen < want {
            for p in self.pending.iter().filter(|p| after.is_none_or(|a| p.seq > a)) {
                if out.len() >= limit {
                    break;
                }
                if p.seq >= self.stored_next {
                    self.want_reservation = true;
                    break;
                }
                out.push((p.seq, p.payload.clone()));
            }
        }
        Ok(out)
    }

    fn error(&self, e: rusqlite::Error) -> OutboxError {
        OutboxError { path: self.path.clone(), reason: e.to_string() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seqs(o: &mut Outbox) -> Vec<u64> {
        o.after(None, 1000).unwrap().into_iter().map(|(s, _)| s).collect()
    }

    /// What is on disk, read by a second connection: (row seqs, stored
    /// counter, reserved flag).
    fn on_disk(dir: &Path) -> (Vec<u64>, i64, i64) {
        let c = Connection::open(dir.join(FILE)).unwrap();
        let mut q = c.prepare("SELECT seq FROM outbox ORDER BY seq").unwrap();
        let rows: Vec<u64> = q.query_map([], |r| r.get::<_, i64>(0)).unwrap().map(|r| r.unwrap() as u64).collect();
        let meta = |k: &str| {
            c.query_row("SELECT value FROM meta WHERE key = ?1", [k], |r| r.get::<_, i64>(0))
                .optional()
                .unwrap()
                .unwrap_or(-1)
        };
        (rows, meta("next_seq"), meta("reserved"))
    }

    #[test]
    fn rows_and_the_counter_survive_a_reopen_and_leave_only_when_acked() {
        let d = tempfile::tempdir().unwrap();
        let mut o = Outbox::open(d.path(), 100, 1 << 20).unwrap();
        assert_eq!(o.next_seq(), 0);
        for s in 0..5 {
            o.push(s, "main", format!("{{\"seq\":{s}}}").into_bytes());
        }
        assert_eq!(seqs(&mut o), Vec::<u64>::new(), "nothing leaves before its seq is reserved on disk");
        assert!(o.due().is_some_and(|d| d <= Instant::now()), "the reservation is due at once");
        o.commit().unwrap();
        assert_eq!(on_disk(d.path()), (vec![0, 1, 2, 3, 4], 5 + RESERVE as i64, 1), "interval 0: written at once");
        assert_eq!(seqs(&mut o), vec![0, 1, 2, 3, 4]);
        o.ack(1);
        assert_eq!(seqs(&mut o), vec![0, 2, 3, 4], "acked rows are not resent while their delete waits");
        assert_eq!(o.after(Some(2), 1).unwrap()[0].0, 3);
        o.finish();
        o.commit().unwrap();
        assert_eq!((o.depth(), o.bytes()), (4, 4 * 9));
        assert_eq!(on_disk(d.path()), (vec![0, 2, 3, 4], 5, 0), "a clean end stores the exact counter");
        drop(o);

        let mut o = Outbox::open(d.path(), 100, 1 << 20).unwrap();
        assert_eq!(seqs(&mut o), vec![0, 2, 3, 4]);
        assert_eq!(o.next_seq(), 5, "no gap after a clean end");
        assert_eq!(o.last_states().get("main").map(Vec::as_slice), Some(&b"{\"seq\":4}"[..]));
    }

    #[test]
    fn results_acknowledged_within_the_interval_are_never_written() {
        let d = tempfile::tempdir().unwrap();
        let hour = Duration::from_secs(3600);
        let mut o = Outbox::open(d.path(), 100, 1 << 20).unwrap().with_commit_interval(hour);
        let mut cursor = None;
        let mut commits = 0;
        // A healthy broker: each result leaves from memory and is
        // acknowledged before its interval is up.
        for s in 0..2 * RESERVE + 10 {
            o.push(s, "main", vec![b'x'; 500]);
            let mut rows = o.after(cursor, 64).unwrap();
            if rows.is_empty() {
                // Its seq needs a reservation: committed at once.
                assert!(o.due().unwrap() <= Instant::now());
                o.commit().unwrap();
                commits += 1;
                rows = o.after(cursor, 64).unwrap();
            }
            assert_eq!(rows.iter().map(|r| r.0).collect::<Vec<_>>(), vec![s]);
            cursor = Some(s);
            o.ack(s);
            assert_eq!(o.due(), None, "nothing to write");
        }
        assert_eq!(commits, 3, "one commit per {RESERVE} results");
        // Reserved at seq 0, RESERVE + 1 and 2 * (RESERVE + 1), each time
        // RESERVE past the next seq.
        let reserved = 3 * (RESERVE + 1);
        assert_eq!(on_disk(d.path()), (vec![], reserved as i64, 1), "no result reached the disk");
        assert_eq!((o.depth(), o.pending()), (0, 0));

        // A crash: the next run starts after the reservation and does not
        // restore a state the broker may have newer.
        drop(o);
        let o = Outbox::open(d.path(), 100, 1 << 20).unwrap();
        assert_eq!((o.next_seq(), o.last_states().is_empty()), (reserved, true));
    }

    #[test]
    fn a_result_the_broker_has_not_acknowledged_is_written_with_those_waiting_with_it() {
        let d = tempfile::tempdir().unwrap();
        let mut o = Outbox::open(d.path(), 100, 1 << 20).unwrap().with_commit_interval(Duration::from_secs(3600));
        o.push(0, "main", b"a".to_vec());
        o.after(None, 64).unwrap();
        o.commit().unwrap();
        assert_eq!(o.after(None, 64).unwrap().len(), 1, "left from memory");
        o.push(1, "main", b"b".to_vec());
        let due = o.due().unwrap();
        assert!(due > Instant::now() + Duration::from_secs(3500), "due an interval after the oldest was taken");
        o.commit().unwrap();
        assert_eq!(on_disk(d.path()).0, Vec::<u64>::new(), "not due yet: nothing written");
        // The interval passes (shortened here instead of waited for).
        o.commit_interval = Duration::ZERO;
        o.commit().unwrap();
        assert_eq!(on_disk(d.path()).0, vec![0, 1], "both, in one commit");
        assert_eq!(o.depth(), 2);
        o.ack(0);
        o.commit().unwrap();
        assert_eq!(on_disk(d.path()).0, vec![1], "an acknowledged row is deleted");
    }

    #[test]
    fn an_outage_gives_the_reservation_back_so_a_crash_leaves_no_gap() {
        let d = tempfile::tempdir().unwrap();
        let mut o = Outbox::open(d.path(), 100, 1 << 20).unwrap().with_commit_interval(Duration::ZERO);
        o.push(0, "main", b"a".to_vec());
        o.after(None, 64).unwrap();
        o.commit().unwrap();
        o.after(None, 64).unwrap();
        o.ack(0);
        o.commit().unwrap();
        assert_eq!(on_disk(d.path()).1, 1 + RESERVE as i64, "connected: reserved ahead");
        // The broker is gone: nothing is asked for, results are written.
        for s in 1..4 {
            o.push(s, "main", b"b".to_vec());
            o.commit().unwrap();
        }
        assert_eq!(on_disk(d.path()), (vec![1, 2, 3], 2, 0), "the exact counter at the first commit of the outage");
        drop(o);
        assert_eq!(Outbox::open(d.path(), 100, 1 << 20).unwrap().next_seq(), 4, "kill -9 in an outage: no gap");
    }

    #[test]
    fn the_counter_survives_an_empty_outbox() {
        let d = tempfile::tempdir().unwrap();
        let mut o = Outbox::open(d.path(), 100, 1 << 20).unwrap();
        o.push(41, "main", b"x".to_vec());
        o.commit().unwrap();
        o.ack(41);
        o.finish();
        o.commit().unwrap();
        assert_eq!(o.depth(), 0);
        drop(o);
        assert_eq!(Outbox::open(d.path(), 100, 1 << 20).unwrap().next_seq(), 42);
    }

    #[test]
    fn a_full_outbox_drops_the_oldest_and_counts_them() {
        let d = tempfile::tempdir().unwrap();
        let mut o = Outbox::open(d.path(), 3, 1 << 20).unwrap();
        for s in 0..5 {
            o.push(s, "main", vec![b'x'; 10]);
        }
        o.commit().unwrap();
        assert_eq!(seqs(&mut o), vec![2, 3, 4]);
        assert_eq!(o.dropped(), 2);
        // The byte bound: 4096 bytes hold three 1000-byte rows after a fourth.
        let d2 = tempfile::tempdir().unwrap();
        let mut o = Outbox::open(d2.path(), 100, 4096).unwrap();
        for s in 0..5 {
            o.push(s, "main", vec![b'x'; 1000]);
        }
        o.commit().unwrap();
        assert_eq!((seqs(&mut o), o.dropped(), o.bytes()), (vec![1, 2, 3, 4], 1, 4000));
        drop(o);
        assert_eq!(Outbox::open(d.path(), 3, 1 << 20).unwrap().dropped(), 2, "the drop count is persisted");
    }

    #[test]
    fn results_wait_in_memory_within_the_bounds_while_commits_fail() {
        let d = tempfile::tempdir().unwrap();
        let mut o = Outbox::open(d.path(), 3, 1 << 20).unwrap();
        o.push(0, "main", b"a".to_vec());
        o.commit().unwrap();
        // A commit that cannot write, as on a full disk.
        o.conn.execute_batch("PRAGMA query_only = ON").unwrap();
        for s in 1..6 {
            o.push(s, "main", vec![b'x'; 10]);
        }
        let e = o.commit().unwrap_err().to_string();
        assert!(e.contains("outbox.sqlite"), "{e}");
        assert!(
            o.due().unwrap() > Instant::now() + RETRY / 2,
            "a failed commit is retried after a pause, not in a loop"
        );
        assert_eq!(o.pending(), 3, "the oldest went beyond max_rows");
        assert_eq!((o.dropped(), o.take_dropped_in_memory(), o.take_dropped_in_memory()), (2, 2, 0));
        assert_eq!(seqs(&mut o), vec![0], "nothing uncovered by the counter on disk leaves");

        o.conn.execute_batch("PRAGMA query_only = OFF").unwrap();
        o.commit().unwrap();
        assert_eq!((o.pending(), o.dropped()), (0, 3), "the disk bound drops row 0 too");
        assert_eq!(seqs(&mut o), vec![3, 4, 5]);
        drop(o);
        assert_eq!(Outbox::open(d.path(), 3, 1 << 20).unwrap().dropped(), 3, "in-memory drops are persisted");
    }

    #[test]
    fn out_of_range_stored_numbers_are_a_named_error_not_an_overflow() {
        for (sql, what) in [
            ("INSERT INTO outbox VALUES (-1, x'00')", "seq -1"),
            ("INSERT INTO outbox VALUES (9223372036854775807, x'00')", "seq 9223372036854775807"),
            ("INSERT INTO meta VALUES ('next_seq', -5)", "next_seq -5"),
            ("INSERT INTO meta VALUES ('dropped', -1)", "dropped -1"),
        ] {
            let d = tempfile::tempdir().unwrap();
            drop(Outbox::open(d.path(), 10, 1 << 20).unwrap());
            Connection::open(d.path().join(FILE)).unwrap().execute_batch(sql).unwrap();
            let e = Outbox::open(d.path(), 10, 1 << 20).err().unwrap().to_string();
            assert!(e.contains(what) && e.contains("move the file away"), "{sql}: {e}");
        }
    }

    #[test]
    fn an_unusable_state_dir_is_named() {
        let d = tempfile::tempdir().unwrap();
        let file = d.path().join("plain-file");
        std::fs::write(&file, "").unwrap();
        let e = Outbox::open(&file.join("sub"), 1, 4096).err().unwrap();
        assert!(matches!(e, PublishError::StateDir { .. }), "{e}");
        assert!(e.to_string().contains("plain-file/sub") && e.to_string().contains("device.state_dir"), "{e}");
        assert!(e.is_config());
    }
}
