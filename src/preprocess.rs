//! Frame -> model input: decode, crop, resize with the model's filter,
//! normalize, written as NCHW f32 straight into the model's buffer.
//!
//! Resizing happens on 8-bit pixels, as PIL does inside Hugging Face's image
//! processors, so the tensor matches what the model was trained with
//! (`tests/it/preprocess.rs` checks it against `BeitImageProcessor` output);
//! fast_image_resize's convolution is a port of PIL's, with the same filters,
//! support scaling and 8-bit rounding between its two passes.
//!
//! Nothing full-frame is copied: RGB8, BGR8 and GRAY8 frames are resized
//! through a view of the crop (BGR is resized as is and its channels swapped
//! while normalizing; gray is resized as one channel), YUYV and NV12 convert
//! only the crop, and JPEG decodes into a buffer kept between frames. All
//! scratch buffers live in the [`Preprocessor`].

use fast_image_resize as fr;
use serde::{Deserialize, Serialize};

use crate::frame::{Frame, PixelFormat};

#[derive(Debug, thiserror::Error)]
pub enum PreprocessError {
    #[error("cannot decode image: {0}")]
    Decode(String),
    #[error("{format:?} frame of {width}x{height} should be {expected} bytes but is {actual} (check the pixel format and size the source declares)")]
    Size { format: PixelFormat, width: u32, height: u32, expected: usize, actual: usize },
    #[error("{format:?} frame of {width}x{height} has an odd size; YUYV needs an even width, NV12 an even width and height (check the size the source declares)")]
    OddSize { format: PixelFormat, width: u32, height: u32 },
    #[error("empty frame ({width}x{height}, {len} bytes)")]
    Empty { width: u32, height: u32, len: usize },
}

/// The resize filters lookout offers; names and kernels follow PIL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ResizeFilter {
    Bicubic,
    Bilinear,
    Nearest,
}

/// YUV -> RGB matrix, always BT.601 (what UVC webcams and the Pi's and
/// Jetson's ISPs send at these resolutions). Limited range (Y in 16..235, Cb
/// and Cr in 16..240) is the default because that is what webcams send;
/// full range is for sources that say so. JPEG is always full range and is
/// not affected by this setting.
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
    /// Side of the centre square as a fraction of the short side of the
    /// frame (or of the region of interest).
    pub crop_fraction: f32,
    pub mean: [f32; 3],
    pub std: [f32; 3],
    /// Region of interest `[x, y, w, h]` as fractions of the frame, for
    /// cameras that see more than the scene that matters; the centre crop
    /// is taken inside it. A property of the installation, so it is set in
    /// the config, never in a model manifest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub roi: Option<[f32; 4]>,
}

impl Default for PreprocessParams {
    /// Data2Vec-Vision's (BEiT) preprocessing.
    fn default() -> Self {
        PreprocessParams { resize: ResizeFilter::Bicubic, crop_fraction: 1.0, mean: [0.5; 3], std: [0.5; 3], roi: None }
    }
}

/// The square taken from a `width` x `height` frame: side, left, top.
/// Left and top round down, like PIL's `ImageOps.fit` at centering 0.5.
pub fn center_crop(width: u32, height: u32, fraction: f32) -> (u32, u32, u32) {
    let short = width.min(height);
    let side = ((short as f32 * fraction).round() as u32).clamp(1, short.max(1));
    (side, (width - side) / 2, (height - side) / 2)
}

/// The square the model sees, `(side, left, top)`: the region of interest
/// (rounded to whole pixels, at least one pixel, clipped to the frame), then
/// its centre crop. `tools/make_preprocess_fixtures.py` mirrors this.
pub fn crop_region(width: u32, height: u32, roi: Option<[f32; 4]>, fraction: f32) -> (u32, u32, u32) {
    let (x0, y0, w, h) = match roi {
        None => (0, 0, width, height),
        Some([x, y, w, h]) => {
            let px = |f: f32, of: u32| (f * of as f32).round().max(0.0) as u32;
            let x0 = px(x, width).min(width.saturating_sub(1));
            let y0 = px(y, height).min(height.saturating_sub(1));
            (x0, y0, px(w, width).clamp(1, width - x0), px(h, height).clamp(1, height - y0))
        }
    };
    let (side, left, top) = center_crop(w, h, fraction);
    (side, x0 + left, y0 + top)
}

