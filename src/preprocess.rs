//! Frame -> model input: decode, centre crop, resize with the model's
//! filter, normalize, written as NCHW f32 straight into the model's buffer.
//!
//! Resizing happens on 8-bit RGB, as PIL does inside Hugging Face's image
//! processors, so the tensor matches what the model was trained with; the
//! convolution resize (fast_image_resize) uses the same filters and support
//! scaling as PIL. Only the crop region is colour-converted, and all scratch
//! buffers live in the [`Preprocessor`] and are reused from frame to frame.

use fast_image_resize as fr;
use serde::{Deserialize, Serialize};

use crate::frame::{Frame, PixelFormat};

#[derive(Debug, thiserror::Error)]
pub enum PreprocessError {
    #[error("cannot decode image: {0}")]
    Decode(String),
    #[error("{format:?} frame of {width}x{height} should be {expected} bytes but is {actual}")]
    Size { format: PixelFormat, width: u32, height: u32, expected: String, actual: usize },
    #[error("empty frame ({width}x{height}, {len} bytes)")]
    Empty { width: u32, height: u32, len: usize },
}

/// The resize filters lookout offers; names follow PIL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ResizeFilter {
    Bicubic,
    Bilinear,
    Nearest,
}

/// YUV -> RGB matrix. Webcams send BT.601 with limited range (Y in 16..235);
/// full range is for sources that say so (JPEG is always full range).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ColorRange {
    #[default]
    Limited,
    Full,
}

/// How the model wants its input prepared; from the model manifest, then
/// overridden by the config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreprocessParams {
    pub resize: ResizeFilter,
    /// Side of the centre square as a fraction of the frame's short side.
    pub crop_fraction: f32,
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl Default for PreprocessParams {
    /// Data2Vec-Vision's (BEiT) preprocessing.
    fn default() -> Self {
        PreprocessParams { resize: ResizeFilter::Bicubic, crop_fraction: 1.0, mean: [0.5; 3], std: [0.5; 3] }
    }
}

/// The square taken from a `width` x `height` frame: side, left, top.
/// Left and top round down, like PIL's `ImageOps.fit` at centering 0.5.
pub fn center_crop(width: u32, height: u32, fraction: f32) -> (u32, u32, u32) {
    let short = width.min(height);
    let side = ((short as f32 * fraction).round() as u32).clamp(1, short.max(1));
    (side, (width - side) / 2, (height - side) / 2)
}

pub struct Preprocessor {
    size: u32,
    filter: ResizeFilter,
    crop_fraction: f32,
    range: ColorRange,
    /// `x * scale + offset == (x / 255 - mean) / std`, per channel.
    scale: [f32; 3],
    offset: [f32; 3],
    /// Colour-converted crop of raw (non-RGB) frames.
    rgb: Vec<u8>,
    resized: fr::images::Image<'static>,
    resizer: fr::Resizer,
}

impl Preprocessor {
    pub fn new(params: &PreprocessParams, size: u32, range: ColorRange) -> Self {
        let scale = std::array::from_fn(|c| 1.0 / (255.0 * params.std[c]));
        let offset = std::array::from_fn(|c| -params.mean[c] / params.std[c]);
        Preprocessor {
            size,
            filter: params.resize,
            crop_fraction: params.crop_fraction,
            range,
            scale,
            offset,
            rgb: Vec::new(),
            resized: fr::images::Image::new(size, size, fr::PixelType::U8x3),
            resizer: fr::Resizer::new(),
        }
    }

    /// Length of the NCHW tensor `run` writes.
    pub fn output_len(&self) -> usize {
        3 * (self.size as usize).pow(2)
    }

