//! Raw frame conversion (RGB, BGR, gray, YUYV, NV12) and encoded frames
//! through the preprocessor with arbitrary sizes, crops and regions of
//! interest: a frame is converted into finite values or refused with an
//! error, never a panic or an out-of-bounds access.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lookout::frame::{Frame, PixelFormat};
use lookout::preprocess::{roi_problem, ColorRange, PreprocessParams, Preprocessor, ResizeFilter};

/// The first 12 bytes choose the frame and the preprocessing (read by
/// hand: arbitrary's derive would change dependency features and rebuild
/// tract for the fuzz build); the rest are the pixels.
struct Input {
    format: u8,
    width: u16,
    height: u16,
    /// The model's input side (8..=71).
    size: u8,
    filter: u8,
    full_range: bool,
    crop: u8,
    roi: Option<[u8; 4]>,
    /// Make the data exactly as long as the format needs (else as given).
    exact: bool,
    data: Vec<u8>,
}

impl Input {
    fn parse(b: &[u8]) -> Option<Input> {
        let (h, data) = (b.get(..12)?, &b[12..]);
        Some(Input {
            format: h[0],
            width: u16::from_le_bytes([h[1], h[2]]),
            height: u16::from_le_bytes([h[3], h[4]]),
            size: h[5],
            filter: h[6] & 3,
            full_range: h[6] & 4 != 0,
            exact: h[6] & 8 != 0,
            crop: h[7],
            roi: (h[6] & 16 != 0).then(|| [h[8], h[9], h[10], h[11]]),
            data: data.to_vec(),
        })
    }
}

fuzz_target!(|bytes: &[u8]| {
    let Some(i) = Input::parse(bytes) else { return };
    let format = match i.format % 6 {
        0 => PixelFormat::Rgb8,
        1 => PixelFormat::Bgr8,
        2 => PixelFormat::Gray8,
        3 => PixelFormat::Yuyv,
        4 => PixelFormat::Nv12,
        _ => PixelFormat::Encoded,
    };
    // Small frames: the point is the edges, not the allocator.
    let (width, height) = (u32::from(i.width % 300), u32::from(i.height % 300));
    let mut data = i.data;
    if i.exact && !data.is_empty() {
        if let Some(n) = format.frame_len(width, height) {
            data = data.iter().copied().cycle().take(n).collect();
        }
    }
    let roi = i.roi.map(|r| r.map(|v| f32::from(v) / 255.0));
    if roi.and_then(roi_problem).is_some() {
        return; // the config refuses it
    }
    let params = PreprocessParams {
        resize: match i.filter % 3 {
            0 => ResizeFilter::Bicubic,
            1 => ResizeFilter::Bilinear,
            _ => ResizeFilter::Nearest,
        },
        crop_fraction: (f32::from(i.crop) + 1.0) / 256.0,
        mean: [0.5; 3],
        std: [0.5; 3],
        roi,
    };
    let size = 8 + u32::from(i.size % 64);
    let range = if i.full_range { ColorRange::Full } else { ColorRange::Limited };
    let mut pre = Preprocessor::new(&params, size, range);
    let mut out = vec![0.0f32; pre.output_len()];
    let frame = Frame { width, height, format, data, ..Frame::encoded(0, vec![], "fuzz") };
    if pre.run(&frame, &mut out).is_ok() {
        assert!(out.iter().all(|v| v.is_finite()));
    }
});