/// Checks a region of interest from a config file: the reason it is
/// unusable, for the config error message.
pub fn roi_problem(roi: [f32; 4]) -> Option<String> {
    let [x, y, w, h] = roi;
    if !roi.iter().all(|v| v.is_finite() && (0.0..=1.0).contains(v)) {
        return Some(format!("{roi:?} has values outside 0..1; give [x, y, w, h] as fractions of the frame"));
    }
    if w <= 0.0 || h <= 0.0 {
        return Some(format!("{roi:?} has zero width or height; give [x, y, w, h] with w and h above 0"));
    }
    if x + w > 1.0 + 1e-6 || y + h > 1.0 + 1e-6 {
        return Some(format!("{roi:?} reaches outside the frame; x + w and y + h must be at most 1"));
    }
    None
}

/// Which channel of the resized image goes to which output plane.
#[derive(Clone, Copy)]
enum Channels {
    Rgb,
    Bgr,
    Gray,
}

pub struct Preprocessor {
    size: u32,
    filter: ResizeFilter,
    crop_fraction: f32,
    roi: Option<[f32; 4]>,
    yuv: Yuv,
    /// `x * scale + offset == (x / 255 - mean) / std`, per channel.
    scale: [f32; 3],
    offset: [f32; 3],
    /// Colour-converted crop of YUV frames (or YUYV's luma), and decoded
    /// JPEG/PNG frames.
    rgb: Vec<u8>,
    resized: fr::images::Image<'static>,
    resized_gray: fr::images::Image<'static>,
    /// Resized chroma of YUV frames: YUYV's as (Y0, U, Y1, V) pixels,
    /// NV12's interleaved plane (their luma goes to resized_gray).
    yuv_chroma4: fr::images::Image<'static>,
    yuv_chroma2: fr::images::Image<'static>,
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
            roi: params.roi,
            yuv: Yuv::new(range),
            scale,
            offset,
            rgb: Vec::new(),
            resized: fr::images::Image::new(size, size, fr::PixelType::U8x3),
            resized_gray: fr::images::Image::new(size, size, fr::PixelType::U8),
            yuv_chroma4: fr::images::Image::new(size, size, fr::PixelType::U8x4),
            yuv_chroma2: fr::images::Image::new(size, size, fr::PixelType::U8x2),
            resizer: fr::Resizer::new(),
        }
    }

    /// Length of the NCHW tensor `run` writes.
    pub fn output_len(&self) -> usize {
        3 * (self.size as usize).pow(2)
    }

    /// Writes the model input for `frame` into `out` (`output_len()` floats).
    /// On error `out` may hold a partial result and must not be used.
    pub fn run(&mut self, frame: &Frame, out: &mut [f32]) -> Result<(), PreprocessError> {
        assert_eq!(out.len(), self.output_len(), "input buffer does not match the model input");
        if frame.data.is_empty() {
            return Err(PreprocessError::Empty { width: frame.width, height: frame.height, len: 0 });
        }
        if frame.format != PixelFormat::Encoded {
            check_len(frame)?;
        }
        let region = |s: &Self, w, h| crop_region(w, h, s.roi, s.crop_fraction);
        let channels = match frame.format {
            PixelFormat::Encoded => {
                let (w, h) = decode_into(&frame.data, &mut self.rgb)?;
                let rgb = std::mem::take(&mut self.rgb);
                let r = self.resize(&rgb, fr::PixelType::U8x3, w, h, region(self, w, h));
                self.rgb = rgb;
                r?;
                Channels::Rgb
            }
            PixelFormat::Rgb8 | PixelFormat::Bgr8 => {
                let crop = region(self, frame.width, frame.height);
                self.resize(&frame.data, fr::PixelType::U8x3, frame.width, frame.height, crop)?;
                if frame.format == PixelFormat::Bgr8 {
                    Channels::Bgr
                } else {
                    Channels::Rgb
                }
            }
            PixelFormat::Gray8 => {
                let crop = region(self, frame.width, frame.height);
                self.resize(&frame.data, fr::PixelType::U8, frame.width, frame.height, crop)?;
                Channels::Gray
            }
            PixelFormat::Yuyv | PixelFormat::Nv12 => {
                let (side, left, top) = region(self, frame.width, frame.height);
                let pairs_whole = left % 2 == 0 && side % 2 == 0;
                let rows_whole = frame.format == PixelFormat::Yuyv || top % 2 == 0;
                if self.filter != ResizeFilter::Nearest && pairs_whole && rows_whole {
                    self.resize_yuv(frame, (side, left, top))?;
                    self.normalize(Channels::Rgb, out);
                    return Ok(());
                }
                self.yuv.convert_crop(frame, left as usize, top as usize, side as usize, side as usize, &mut self.rgb);
                let rgb = std::mem::take(&mut self.rgb);
                let r = self.resize(&rgb, fr::PixelType::U8x3, side, side, (side, 0, 0));
                self.rgb = rgb;
                r?;
                Channels::Rgb
            }
        };
        self.normalize(channels, out);
        Ok(())
    }

    fn resize(
        &mut self,
        pixels: &[u8],
        pixel_type: fr::PixelType,
        w: u32,
        h: u32,
        (side, left, top): (u32, u32, u32),
    ) -> Result<(), PreprocessError> {
        let dst = if pixel_type == fr::PixelType::U8 { &mut self.resized_gray } else { &mut self.resized };
        let alg = match self.filter {
            ResizeFilter::Bicubic => fr::FilterType::CatmullRom,
            ResizeFilter::Bilinear => fr::FilterType::Bilinear,
            ResizeFilter::Nearest => {
                let channels = pixel_type.size();
                nearest(pixels, w as usize * channels, channels, (side, left, top), self.size, dst.buffer_mut());
                return Ok(());
            }
        };
        let src =
            fr::images::ImageRef::new(w, h, pixels, pixel_type).map_err(|e| PreprocessError::Decode(e.to_string()))?;
        // A cropped view, not a crop box: the reference crops first, so the
        // filter must not see pixels outside the square.
        let square = fr::images::CroppedImage::new(&src, left, top, side, side)
            .map_err(|e| PreprocessError::Decode(e.to_string()))?;
        let opts = fr::ResizeOptions::new().resize_alg(fr::ResizeAlg::Convolution(alg));
        self.resizer.resize(&square, dst, &opts).map_err(|e| PreprocessError::Decode(e.to_string()))
    }

    /// Resizes luma and chroma straight from the frame's planes, then
    /// converts only the output's pixels to RGB: 50 k conversions at 224
    /// instead of one per pixel of a 1080-line crop. The conversion is
    /// affine, so this differs from converting first only where a colour
    /// clips (tests/it/preprocess.rs holds it to PIL's output). Needs the crop
    /// to start and end on whole chroma pairs (and NV12 rows).
    fn resize_yuv(&mut self, frame: &Frame, (side, left, top): (u32, u32, u32)) -> Result<(), PreprocessError> {
        let err = |e: &dyn std::fmt::Display| PreprocessError::Decode(e.to_string());
        let alg = match self.filter {
            ResizeFilter::Bilinear => fr::FilterType::Bilinear,
            _ => fr::FilterType::CatmullRom,
        };
        let opts = fr::ResizeOptions::new().resize_alg(fr::ResizeAlg::Convolution(alg));
        let (w, h, d) = (frame.width, frame.height, &frame.data[..]);
        let mut resize =
            |src: fr::images::ImageRef, (x, y, cw, ch): (u32, u32, u32, u32), dst: &mut fr::images::Image<'static>| {
                let view = fr::images::CroppedImage::new(&src, x, y, cw, ch).map_err(|e| err(&e))?;
                self.resizer.resize(&view, dst, &opts).map_err(|e| err(&e))
            };
        let image = |w, h, data, t| fr::images::ImageRef::new(w, h, data, t).map_err(|e| err(&e));
        let (luma, luma_step, chroma, chroma_step) = if frame.format == PixelFormat::Yuyv {
            // The crop's luma is copied out (1.2 MB at 1080 lines) rather
            // than resized as 2-byte (Y, U|V) pixels, which filters the
            // chroma bytes for nothing. As 4-byte pixels (Y0, U, Y1, V),
            // channels 1 and 3 are the pair's chroma.
            let (x0, n) = (left as usize * 2, side as usize * 2);
            self.rgb.clear();
            for line in d.chunks_exact(w as usize * 2).skip(top as usize).take(side as usize) {
                self.rgb.extend(line[x0..x0 + n].chunks_exact(2).map(|p| p[0]));
            }
            resize(image(side, side, &self.rgb, fr::PixelType::U8)?, (0, 0, side, side), &mut self.resized_gray)?;
            resize(image(w / 2, h, d, fr::PixelType::U8x4)?, (left / 2, top, side / 2, side), &mut self.yuv_chroma4)?;
            (self.resized_gray.buffer(), 1, &self.yuv_chroma4.buffer()[1..], 2)
        } else {
            let (y_plane, uv_plane) = d.split_at(w as usize * h as usize);
            resize(image(w, h, y_plane, fr::PixelType::U8)?, (left, top, side, side), &mut self.resized_gray)?;
            let half = (left / 2, top / 2, side / 2, side / 2);
            resize(image(w / 2, h / 2, uv_plane, fr::PixelType::U8x2)?, half, &mut self.yuv_chroma2)?;
            (self.resized_gray.buffer(), 1, self.yuv_chroma2.buffer(), 1)
        };
        let luma = luma.iter().step_by(luma_step);
        let u = chroma.iter().step_by(2 * chroma_step);
        let v = chroma[chroma_step..].iter().step_by(2 * chroma_step);
        for (((px, &y), &u), &v) in self.resized.buffer_mut().chunks_exact_mut(3).zip(luma).zip(u).zip(v) {
            self.yuv.pixel(y, self.yuv.chroma(u, v), px);
        }
        Ok(())
    }

    fn normalize(&self, channels: Channels, out: &mut [f32]) {
        let plane = (self.size as usize).pow(2);
        let (r, rest) = out.split_at_mut(plane);
        let (g, b) = rest.split_at_mut(plane);
        let [sr, sg, sb] = self.scale;
        let [or, og, ob] = self.offset;
        let px3 = self.resized.buffer().chunks_exact(3);
        match channels {
            Channels::Rgb => {
                for (i, px) in px3.enumerate() {
                    r[i] = px[0] as f32 * sr + or;
                    g[i] = px[1] as f32 * sg + og;
                    b[i] = px[2] as f32 * sb + ob;
                }
            }
            Channels::Bgr => {
                for (i, px) in px3.enumerate() {
                    r[i] = px[2] as f32 * sr + or;
                    g[i] = px[1] as f32 * sg + og;
                    b[i] = px[0] as f32 * sb + ob;
                }
            }
            Channels::Gray => {
                for (i, &v) in self.resized_gray.buffer().iter().enumerate() {
                    let v = v as f32;
                    r[i] = v * sr + or;
                    g[i] = v * sg + og;
                    b[i] = v * sb + ob;
                }
            }
        }
    }
}