    /// Writes the model input for `frame` into `out` (`output_len()` floats).
    pub fn run(&mut self, frame: &Frame, out: &mut [f32]) -> Result<(), PreprocessError> {
        assert_eq!(out.len(), self.output_len(), "input buffer does not match the model input");
        if frame.data.is_empty() {
            return Err(PreprocessError::Empty { width: frame.width, height: frame.height, len: 0 });
        }
        match frame.format {
            PixelFormat::Encoded => {
                let img = decode(&frame.data)?;
                let (w, h) = img.dimensions();
                self.resize_rgb(img.as_raw(), w, h, true)?;
            }
            PixelFormat::Rgb8 => {
                check_len(frame)?;
                self.resize_rgb(&frame.data, frame.width, frame.height, true)?;
            }
            _ => {
                check_len(frame)?;
                let (side, left, top) = center_crop(frame.width, frame.height, self.crop_fraction);
                convert_crop(frame, self.range, left, top, side, &mut self.rgb);
                let rgb = std::mem::take(&mut self.rgb);
                let r = self.resize_rgb(&rgb, side, side, false);
                self.rgb = rgb;
                r?;
            }
        }
        self.normalize(out);
        Ok(())
    }

    fn resize_rgb(&mut self, rgb: &[u8], w: u32, h: u32, crop: bool) -> Result<(), PreprocessError> {
        let src = fr::images::ImageRef::new(w, h, rgb, fr::PixelType::U8x3)
            .map_err(|e| PreprocessError::Decode(e.to_string()))?;
        let (side, left, top) = if crop { center_crop(w, h, self.crop_fraction) } else { (w, 0, 0) };
        let alg = match self.filter {
            ResizeFilter::Bicubic => fr::ResizeAlg::Convolution(fr::FilterType::CatmullRom),
            ResizeFilter::Bilinear => fr::ResizeAlg::Convolution(fr::FilterType::Bilinear),
            ResizeFilter::Nearest => fr::ResizeAlg::Nearest,
        };
        // A cropped view, not a crop box: the reference crops first, so the
        // filter must not see pixels outside the square.
        let square = fr::images::CroppedImage::new(&src, left, top, side, side)
            .map_err(|e| PreprocessError::Decode(e.to_string()))?;
        let opts = fr::ResizeOptions::new().resize_alg(alg);
        self.resizer.resize(&square, &mut self.resized, &opts).map_err(|e| PreprocessError::Decode(e.to_string()))
    }

    fn normalize(&self, out: &mut [f32]) {
        let plane = (self.size as usize).pow(2);
        let (r, rest) = out.split_at_mut(plane);
        let (g, b) = rest.split_at_mut(plane);
        let [sr, sg, sb] = self.scale;
        let [or, og, ob] = self.offset;
        for (i, px) in self.resized.buffer().chunks_exact(3).enumerate() {
            r[i] = px[0] as f32 * sr + or;
            g[i] = px[1] as f32 * sg + og;
            b[i] = px[2] as f32 * sb + ob;
        }
    }
}

fn check_len(frame: &Frame) -> Result<(), PreprocessError> {
    let expected = frame.format.frame_len(frame.width, frame.height);
    if frame.width == 0 || frame.height == 0 {
        return Err(PreprocessError::Empty { width: frame.width, height: frame.height, len: frame.data.len() });
    }
    match expected {
        Some(n) if n == frame.data.len() => Ok(()),
        _ => Err(PreprocessError::Size {
            format: frame.format,
            width: frame.width,
            height: frame.height,
            expected: expected.map_or("impossible for this format (odd size)".into(), |n| n.to_string()),
            actual: frame.data.len(),
        }),
    }
}

/// Decodes JPEG/PNG/BMP to RGB8. A JPEG without its end-of-image marker is
/// rejected: decoders happily fill a truncated JPEG with gray, and a gray
/// image sent to the model is a silent wrong answer.
pub fn decode(data: &[u8]) -> Result<image::RgbImage, PreprocessError> {
    if data.starts_with(&[0xFF, 0xD8]) {
        let end = data.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
        if end < 4 || data[end - 2..end] != [0xFF, 0xD9] {
            return Err(PreprocessError::Decode("truncated JPEG (no end-of-image marker)".into()));
        }
    }
    let img = image::load_from_memory(data).map_err(|e| PreprocessError::Decode(e.to_string()))?;
    if img.width() == 0 || img.height() == 0 {
        return Err(PreprocessError::Empty { width: img.width(), height: img.height(), len: data.len() });
    }
    Ok(img.into_rgb8())
}

