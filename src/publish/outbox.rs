//! The durable outbox: every result is on disk before it is published and
//! leaves only when the broker acknowledged it, so a broker outage, a
//! frozen broker or a kill -9 of lookout loses nothing (rumqttc's in-memory
//! queue loses its whole in-flight window; FACTS.md).
//!
//! SQLite in WAL mode. Inserts and deletes are batched into one commit at
//! most every `outbox_commit_interval`: on an SD card that cut write
//! amplification from 67x to 12x (FACTS.md). A result is only handed to
//! MQTT after its commit, so a crash never publishes a `seq` that the next
//! run would reuse.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, OptionalExtension};

use super::PublishError;

pub const FILE: &str = "outbox.sqlite";

#[derive(Debug, thiserror::Error)]
#[error("outbox {path}: {reason}")]
pub struct OutboxError {
    path: PathBuf,
    reason: String,
}

pub struct Outbox {
    conn: Connection,
    path: PathBuf,
    max_rows: u64,
    max_bytes: u64,
    /// Results waiting for the next commit. While commits fail (a full
    /// disk) they stay here, within the same bounds as the rows on disk.
    pending: VecDeque<(u64, Vec<u8>)>,
    pending_bytes: u64,
    /// Acknowledged rows waiting for the next commit to delete them; skipped
    /// by [`Outbox::after`] meanwhile so they are not sent twice.
    acked: BTreeSet<u64>,
    next_seq: u64,
    /// Rows dropped because the outbox was full, over its whole life.
    dropped: u64,
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
    /// Opens (creating if needed) `dir/outbox.sqlite`.
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
        // FULL: the last second of results also survives a power cut, at
        // one fsync per commit (at most one per second).
        conn.execute_batch(
            "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;
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
        let in_range = |v: i64| (0..i64::MAX).contains(&v);
        let damaged = [("next_seq", Some(stored_next)), ("dropped", Some(dropped)), ("seq", min_seq), ("seq", max_seq)]
            .into_iter()
            .find_map(|(what, v)| v.filter(|v| !in_range(*v)).map(|v| format!("{what} {v} is out of range")));
        if let Some(reason) = damaged {
            return Err(PublishError::Outbox { path, reason: format!("{reason} (the file is damaged)") });
        }
        let (stored_next, dropped) = (stored_next as u64, dropped as u64);
        let mut outbox = Outbox {
            conn,
            path: path.clone(),
            max_rows,
            max_bytes,
            pending: VecDeque::new(),
            pending_bytes: 0,
            acked: BTreeSet::new(),
            next_seq: stored_next.max(max_seq.map_or(0, |s| s as u64 + 1)),
            dropped,
            dropped_in_memory: 0,
            depth: 0,
            bytes: 0,
            last_state,
            state_dirty: BTreeSet::new(),
        };
        outbox.count().map_err(err)?;
        Ok(outbox)
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
        self.pending.push_back((seq, payload));
        // Only reached while commits fail: the oldest go first, as on disk.
        while self.pending.len() as u64 > self.max_rows || self.pending_bytes > self.max_bytes {
            let Some((_, old)) = self.pending.pop_front() else { break };
            self.pending_bytes -= old.len() as u64;
            self.dropped += 1;
            self.dropped_in_memory += 1;
        }
    }

    /// Results not yet written to disk.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Results dropped from memory because commits kept failing; the
    /// counter restarts at each call.
    pub fn take_dropped_in_memory(&mut self) -> u64 {
        std::mem::take(&mut self.dropped_in_memory)
    }

    pub fn ack(&mut self, seq: u64) {
        self.acked.insert(seq);
    }

    /// Whether a commit has anything to write.
    pub fn dirty(&self) -> bool {
        !self.pending.is_empty() || !self.acked.is_empty()
    }

    /// Rows waiting for the broker (committed, not acknowledged).
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

    /// The newest committed `seq`.
    pub fn newest(&self) -> Result<Option<u64>, OutboxError> {
        let v: Option<i64> =
            self.conn.query_row("SELECT max(seq) FROM outbox", [], |r| r.get(0)).map_err(|e| self.error(e))?;
        Ok(v.map(|s| s as u64))
    }

    /// Writes pending results and deletes acknowledged ones in one
    /// transaction, then drops the oldest rows beyond the bounds.
    pub fn commit(&mut self) -> Result<(), OutboxError> {
        if !self.dirty() {
            return Ok(());
        }
        let r = self.commit_inner();
        r.map_err(|e| self.error(e))
    }