/// PIL's nearest-neighbour resize of the `side` square at (`left`, `top`)
/// into `size` x `size`: pixel `x` takes source pixel `floor((x + 0.5) *
/// side / size)`, with the position accumulated in f64 as PIL's
/// `ImagingScaleAffine` does, so exact halfway cases land on the same pixel.
/// (fast_image_resize's nearest samples differently.)
fn nearest(src: &[u8], stride: usize, channels: usize, (side, left, top): (u32, u32, u32), size: u32, dst: &mut [u8]) {
    let scale = side as f64 / size as f64;
    let positions = |origin: u32| {
        let mut at = scale * 0.5;
        (0..size)
            .map(move |_| {
                let i = (at as usize).min(side as usize - 1) + origin as usize;
                at += scale;
                i
            })
            .collect::<Vec<_>>()
    };
    let (xs, ys) = (positions(left), positions(top));
    for (row, &y) in dst.chunks_exact_mut(size as usize * channels).zip(&ys) {
        let line = &src[y * stride..];
        for (px, &x) in row.chunks_exact_mut(channels).zip(&xs) {
            px.copy_from_slice(&line[x * channels..(x + 1) * channels]);
        }
    }
}

fn check_len(frame: &Frame) -> Result<(), PreprocessError> {
    let expected = frame.format.frame_len(frame.width, frame.height);
    if frame.width == 0 || frame.height == 0 {
        return Err(PreprocessError::Empty { width: frame.width, height: frame.height, len: frame.data.len() });
    }
    let (format, width, height) = (frame.format, frame.width, frame.height);
    match expected {
        Some(n) if n == frame.data.len() => Ok(()),
        Some(n) => Err(PreprocessError::Size { format, width, height, expected: n, actual: frame.data.len() }),
        None => Err(PreprocessError::OddSize { format, width, height }),
    }
}

