//! What the trigger stage costs per result on a 1000-class model: softmax
//! over the logits plus `Triggers::observe` with the ImageNet groups and
//! 3-of-5 smoothing. Prints the median of several runs.
//!
//!     cargo run --release --example bench_triggers

use std::time::{Duration, Instant};

use lookout::postprocess::softmax;
use lookout::triggers::{BuiltinGroups, PublishPolicy, Triggers, TriggersConfig};

fn main() {
    let labels: Vec<String> =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/models/imagenet-1k/labels.txt"))
            .expect("labels")
            .lines()
            .map(String::from)
            .collect();
    let cfg = TriggersConfig {
        enabled: true,
        builtin_groups: BuiltinGroups::Imagenet,
        votes: 3,
        window: 5,
        hysteresis: 0.1,
        margin: 0.05,
        publish: PublishPolicy::Change,
        ..Default::default()
    };
    let mut t = Triggers::new(&cfg, &labels).expect("triggers");
    // Deterministic pseudo-random logits, 64 different frames.
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let frames: Vec<Vec<f32>> = (0..64)
        .map(|_| {
            (0..1000)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    (x >> 40) as f32 / (1u64 << 24) as f32 * 12.0
                })
                .collect()
        })
        .collect();
    let n = 20_000;
    let t0 = Instant::now();
    let mut runs: Vec<Duration> = vec![];
    let mut changes = 0;
    for _ in 0..7 {
        let start = Instant::now();
        for i in 0..n {
            let probs = softmax(&frames[i % frames.len()]);
            changes += t.observe(&probs, t0 + Duration::from_millis(i as u64 * 100)).changed as usize;
        }
        runs.push(start.elapsed() / n as u32);
    }
    runs.sort();
    println!(
        "softmax + observe, 1000 classes, {} groups and classes: median {:.2} us per result (min {:.2}, max {:.2}; {changes} state changes)",
        t.groups().len(),
        runs[3].as_secs_f64() * 1e6,
        runs[0].as_secs_f64() * 1e6,
        runs[6].as_secs_f64() * 1e6
    );
}
