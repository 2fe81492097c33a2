//! What capture-side work costs per frame: splitting an MJPEG stream and
//! the health checks (fingerprint + luma statistics). Prints figures;
//! BENCHMARKS.md records them.
//!
//! cargo bench --bench capture

use std::hint::black_box;
use std::time::{Duration, Instant, SystemTime};

use lookout::capture::health::{fingerprint, luma_of_raw};
use lookout::capture::mjpeg::Splitter;
use lookout::frame::{Frame, PixelFormat};

/// Median time per call of `f` over runs of about 0.2 s.
fn per_call(mut f: impl FnMut()) -> Duration {
    let mut n = 1u32;
    loop {
        let t = Instant::now();
        for _ in 0..n {
            f();
        }
        if t.elapsed() > Duration::from_millis(50) {
            break;
        }
        n *= 2;
    }
    let mut runs: Vec<Duration> = (0..7)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..n {
                f();
            }
            t.elapsed() / n
        })
        .collect();
    runs.sort();
    runs[3]
}

/// A noisy 640x480 JPEG, about the size a webcam sends.
fn jpeg(w: u32, h: u32) -> Vec<u8> {
    let mut x = 1u32;
    let img = image::RgbImage::from_fn(w, h, |i, j| {
        x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        image::Rgb([(i % 256) as u8, (j % 256) as u8, (x >> 24) as u8])
    });
    let mut out = vec![];
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 80).encode_image(&img).unwrap();
    out
}

fn main() {
    // `cargo test --all-targets` (CI) runs this too, unoptimized: only
    // `cargo bench` (which passes --bench) measures.
    if !std::env::args().any(|a| a == "--bench") {
        println!("capture bench: skipped (run it with cargo bench)");
        return;
    }
    for (w, h) in [(640, 480), (1280, 720)] {
        let one = jpeg(w, h);
        let stream: Vec<u8> = (0..10).flat_map(|_| one.iter().copied()).collect();
        let t = per_call(|| {
            let mut s = Splitter::default();
            let mut frames = 0;
            for chunk in stream.chunks(64 << 10) {
                s.push(chunk);
                while let Some(r) = s.next_frame() {
                    frames += usize::from(r.is_ok());
                }
            }
            assert_eq!(frames, 10);
        }) / 10;
        println!(
            "mjpeg split  {w}x{h} JPEG ({} KiB), 64 KiB reads: {:>8.1} us/frame ({:.0} MB/s)",
            one.len() >> 10,
            t.as_secs_f64() * 1e6,
            one.len() as f64 / t.as_secs_f64() / 1e6
        );
    }
    for (w, h) in [(640, 480), (1920, 1080)] {
        for (format, len) in [(PixelFormat::Yuyv, w * h * 2), (PixelFormat::Nv12, w * h * 3 / 2)] {
            let frame = Frame {
                seq: 0,
                captured_at: SystemTime::now(),
                width: w,
                height: h,
                format,
                data: (0..len).map(|i| (i * 7 % 251) as u8).collect(),
                origin: "bench".into(),
            };
            let t = per_call(|| {
                black_box(fingerprint(black_box(&frame.data)));
                black_box(luma_of_raw(black_box(&frame)));
            });
            println!("health check {w}x{h} {format:?}: {:>8.1} us/frame", t.as_secs_f64() * 1e6);
        }
    }
}