/// A JPEG without its end-of-image marker is rejected: decoders happily
/// fill a truncated JPEG with gray, and a gray image sent to the model is a
/// silent wrong answer. Returns the length up to the marker's start.
fn check_jpeg_end(data: &[u8]) -> Result<usize, PreprocessError> {
    let end = data.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    if end < 4 || data[end - 2..end] != [0xFF, 0xD9] {
        return Err(PreprocessError::Decode("truncated JPEG (no end-of-image marker)".into()));
    }
    Ok(end - 2)
}

/// Whether the JPEG is baseline/extended sequential (SOF0/SOF1: every
/// MJPEG camera), found by walking the header segments up to the first
/// frame header.
fn is_sequential(data: &[u8]) -> bool {
    let mut i = 2;
    while i + 4 <= data.len() && data[i] == 0xFF {
        match data[i + 1] {
            0xC0 | 0xC1 => return true,
            0xC2..=0xCF | 0xDA => return false,
            0xFF => i += 1,
            _ => i += 2 + u16::from_be_bytes([data[i + 2], data[i + 3]]) as usize,
        }
    }
    false
}

/// Decodes JPEG/PNG/BMP to packed RGB8 in `rgb` (reused across frames) and
/// returns its size. JPEG goes straight to zune-jpeg (the decoder the image
/// crate uses) in strict mode, so corrupt entropy data is an error instead of
/// a gray-filled picture.
fn decode_into(data: &[u8], rgb: &mut Vec<u8>) -> Result<(u32, u32), PreprocessError> {
    if !data.starts_with(&[0xFF, 0xD8]) {
        let img = decode(data)?;
        let size = img.dimensions();
        rgb.clear();
        rgb.extend_from_slice(img.as_raw());
        return Ok(size);
    }
    let mut scan_end = check_jpeg_end(data)?;
    // zune-jpeg fills whatever follows an early end-of-image marker with
    // zeros, even in strict mode, so a frame cut short with the marker glued
    // on (a camera dropping USB packets) would decode to a smeared picture.
    // Without the marker, running out of data is an error instead; only the
    // last row of blocks can read ahead into the end of the buffer, so a
    // whole frame still decodes. Progressive JPEGs need their markers kept.
    let sequential = is_sequential(data);
    if !sequential {
        scan_end = data.len();
    }
    let data = &data[..scan_end];
    let opts = zune_core::options::DecoderOptions::default()
        .set_strict_mode(true)
        .jpeg_set_out_colorspace(zune_core::colorspace::ColorSpace::RGB);
    let mut dec = zune_jpeg::JpegDecoder::new_with_options(zune_core::bytestream::ZCursor::new(data), opts);
    let bad = |e: zune_jpeg::errors::DecodeErrors| PreprocessError::Decode(format!("corrupt JPEG: {e}"));
    dec.decode_headers().map_err(bad)?;
    let (w, h) = dec.dimensions().unwrap_or((0, 0));
    if w == 0 || h == 0 {
        return Err(PreprocessError::Empty { width: w as u32, height: h as u32, len: data.len() });
    }
    // Every 8x8 block of a sequential scan costs at least two bits (a DC
    // code and an end-of-block code), so a header declaring more pixels
    // than 256 per byte lies; believing it would allocate up to 800 MB for
    // a 700-byte frame (16000x16000, within zune-jpeg's limits) before
    // failing. Progressive scans can skip runs of blocks, so they are not
    // bounded this way.
    if sequential && w * h > 256 * data.len() {
        return Err(PreprocessError::Decode(format!(
            "corrupt JPEG: its header declares {w}x{h} pixels, more than {} bytes can hold",
            data.len()
        )));
    }
    rgb.resize(dec.output_buffer_size().unwrap_or(w * h * 3), 0);
    dec.decode_into(rgb).map_err(bad)?;
    Ok((w as u32, h as u32))
}