/// Converts the `side` x `side` square at (`left`, `top`) of a raw frame to
/// packed RGB8 in `rgb`.
fn convert_crop(frame: &Frame, range: ColorRange, left: u32, top: u32, side: u32, rgb: &mut Vec<u8>) {
    let (w, side, left, top) = (frame.width as usize, side as usize, left as usize, top as usize);
    rgb.resize(side * side * 3, 0);
    let d = &frame.data;
    let yuv = Yuv::new(range);
    for (row, out) in rgb.chunks_exact_mut(side * 3).enumerate() {
        let y0 = top + row;
        for (col, px) in out.chunks_exact_mut(3).enumerate() {
            let x = left + col;
            let rgb_px = match frame.format {
                PixelFormat::Bgr8 => {
                    let i = (y0 * w + x) * 3;
                    [d[i + 2], d[i + 1], d[i]]
                }
                PixelFormat::Gray8 => [d[y0 * w + x]; 3],
                PixelFormat::Yuyv => {
                    let pair = (y0 * w + (x & !1)) * 2;
                    let luma = d[pair + if x & 1 == 0 { 0 } else { 2 }];
                    yuv.rgb(luma, d[pair + 1], d[pair + 3])
                }
                PixelFormat::Nv12 => {
                    let h = frame.height as usize;
                    let uv = w * h + (y0 / 2) * w + (x & !1);
                    yuv.rgb(d[y0 * w + x], d[uv], d[uv + 1])
                }
                PixelFormat::Rgb8 => {
                    let i = (y0 * w + x) * 3;
                    [d[i], d[i + 1], d[i + 2]]
                }
                PixelFormat::Encoded => unreachable!("encoded frames are decoded, not converted"),
            };
            px.copy_from_slice(&rgb_px);
        }
    }
}

/// BT.601 YCbCr -> RGB.
struct Yuv {
    y_off: f32,
    y_gain: f32,
    c_gain: f32,
}

impl Yuv {
    fn new(range: ColorRange) -> Self {
        match range {
            ColorRange::Limited => Yuv { y_off: 16.0, y_gain: 255.0 / 219.0, c_gain: 255.0 / 224.0 },
            ColorRange::Full => Yuv { y_off: 0.0, y_gain: 1.0, c_gain: 1.0 },
        }
    }

