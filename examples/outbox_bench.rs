//! What the MQTT outbox costs: time per commit (with its fsync) and bytes
//! handed to the kernel per result, for one result per commit (a camera at
//! one result a second) and for batches; and how fast an outbox filled
//! during an outage is read back for replay.
//!
//! `cargo run --release --example outbox_bench [DIR]` (DIR: where the
//! outbox goes, default a temporary folder; put it on the SD card to
//! measure the card).

use std::time::Instant;

use lookout::publish::outbox::Outbox;

/// A typical result (top-5 digits result as published, 570 bytes).
fn payload(seq: u64) -> Vec<u8> {
    let mut p = format!(
        "{{\"seq\":{seq},\"frame_seq\":{seq},\"captured_at\":\"2026-11-28T21:39:03.306101812Z\",\"label\":\"zero\",\"index\":0,\
         \"score\":0.99976915,\"top_k\":["
    );
    for i in 0..5 {
        p.push_str(&format!("{{\"index\":{i},\"label\":\"label-{i}\",\"score\":0.0001234{i}}},"));
    }
    p.pop();
    p.push_str("],\"latency_ms\":{\"preprocess\":0.21,\"inference\":412.3,\"total\":412.5},\"model\":{\"name\":\"digits-int8\",\"sha256\":\"");
    p.push_str(&"0".repeat(64));
    p.push_str("\"},\"health\":\"ok\"}");
    p.into_bytes()
}

/// Bytes this process passed to write(2) so far (/proc/self/io `wchar`).
fn written() -> u64 {
    let io = std::fs::read_to_string("/proc/self/io").unwrap_or_default();
    io.lines().find_map(|l| l.strip_prefix("wchar: ")).and_then(|v| v.trim().parse().ok()).unwrap_or(0)
}

fn main() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = std::env::args().nth(1).map(std::path::PathBuf::from).unwrap_or_else(|| tmp.path().to_owned());
    let size = payload(0).len();
    println!("outbox in {}, {size}-byte results", dir.display());
    let mut seq = 0u64;
    for per_commit in [1usize, 10, 100] {
        let sub = dir.join(format!("batch-{per_commit}"));
        let mut o = Outbox::open(&sub, 100_000, 64 << 20).unwrap();
        let commits = 200;
        let (w0, t0) = (written(), Instant::now());
        for _ in 0..commits {
            for _ in 0..per_commit {
                o.push(seq, "main", payload(seq));
                seq += 1;
            }
            o.commit().unwrap();
        }
        let (ms, bytes) = (t0.elapsed().as_secs_f64() * 1e3 / commits as f64, written() - w0);
        let results = (commits * per_commit) as f64;
        println!(
            "{per_commit:>4} results/commit: {ms:7.2} ms/commit, {:7.0} bytes written/result ({:.1}x the payload)",
            bytes as f64 / results,
            bytes as f64 / results / size as f64
        );
        // Acknowledging them all: deletes are batched the same way.
        let t = Instant::now();
        for (s, _) in o.after(None, usize::MAX).unwrap() {
            o.ack(s);
        }
        o.commit().unwrap();
        println!(
            "      deleting {results} acknowledged results in one commit: {:.1} ms",
            t.elapsed().as_secs_f64() * 1e3
        );
    }

    // An outage of 10,000 results, replayed in windows of 64 as the driver does.
    let mut o = Outbox::open(&dir.join("replay"), 100_000, 64 << 20).unwrap();
    for s in 0..10_000 {
        o.push(s, "main", payload(s));
    }
    let t = Instant::now();
    o.commit().unwrap();
    println!("committing 10000 results at once: {:.0} ms", t.elapsed().as_secs_f64() * 1e3);
    let t = Instant::now();
    let (mut cursor, mut n) = (None, 0);
    loop {
        let rows = o.after(cursor, 64).unwrap();
        let Some(last) = rows.last() else { break };
        cursor = Some(last.0);
        n += rows.len();
    }
    let s = t.elapsed().as_secs_f64();
    println!("reading them back for replay, 64 at a time: {n} rows in {:.0} ms ({:.0} rows/s)", s * 1e3, n as f64 / s);
}