/// Decodes JPEG/PNG/BMP to an RGB8 image (the image crate, for one-off
/// decodes such as `lookout classify`; the frame path uses `decode_into`).
pub fn decode(data: &[u8]) -> Result<image::RgbImage, PreprocessError> {
    if data.starts_with(&[0xFF, 0xD8]) {
        check_jpeg_end(data)?;
    }
    let img = image::load_from_memory(data).map_err(|e| PreprocessError::Decode(e.to_string()))?;
    if img.width() == 0 || img.height() == 0 {
        return Err(PreprocessError::Empty { width: img.width(), height: img.height(), len: data.len() });
    }
    Ok(img.into_rgb8())
}

/// The whole frame as RGB8: for pictures people look at (snapshots, aiming
/// the camera), not for the model's path, which converts only its crop.
pub fn frame_rgb(frame: &Frame, range: ColorRange) -> Result<image::RgbImage, PreprocessError> {
    if frame.data.is_empty() {
        return Err(PreprocessError::Empty { width: frame.width, height: frame.height, len: 0 });
    }
    let (w, h) = (frame.width, frame.height);
    let mut rgb = vec![];
    let (w, h) = match frame.format {
        PixelFormat::Encoded => decode_into(&frame.data, &mut rgb)?,
        PixelFormat::Rgb8 => {
            check_len(frame)?;
            rgb.extend_from_slice(&frame.data);
            (w, h)
        }
        PixelFormat::Bgr8 => {
            check_len(frame)?;
            rgb.extend(frame.data.chunks_exact(3).flat_map(|p| [p[2], p[1], p[0]]));
            (w, h)
        }
        PixelFormat::Gray8 => {
            check_len(frame)?;
            rgb.extend(frame.data.iter().flat_map(|&g| [g, g, g]));
            (w, h)
        }
        PixelFormat::Yuyv | PixelFormat::Nv12 => {
            check_len(frame)?;
            Yuv::new(range).convert_crop(frame, 0, 0, w as usize, h as usize, &mut rgb);
            (w, h)
        }
    };
    image::RgbImage::from_raw(w, h, rgb).ok_or(PreprocessError::Empty { width: w, height: h, len: 0 })
}

