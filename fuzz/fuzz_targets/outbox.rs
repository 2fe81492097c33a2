//! Outbox records read back from disk: the input is the outbox.sqlite file
//! itself (the seeds are real outboxes, so mutations land in rows and meta
//! values). Opening, reading, pushing, acknowledging and committing either
//! work or fail with an error naming the file, never panic.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use lookout::publish::outbox::{Outbox, FILE};

fn dir() -> &'static std::path::Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir_in("/dev/shm").or_else(|_| tempfile::tempdir()).unwrap()).path()
}

fuzz_target!(|data: &[u8]| {
    let dir = dir();
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let _ = std::fs::remove_file(dir.join(format!("{FILE}{suffix}")));
    }
    std::fs::write(dir.join(FILE), data).unwrap();
    let Ok(mut o) = Outbox::open(dir, 8, 1 << 16) else { return };
    let rows = o.after(None, 16).unwrap_or_default();
    let next = o.next_seq();
    assert!(rows.iter().all(|(seq, _)| *seq < next), "a stored seq at or past next_seq {next}");
    o.push(next, "main", br#"{"seq":0}"#.to_vec());
    if o.commit().is_ok() {
        assert!(o.depth() <= 8);
        if let Some((seq, _)) = rows.first() {
            o.ack(*seq);
            let _ = o.commit();
        }
    }
    let _ = o.newest();
});