    fn rgb(&self, y: u8, u: u8, v: u8) -> [u8; 3] {
        let y = (y as f32 - self.y_off) * self.y_gain;
        let u = (u as f32 - 128.0) * self.c_gain;
        let v = (v as f32 - 128.0) * self.c_gain;
        let c = |x: f32| x.round().clamp(0.0, 255.0) as u8;
        [c(y + 1.402 * v), c(y - 0.344_136 * u - 0.714_136 * v), c(y + 1.772 * u)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;

    fn frame(format: PixelFormat, width: u32, height: u32, data: Vec<u8>) -> Frame {
        Frame { seq: 0, captured_at: SystemTime::now(), width, height, format, data, origin: "test".into() }
    }

    fn params(filter: ResizeFilter) -> PreprocessParams {
        PreprocessParams { resize: filter, ..Default::default() }
    }

    #[test]
    fn crop_is_centred_on_the_short_side() {
        assert_eq!(center_crop(128, 96, 1.0), (96, 16, 0));
        assert_eq!(center_crop(96, 128, 0.5), (48, 24, 40));
        assert_eq!(center_crop(5, 5, 1.0), (5, 0, 0));
    }

    #[test]
    fn normalizes_a_solid_colour_exactly() {
        let mut p = Preprocessor::new(&params(ResizeFilter::Bicubic), 4, ColorRange::Full);
        let f = frame(PixelFormat::Rgb8, 8, 6, [255u8, 0, 51].repeat(48));
        let mut out = vec![0.0; p.output_len()];
        p.run(&f, &mut out).unwrap();
        // (x/255 - 0.5)/0.5 for 255, 0, 51
        assert!(out[..16].iter().all(|v| (v - 1.0).abs() < 1e-6));
        assert!(out[16..32].iter().all(|v| (v + 1.0).abs() < 1e-6));
        assert!(out[32..].iter().all(|v| (v - (51.0 / 127.5 - 1.0)).abs() < 1e-6));
    }

    #[test]
    fn raw_formats_agree_with_rgb() {
        // Gray and BGR frames of the same picture give the RGB result.
        let (w, h) = (6u32, 4u32);
        let gray: Vec<u8> = (0..w * h).map(|i| (i * 10) as u8).collect();
        let rgb: Vec<u8> = gray.iter().flat_map(|&g| [g, g, g]).collect();
        let mut p = Preprocessor::new(&params(ResizeFilter::Bilinear), 2, ColorRange::Full);
        let mut a = vec![0.0; p.output_len()];
        let mut b = a.clone();
        p.run(&frame(PixelFormat::Rgb8, w, h, rgb.clone()), &mut a).unwrap();
        p.run(&frame(PixelFormat::Gray8, w, h, gray), &mut b).unwrap();
        assert_eq!(a, b);
        let bgr: Vec<u8> = rgb.chunks(3).flat_map(|p| [p[2], p[1], p[0]]).collect();
        p.run(&frame(PixelFormat::Bgr8, w, h, bgr), &mut b).unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn limited_range_yuv_maps_16_235_to_black_white() {
        let yuv = Yuv::new(ColorRange::Limited);
        assert_eq!(yuv.rgb(16, 128, 128), [0, 0, 0]);
        assert_eq!(yuv.rgb(235, 128, 128), [255, 255, 255]);
        let full = Yuv::new(ColorRange::Full);
        assert_eq!(full.rgb(0, 128, 128), [0, 0, 0]);
        // pure red in BT.601 full range
        assert_eq!(full.rgb(76, 85, 255), [254, 0, 0]);
    }

    #[test]
    fn bad_frames_are_typed_errors() {
        let mut p = Preprocessor::new(&params(ResizeFilter::Nearest), 2, ColorRange::Limited);
        let mut out = vec![0.0; p.output_len()];
        let cases = [
            (frame(PixelFormat::Rgb8, 4, 4, vec![0; 47]), "should be 48 bytes but is 47"),
            (frame(PixelFormat::Yuyv, 3, 2, vec![0; 12]), "odd size"),
            (frame(PixelFormat::Nv12, 4, 4, vec![]), "empty frame"),
            (frame(PixelFormat::Rgb8, 0, 4, vec![1]), "empty frame"),
            (frame(PixelFormat::Encoded, 0, 0, vec![0xFF, 0xD8, 0xFF, 0xE0, 1, 2, 3]), "truncated JPEG"),
            (frame(PixelFormat::Encoded, 0, 0, b"not an image".to_vec()), "cannot decode"),
        ];
        for (f, expect) in cases {
            let e = p.run(&f, &mut out).unwrap_err().to_string();
            assert!(e.contains(expect), "{:?} {}x{}: {e}", f.format, f.width, f.height);
        }
    }

    #[test]
    fn truncated_real_jpeg_is_rejected_and_whole_one_decodes() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/digits/samples/0-zero.jpg");
        let data = std::fs::read(path).unwrap();
        assert_eq!(decode(&data).unwrap().dimensions(), (128, 96));
        let e = decode(&data[..data.len() / 2]).unwrap_err().to_string();
        assert!(e.contains("truncated JPEG"), "{e}");
    }
}