/// BT.601 YCbCr -> RGB in 16-bit fixed point, through tables so a pixel
/// costs a few loads and adds. The tables hold the exact inverse of the
/// BT.601 matrix scaled by `1 << SHIFT`; results round to nearest like the
/// reference conversion in `tools/make_preprocess_fixtures.py`.
struct Yuv {
    /// Luma contribution, with the rounding constant folded in.
    y: [i32; 256],
    r_v: [i32; 256],
    g_u: [i32; 256],
    g_v: [i32; 256],
    b_u: [i32; 256],
}

const SHIFT: u32 = 16;

impl Yuv {
    fn new(range: ColorRange) -> Self {
        let (y_off, y_gain, c_gain) = match range {
            ColorRange::Limited => (16.0, 255.0 / 219.0, 255.0 / 224.0),
            ColorRange::Full => (0.0, 1.0, 1.0),
        };
        let one = (1u32 << SHIFT) as f64;
        let fixed = |f: f64| (f * one).round() as i32;
        let (kr, kb) = (0.299, 0.114);
        let kg = 1.0 - kr - kb;
        let chroma = |coef: f64| std::array::from_fn(|i| fixed((i as f64 - 128.0) * c_gain * coef));
        Yuv {
            y: std::array::from_fn(|i| fixed((i as f64 - y_off) * y_gain + 0.5)),
            r_v: chroma(2.0 * (1.0 - kr)),
            g_u: chroma(-2.0 * (1.0 - kb) * kb / kg),
            g_v: chroma(-2.0 * (1.0 - kr) * kr / kg),
            b_u: chroma(2.0 * (1.0 - kb)),
        }
    }

    #[inline(always)]
    fn pixel(&self, y: u8, chroma: [i32; 3], out: &mut [u8]) {
        let y = self.y[y as usize];
        let c = |v: i32| (v >> SHIFT).clamp(0, 255) as u8;
        out[0] = c(y + chroma[0]);
        out[1] = c(y + chroma[1]);
        out[2] = c(y + chroma[2]);
    }

    #[inline(always)]
    fn chroma(&self, u: u8, v: u8) -> [i32; 3] {
        let (u, v) = (u as usize, v as usize);
        [self.r_v[v], self.g_u[u] + self.g_v[v], self.b_u[u]]
    }

    #[cfg(test)]
    fn rgb(&self, y: u8, u: u8, v: u8) -> [u8; 3] {
        let mut px = [0; 3];
        self.pixel(y, self.chroma(u, v), &mut px);
        px
    }

