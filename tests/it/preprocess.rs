//! Fidelity against the reference: Hugging Face's BEiT image processor (PIL
//! backend) on real photos, for every pixel format, written by
//! tools/make_preprocess_fixtures.py into tests/fixtures/preprocess/.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use lookout::frame::{Frame, PixelFormat};
use lookout::preprocess::{ColorRange, PreprocessParams, Preprocessor, ResizeFilter};
use serde::Deserialize;

#[derive(Deserialize)]
struct Cases {
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    photo: String,
    case: String,
    input: String,
    reference: String,
    size: u32,
    format: String,
    filter: ResizeFilter,
    color_range: ColorRange,
    roi: Option<[f32; 4]>,
    crop_fraction: f32,
    width: u32,
    height: u32,
}

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/preprocess")
}

fn cases() -> Vec<Case> {
    let text = std::fs::read_to_string(dir().join("cases.json")).unwrap();
    serde_json::from_str::<Cases>(&text).unwrap().cases
}

/// The exact bytes a PNG fixture holds (raw YUV is stored as 8-bit gray).
fn png_bytes(name: &str) -> Vec<u8> {
    image::open(dir().join(name)).unwrap().into_bytes()
}

fn frame(case: &Case) -> Frame {
    let (format, data) = match case.format.as_str() {
        "rgb8" => (PixelFormat::Rgb8, png_bytes(&case.input)),
        "bgr8" => {
            let rgb = png_bytes(&case.input);
            (PixelFormat::Bgr8, rgb.chunks(3).flat_map(|p| [p[2], p[1], p[0]]).collect())
        }
        "gray8" => (PixelFormat::Gray8, png_bytes(&case.input)),
        "yuyv" => (PixelFormat::Yuyv, png_bytes(&case.input)),
        "nv12" => (PixelFormat::Nv12, png_bytes(&case.input)),
        "jpeg" => (PixelFormat::Encoded, std::fs::read(dir().join(&case.input)).unwrap()),
        other => panic!("unknown format {other} in cases.json"),
    };
    let (width, height) = if format == PixelFormat::Encoded { (0, 0) } else { (case.width, case.height) };
    Frame { seq: 0, captured_at: SystemTime::now(), width, height, format, data, origin: case.input.clone() }
}

/// The processor's tensor: the fixture stores the uint8 image it normalized
/// (checked bit-exact by the script), so the same affine map restores it.
fn reference(case: &Case) -> Vec<f32> {
    let img = image::open(dir().join(&case.reference)).unwrap().into_rgb8();
    assert_eq!(img.dimensions(), (case.size, case.size), "{}", case.reference);
    let plane = (case.size * case.size) as usize;
    let mut t = vec![0.0; 3 * plane];
    for (i, px) in img.pixels().enumerate() {
        for c in 0..3 {
            t[c * plane + i] = ((px[c] as f64 / 255.0 - 0.5) / 0.5) as f32;
        }
    }
    t
}

#[test]
fn every_format_matches_the_beit_reference_on_real_photos() {
    let cases = cases();
    assert!(cases.len() >= 16, "cases.json lists {} cases", cases.len());
    let mut report = Vec::new();
    let mut failures = Vec::new();
    for case in &cases {
        let params = PreprocessParams {
            resize: case.filter,
            crop_fraction: case.crop_fraction,
            roi: case.roi,
            ..Default::default()
        };
        let mut pre = Preprocessor::new(&params, case.size, case.color_range);
        let mut out = vec![f32::NAN; pre.output_len()];
        pre.run(&frame(case), &mut out).unwrap_or_else(|e| panic!("{}.{}: {e}", case.photo, case.case));
        let want = reference(case);
        let diff: Vec<f32> = out.iter().zip(&want).map(|(a, b)| (a - b).abs()).collect();
        let mean = diff.iter().sum::<f32>() / diff.len() as f32;
        let max = diff.iter().cloned().fold(0.0, f32::max);
        report.push(format!("{}.{}: mean {mean:.5} max {max:.4}", case.photo, case.case));
        // NaN compares false: a value never written fails here too.
        if !(mean <= 0.01 && max <= 0.1) {
            failures.push(report.last().unwrap().clone());
        }
    }
    println!("{}", report.join("\n"));
    assert!(failures.is_empty(), "beyond mean 0.01 / max 0.1:\n{}", failures.join("\n"));
    for format in ["rgb8", "bgr8", "gray8", "yuyv", "nv12", "jpeg"] {
        assert!(cases.iter().any(|c| c.format == format), "no fixture for {format}");
    }
}

#[test]
fn buffers_are_reused_without_leaking_one_frame_into_the_next() {
    // Alternating formats and sizes through one Preprocessor gives each
    // frame the result it gets alone.
    let cases = cases();
    let pick = |name: &str| cases.iter().find(|c| c.photo == "china" && c.case == name).unwrap();
    let order = ["yuyv-limited", "jpeg", "nv12-limited", "yuyv-limited", "jpeg"];
    let mut shared = Preprocessor::new(&PreprocessParams::default(), 112, ColorRange::Limited);
    for name in order {
        let f = frame(pick(name));
        let mut alone = Preprocessor::new(&PreprocessParams::default(), 112, ColorRange::Limited);
        let (mut a, mut b) = (vec![0.0; alone.output_len()], vec![0.0; alone.output_len()]);
        alone.run(&f, &mut a).unwrap();
        shared.run(&f, &mut b).unwrap();
        assert_eq!(a, b, "{name}");
    }
}

#[test]
fn corrupt_jpegs_are_errors_not_gray_pictures() {
    let jpeg = std::fs::read(dir().join("china.jpg")).unwrap();
    let mut pre = Preprocessor::new(&PreprocessParams::default(), 112, ColorRange::Limited);
    let mut out = vec![0.0; pre.output_len()];
    let run = |pre: &mut Preprocessor, out: &mut [f32], data: Vec<u8>| {
        let f = Frame::encoded(0, data, "test");
        pre.run(&f, out).map_err(|e| e.to_string())
    };
    // Cut in the middle of the scan.
    let e = run(&mut pre, &mut out, jpeg[..jpeg.len() / 2].to_vec()).unwrap_err();
    assert!(e.contains("truncated JPEG"), "{e}");
    // Cut in the middle with an end marker glued on: what a camera driver
    // that drops USB packets delivers.
    let mut glued = jpeg[..jpeg.len() / 2].to_vec();
    glued.extend_from_slice(&[0xFF, 0xD9]);
    let e = run(&mut pre, &mut out, glued).unwrap_err();
    assert!(e.contains("JPEG"), "{e}");
    // Headers only.
    let sos = jpeg.windows(2).position(|w| w == [0xFF, 0xDA]).unwrap();
    let mut headers = jpeg[..sos].to_vec();
    headers.extend_from_slice(&[0xFF, 0xD9]);
    let e = run(&mut pre, &mut out, headers).unwrap_err();
    assert!(e.contains("JPEG"), "{e}");
    // The whole file still works after the failures.
    run(&mut pre, &mut out, jpeg).unwrap();
    assert!(out.iter().all(|v| v.is_finite() && v.abs() <= 1.0));
}