    fn commit_inner(&mut self) -> Result<(), rusqlite::Error> {
        let tx = self.conn.transaction()?;
        {
            let mut insert = tx.prepare_cached("INSERT OR REPLACE INTO outbox (seq, payload) VALUES (?1, ?2)")?;
            for (seq, payload) in &self.pending {
                insert.execute(params![*seq as i64, payload])?;
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
        let set = "INSERT OR REPLACE INTO meta (key, value) VALUES (?1, ?2)";
        tx.execute(set, params!["next_seq", self.next_seq as i64])?;
        tx.execute(set, params!["dropped", (self.dropped + dropped) as i64])?;
        for view in &self.state_dirty {
            if let Some(s) = self.last_state.get(view) {
                tx.execute(set, params![format!("last_state/{view}"), s])?;
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
        self.pending.clear();
        self.state_dirty.clear();
        self.pending_bytes = 0;
        self.acked.clear();
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

    /// Up to `limit` committed, unacknowledged rows after `after` (all when
    /// `None`), oldest first.
    pub fn after(&self, after: Option<u64>, limit: usize) -> Result<Vec<(u64, Vec<u8>)>, OutboxError> {
        let from = after.map_or(-1, |s| s as i64);
        let run = || -> Result<Vec<(u64, Vec<u8>)>, rusqlite::Error> {
            let mut q =
                self.conn.prepare_cached("SELECT seq, payload FROM outbox WHERE seq > ?1 ORDER BY seq LIMIT ?2")?;
            let want = i64::try_from(limit.saturating_add(self.acked.len())).unwrap_or(-1);
            let rows = q.query_map(params![from, want], |r| Ok((r.get::<_, i64>(0)? as u64, r.get(1)?)))?;
            let mut out = vec![];
            for row in rows {
                let (seq, payload) = row?;
                if !self.acked.contains(&seq) && out.len() < limit {
                    out.push((seq, payload));
                }
            }
            Ok(out)
        };
        run().map_err(|e| self.error(e))
    }

    fn error(&self, e: rusqlite::Error) -> OutboxError {
        OutboxError { path: self.path.clone(), reason: e.to_string() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seqs(o: &Outbox) -> Vec<u64> {
        o.after(None, 1000).unwrap().into_iter().map(|(s, _)| s).collect()
    }

    #[test]
    fn rows_and_the_counter_survive_a_reopen_and_leave_only_when_acked() {
        let d = tempfile::tempdir().unwrap();
        let mut o = Outbox::open(d.path(), 100, 1 << 20).unwrap();
        assert_eq!(o.next_seq(), 0);
        for s in 0..5 {
            o.push(s, "main", format!("{{\"seq\":{s}}}").into_bytes());
        }
        assert_eq!(seqs(&o), Vec::<u64>::new(), "nothing is sendable before its commit");
        o.commit().unwrap();
        assert_eq!(seqs(&o), vec![0, 1, 2, 3, 4]);
        o.ack(1);
        assert_eq!(seqs(&o), vec![0, 2, 3, 4], "acked rows are not resent while their delete waits");
        assert_eq!(o.after(Some(2), 1).unwrap()[0].0, 3);
        o.commit().unwrap();
        assert_eq!((o.depth(), o.bytes()), (4, 4 * 9));
        drop(o);

        let o = Outbox::open(d.path(), 100, 1 << 20).unwrap();
        assert_eq!(seqs(&o), vec![0, 2, 3, 4]);
        assert_eq!(o.next_seq(), 5);
        assert_eq!(o.last_states().get("main").map(Vec::as_slice), Some(&b"{\"seq\":4}"[..]));
    }

    #[test]
    fn the_counter_survives_an_empty_outbox() {
        let d = tempfile::tempdir().unwrap();
        let mut o = Outbox::open(d.path(), 100, 1 << 20).unwrap();
        o.push(41, "main", b"x".to_vec());
        o.commit().unwrap();
        o.ack(41);
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
        assert_eq!(seqs(&o), vec![2, 3, 4]);
        assert_eq!(o.dropped(), 2);
        // The byte bound: 4096 bytes hold three 1000-byte rows after a fourth.
        let d2 = tempfile::tempdir().unwrap();
        let mut o = Outbox::open(d2.path(), 100, 4096).unwrap();
        for s in 0..5 {
            o.push(s, "main", vec![b'x'; 1000]);
        }
        o.commit().unwrap();
        assert_eq!((seqs(&o), o.dropped(), o.bytes()), (vec![1, 2, 3, 4], 1, 4000));
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
        assert_eq!(o.pending(), 3, "the oldest went beyond max_rows");
        assert_eq!((o.dropped(), o.take_dropped_in_memory(), o.take_dropped_in_memory()), (2, 2, 0));
        assert_eq!(seqs(&o), vec![0], "nothing uncommitted is sendable");

        o.conn.execute_batch("PRAGMA query_only = OFF").unwrap();
        o.commit().unwrap();
        assert_eq!((o.pending(), o.dropped()), (0, 3), "the disk bound drops row 0 too");
        assert_eq!(seqs(&o), vec![3, 4, 5]);
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
