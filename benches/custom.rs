//! What custom classes cost per result and per example: classifying an
//! embedding of the large model's width (1024) against taught classes,
//! copying the embedding out of the model's output, and the bytes an
//! example keeps (its embedding in memory; its JSON and picture on disk).
//! The extra model output itself is measured with `lookout bench` on the
//! large model with and without it (tools/FEWSHOT.md).
//!
//! `cargo bench --bench custom`; under `cargo test` it runs once, small.

use std::time::Instant;

use lookout::custom::{ClassStore, Prototypes, EXAMPLE_QUALITY, EXAMPLE_SIDE};
use lookout::frame::Frame;
use lookout::preprocess::ColorRange;
use lookout::snapshot;

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines().find(|l| l.starts_with("model name")).map(|l| l[l.find(':').map_or(0, |i| i + 2)..].to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    println!("CPU: {cpu}, 1 thread");
    let width = 1024;
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut rand = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    };
    let iters = if bench { 200_000 } else { 10 };
    for (classes, per_class) in [(2usize, 5usize), (10, 20), (50, 20)] {
        let labels: Vec<String> = (0..classes).map(|c| format!("c{c}")).collect();
        let centres: Vec<Vec<f32>> = (0..classes).map(|_| (0..width).map(|_| rand()).collect()).collect();
        let examples: Vec<(usize, Vec<f32>)> = (0..classes * per_class)
            .map(|i| (i % classes, centres[i % classes].iter().map(|v| v + 0.5 * rand()).collect()))
            .collect();
        let refs: Vec<(usize, &[f32])> = examples.iter().map(|(c, e)| (*c, &e[..])).collect();
        let t = Instant::now();
        let p = Prototypes::fit(&labels, &refs);
        let fit = t.elapsed();
        let query: Vec<f32> = centres[1].iter().map(|v| v + 0.5 * rand()).collect();
        let t = Instant::now();
        let mut hits = 0;
        for _ in 0..iters {
            hits += (std::hint::black_box(&p).classify(std::hint::black_box(&query)).unwrap().label == "c1") as usize;
        }
        let per = t.elapsed().as_secs_f64() / iters as f64;
        assert_eq!(hits, iters, "the query is nearest its own class");
        println!(
            "classify 1 x {width} against {classes} classes ({} examples): {:.2} us per result; fitting the classes {:.2} ms",
            classes * per_class,
            per * 1e6,
            fit.as_secs_f64() * 1e3
        );
    }
    // The copy out of the model's output buffer (TractClassifier::infer).
    let out: Vec<f32> = (0..width).map(|_| rand()).collect();
    let mut kept = Vec::with_capacity(width);
    let t = Instant::now();
    for _ in 0..iters {
        kept.clear();
        kept.extend_from_slice(std::hint::black_box(&out));
    }
    println!("copying the {width}-value embedding: {:.3} us", t.elapsed().as_secs_f64() / iters as f64 * 1e6);

    // One example of a real photo: the view as stored, the files on disk.
    let photo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/preprocess/china.jpg");
    let frame = Frame::encoded(0, std::fs::read(&photo).unwrap(), "china.jpg");
    let t = Instant::now();
    let view = snapshot::view_rgb(&frame, ColorRange::Full, None, 1.0, EXAMPLE_SIDE).unwrap();
    let jpeg = snapshot::jpeg(&view, EXAMPLE_QUALITY).unwrap();
    let encode = t.elapsed();
    let dir = tempfile::tempdir().unwrap();
    let mut store = ClassStore::open(dir.path(), &"0".repeat(64)).unwrap();
    let t = Instant::now();
    let id = store.add("photo", &out, &jpeg).unwrap();
    let add = t.elapsed();
    let json = std::fs::metadata(dir.path().join(format!("photo/{id}.json"))).unwrap().len();
    println!(
        "one example of a 480x320 photo: picture {EXAMPLE_SIDE}x{EXAMPLE_SIDE} q{EXAMPLE_QUALITY} {} bytes (made in {:.1} ms), \
         embedding {} bytes in memory, {json} bytes of JSON on disk; storing it (two synced files) {:.1} ms",
        jpeg.len(),
        encode.as_secs_f64() * 1e3,
        width * 4,
        add.as_secs_f64() * 1e3
    );
}