    /// Converts the `side` x `rows` rectangle at (`left`, `top`) of a YUYV
    /// or NV12 frame (length already checked) to packed RGB8 in `rgb`. Each
    /// pixel takes the chroma of its horizontal pair (and, for NV12, its
    /// 2x2 block): the same siting the camera subsampled with.
    fn convert_crop(&self, frame: &Frame, left: usize, top: usize, side: usize, rows: usize, rgb: &mut Vec<u8>) {
        let w = frame.width as usize;
        rgb.resize(side * rows * 3, 0);
        let d = &frame.data;
        // A crop may start or end in the middle of a chroma pair; those
        // pixels go one at a time, whole pairs in the loop.
        let (head, pairs) = (left % 2, (side - left % 2) / 2);
        let tail = side - head - 2 * pairs;
        let first_pair = (left + head) / 2;
        for (row, out) in rgb.chunks_exact_mut(side * 3).enumerate() {
            let y = top + row;
            let (out_head, rest) = out.split_at_mut(head * 3);
            let (out_pairs, out_tail) = rest.split_at_mut(pairs * 6);
            match frame.format {
                PixelFormat::Yuyv => {
                    let line = &d[y * w * 2..(y + 1) * w * 2];
                    let uv = |pair: usize| self.chroma(line[pair * 4 + 1], line[pair * 4 + 3]);
                    if head == 1 {
                        self.pixel(line[left * 2], uv(left / 2), out_head);
                    }
                    let src = &line[first_pair * 4..(first_pair + pairs) * 4];
                    for (q, px) in src.chunks_exact(4).zip(out_pairs.chunks_exact_mut(6)) {
                        let c = self.chroma(q[1], q[3]);
                        self.pixel(q[0], c, &mut px[..3]);
                        self.pixel(q[2], c, &mut px[3..]);
                    }
                    if tail == 1 {
                        let x = left + side - 1;
                        self.pixel(line[x * 2], uv(x / 2), out_tail);
                    }
                }
                _ => {
                    let luma = &d[y * w..(y + 1) * w];
                    let uv_start = w * frame.height as usize + (y / 2) * w;
                    let uv_line = &d[uv_start..uv_start + w];
                    let uv = |pair: usize| self.chroma(uv_line[pair * 2], uv_line[pair * 2 + 1]);
                    if head == 1 {
                        self.pixel(luma[left], uv(left / 2), out_head);
                    }
                    let ys = &luma[first_pair * 2..(first_pair + pairs) * 2];
                    let uvs = &uv_line[first_pair * 2..(first_pair + pairs) * 2];
                    for ((l, c), px) in ys.chunks_exact(2).zip(uvs.chunks_exact(2)).zip(out_pairs.chunks_exact_mut(6)) {
                        let c = self.chroma(c[0], c[1]);
                        self.pixel(l[0], c, &mut px[..3]);
                        self.pixel(l[1], c, &mut px[3..]);
                    }
                    if tail == 1 {
                        let x = left + side - 1;
                        self.pixel(luma[x], uv(x / 2), out_tail);
                    }
                }
            }
        }
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
    fn region_of_interest_then_centre_crop() {
        assert_eq!(crop_region(128, 96, None, 1.0), center_crop(128, 96, 1.0));
        // ROI x 32..96, y 0..96 (64x96): square 64 at its centre.
        assert_eq!(crop_region(128, 96, Some([0.25, 0.0, 0.5, 1.0]), 1.0), (64, 32, 16));
        // A sliver rounds to at least one pixel and stays inside the frame.
        assert_eq!(crop_region(100, 100, Some([0.999, 0.999, 0.0001, 0.0001]), 1.0), (1, 99, 99));
        assert!(roi_problem([0.0, 0.0, 1.0, 1.0]).is_none());
        assert!(roi_problem([f32::NAN, 0.0, 1.0, 1.0]).is_some());
    }

    #[test]
    fn nearest_takes_pils_sample_positions() {
        // 5 -> 2 samples floor(1.25) = 1 and floor(3.75) = 3, from the
        // crop's origin.
        let src: Vec<u8> = (0..7 * 5).map(|i| i as u8).collect();
        let mut dst = [0u8; 4];
        nearest(&src, 7, 1, (5, 2, 0), 2, &mut dst);
        assert_eq!(dst, [7 + 3, 7 + 5, 3 * 7 + 3, 3 * 7 + 5]);
    }

    #[test]
    fn yuv_crop_starting_mid_pair_uses_that_pairs_chroma() {
        // 4x1 YUYV: pair 0 red-ish chroma, pair 1 blue-ish; a 1-pixel
        // crop at x = 1 and x = 2 takes the chroma of its own pair.
        let yuv = Yuv::new(ColorRange::Full);
        let data = vec![100, 60, 110, 220, 120, 220, 130, 60];
        let f = frame(PixelFormat::Yuyv, 4, 1, data);
        let mut rgb = Vec::new();
        yuv.convert_crop(&f, 1, 0, 1, 1, &mut rgb);
        assert_eq!(rgb, yuv.rgb(110, 60, 220));
        yuv.convert_crop(&f, 2, 0, 1, 1, &mut rgb);
        assert_eq!(rgb, yuv.rgb(120, 220, 60));
        yuv.convert_crop(&f, 0, 0, 1, 1, &mut rgb);
        assert_eq!(rgb, yuv.rgb(100, 60, 220));
        // NV12 4x2: Y plane then one UV row for both lines.
        let nv12 = frame(PixelFormat::Nv12, 4, 2, vec![10, 20, 30, 40, 50, 60, 70, 80, 90, 100, 160, 170]);
        yuv.convert_crop(&nv12, 1, 1, 1, 1, &mut rgb);
        assert_eq!(rgb, yuv.rgb(60, 90, 100));
        yuv.convert_crop(&nv12, 3, 1, 1, 1, &mut rgb);
        assert_eq!(rgb, yuv.rgb(80, 160, 170));
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
    fn yuv_resized_as_planes_matches_converting_every_pixel_first() {
        // A 1080p frame as a camera makes one: an RGB picture with fine
        // luma detail and slowly varying colour, converted with BT.601
        // (limited range). The centre crop (420, 0, 1080) takes the plane
        // path.
        let (w, h) = (1920usize, 1080usize);
        let rgb = |x: usize, y: usize| {
            let (x, y) = (x as f32, y as f32);
            let detail = 50.0 * (x * 0.05).sin() * (y * 0.031).cos() + 25.0 * (x * 0.7 + y * 0.3).sin();
            let tint = [50.0 * (x * 0.004).sin(), 40.0 * (y * 0.006).cos(), -45.0 * (x * 0.003 + y * 0.002).sin()];
            tint.map(|t| (128.0 + detail + t).clamp(0.0, 255.0))
        };
        let luma = |x: usize, y: usize| {
            let [r, g, b] = rgb(x, y);
            (16.0 + 219.0 / 255.0 * (0.299 * r + 0.587 * g + 0.114 * b)).round() as u8
        };
        let chroma = |x: usize, y: usize| {
            let [r, g, b] = rgb(x, y);
            let u = 128.0 + 224.0 / 255.0 * (-0.168_736 * r - 0.331_264 * g + 0.5 * b);
            let v = 128.0 + 224.0 / 255.0 * (0.5 * r - 0.418_688 * g - 0.081_312 * b);
            (u.round() as u8, v.round() as u8)
        };
        let mut yuyv = Vec::with_capacity(w * h * 2);
        let mut nv12 = Vec::with_capacity(w * h * 3 / 2);
        for y in 0..h {
            for x in (0..w).step_by(2) {
                let (u, v) = chroma(x, y / 2 * 2);
                yuyv.extend([luma(x, y), u, luma(x + 1, y), v]);
            }
            nv12.extend((0..w).map(|x| luma(x, y)));
        }
        for y in (0..h).step_by(2) {
            nv12.extend((0..w).step_by(2).flat_map(|x| <[u8; 2]>::from(chroma(x, y))));
        }
        let mut p = Preprocessor::new(&params(ResizeFilter::Bicubic), 224, ColorRange::Limited);
        for f in
            [frame(PixelFormat::Yuyv, w as u32, h as u32, yuyv), frame(PixelFormat::Nv12, w as u32, h as u32, nv12)]
        {
            let mut rgb = Vec::new();
            p.yuv.convert_crop(&f, 420, 0, 1080, 1080, &mut rgb);
            let (mut planes, mut exact) = (vec![0.0; p.output_len()], vec![0.0; p.output_len()]);
            p.run(&f, &mut planes).unwrap();
            p.run(&frame(PixelFormat::Rgb8, 1080, 1080, rgb), &mut exact).unwrap();
            let diff: Vec<f32> = planes.iter().zip(&exact).map(|(a, b)| (a - b).abs()).collect();
            let mean = diff.iter().sum::<f32>() / diff.len() as f32;
            let max = diff.iter().fold(0f32, |a, &b| a.max(b));
            // The limits tests/it/preprocess.rs holds every format to against PIL.
            eprintln!("{:?}: mean {mean} max {max}", f.format);
            assert!(mean <= 0.01 && max <= 0.1, "{:?}: mean {mean} max {max}", f.format);
        }
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
    fn fixed_point_yuv_matches_the_float_matrix() {
        // The exact BT.601 inverse in f64, rounded: tables may differ by one
        // level only where the float result is within 1e-3 of a half.
        for (range, y_off, y_gain, c_gain) in
            [(ColorRange::Limited, 16.0, 255.0 / 219.0, 255.0 / 224.0), (ColorRange::Full, 0.0, 1.0, 1.0)]
        {
            let t = Yuv::new(range);
            for y in (0..=255u8).step_by(3) {
                for u in (0..=255u8).step_by(5) {
                    for v in (0..=255u8).step_by(7) {
                        let yf = (y as f64 - y_off) * y_gain;
                        let (uf, vf) = ((u as f64 - 128.0) * c_gain, (v as f64 - 128.0) * c_gain);
                        let r = yf + 1.402 * vf;
                        let b = yf + 1.772 * uf;
                        let g = (yf - 0.299 * r - 0.114 * b) / 0.587;
                        let got = t.rgb(y, u, v);
                        for (c, want) in [r, g, b].into_iter().enumerate() {
                            let w = want.round().clamp(0.0, 255.0);
                            let near_half = (want - want.floor() - 0.5).abs() < 1e-3;
                            assert!(
                                got[c] as f64 == w || (near_half && (got[c] as f64 - w).abs() <= 1.0),
                                "{range:?} yuv {y} {u} {v} channel {c}: {} vs {want}",
                                got[c]
                            );
                        }
                    }
                }
            }
        }
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

    /// A 128x96 sample whose header claims `side`x`side`.
    fn claiming(side: u16) -> Vec<u8> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/digits/samples/7-seven.jpg");
        let mut data = std::fs::read(path).unwrap();
        let sof = data.windows(2).position(|w| w == [0xFF, 0xC0]).unwrap();
        data[sof + 5..sof + 9].copy_from_slice(&[side.to_be_bytes(), side.to_be_bytes()].concat());
        data
    }

    #[test]
    fn a_header_declaring_more_pixels_than_the_data_can_hold_is_refused_before_allocating() {
        let mut rgb = vec![];
        let data = claiming(16000);
        let e = decode_into(&data, &mut rgb).unwrap_err().to_string();
        assert!(e.contains("declares 16000x16000 pixels"), "{e}");
        assert_eq!(rgb.capacity(), 0, "nothing allocated for the claimed size");
        // A claim the data could hold goes on to the decoder, which finds
        // the scan too short.
        let e = decode_into(&claiming(160), &mut rgb).unwrap_err().to_string();
        assert!(e.contains("corrupt JPEG") && !e.contains("declares"), "{e}");
    }
}
