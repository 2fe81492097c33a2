//! What a view's snapshot costs: decode the frame, cut the region, scale it
//! to `max_side`, encode it as JPEG (what the daemon does when a view's
//! state changes or a command asks). Prints milliseconds per snapshot for
//! a JPEG and a YUYV camera frame; compare with the model's inference time
//! (`lookout bench`, BENCHMARKS.md).
//!
//! cargo bench --bench snapshot

use std::hint::black_box;
use std::time::{Duration, Instant, SystemTime};

use lookout::frame::{Frame, PixelFormat};
use lookout::preprocess::ColorRange;
use lookout::snapshot::{jpeg, view_rgb};

fn per_call(mut f: impl FnMut()) -> Duration {
    let mut runs: Vec<Duration> = (0..9)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .collect();
    runs.sort();
    runs[4]
}

/// A camera-like picture: gradients and noise.
fn picture(w: u32, h: u32) -> image::RgbImage {
    let mut x = 1u32;
    image::RgbImage::from_fn(w, h, |i, j| {
        x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        image::Rgb([(i % 256) as u8, (j % 256) as u8, (x >> 24) as u8])
    })
}

fn frame(format: PixelFormat, w: u32, h: u32, data: Vec<u8>) -> Frame {
    Frame { seq: 0, captured_at: SystemTime::now(), width: w, height: h, format, data, origin: "bench".into() }
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("snapshot bench: skipped (run it with cargo bench)");
        return;
    }
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines().find(|l| l.starts_with("model name")).map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_default();
    println!("snapshot cost per view, ms (median of 9), {cpu}");
    println!("| frame | region | max_side | ms | JPEG bytes |");
    println!("|---|---|---|---|---|");
    for (w, h) in [(640, 480), (1280, 720), (1920, 1080)] {
        let pic = picture(w, h);
        let mut encoded = vec![];
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut encoded, 85).encode_image(&pic).unwrap();
        let yuyv: Vec<u8> =
            pic.pixels().collect::<Vec<_>>().chunks(2).flat_map(|p| [p[0].0[1], 128, p[1].0[1], 128]).collect();
        let frames =
            [("MJPEG", frame(PixelFormat::Encoded, 0, 0, encoded)), ("YUYV", frame(PixelFormat::Yuyv, w, h, yuyv))];
        for (kind, f) in &frames {
            for (region, roi) in [("whole", None), ("quarter", Some([0.25f32, 0.25, 0.5, 0.5]))] {
                for max_side in [224u32, 640] {
                    let mut bytes = 0;
                    let t = per_call(|| {
                        let img = view_rgb(black_box(f), ColorRange::Limited, roi, 1.0, max_side).unwrap();
                        bytes = jpeg(&img, 80).unwrap().len();
                    });
                    println!("| {kind} {w}x{h} | {region} | {max_side} | {:.2} | {bytes} |", t.as_secs_f64() * 1e3);
                }
            }
        }
    }
}
