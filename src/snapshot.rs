//! The picture the model saw. A view's region (after the region of interest
//! and the centre crop, before resizing to the model's input) as a small
//! JPEG: published retained to the view's snapshot topic (Home Assistant's
//! image entity) when the state changes and when asked, and kept in a short
//! ring on disk; and, for `lookout snapshot`, the whole frame with every
//! view's region drawn on it, to aim the camera and set `roi` by looking.
//!
//! Off by default: a camera picture on the broker is a privacy decision.

use std::path::{Path, PathBuf};
use std::time::Duration;

use image::{Rgb, RgbImage};
use serde::Serialize;

use crate::frame::Frame;
use crate::preprocess::{crop_region, frame_rgb, ColorRange, PreprocessError};

/// `[snapshots]`, resolved.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SnapshotConfig {
    pub enabled: bool,
    /// Longest side in pixels; larger regions are scaled down.
    pub max_side: u32,
    /// JPEG quality, 1-100.
    pub quality: u8,
    /// The least time between two automatic snapshots of a view (a command
    /// is never held back).
    #[serde(serialize_with = "secs")]
    pub min_interval: Duration,
    /// Snapshots kept on disk per view (`<state_dir>/snapshots/<view>/`);
    /// 0 keeps none.
    pub keep: usize,
}

impl Default for SnapshotConfig {
    fn default() -> Self {
        SnapshotConfig { enabled: false, max_side: 640, quality: 80, min_interval: Duration::from_secs(10), keep: 20 }
    }
}

fn secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("{0}")]
    Frame(#[from] PreprocessError),
    #[error("cannot encode the snapshot: {0}")]
    Encode(String),
    #[error("{path}: cannot keep the snapshot: {reason}")]
    Keep { path: PathBuf, reason: String },
}

/// The region a view classifies, as RGB, scaled down to `max_side`.
pub fn view_rgb(
    frame: &Frame,
    range: ColorRange,
    roi: Option<[f32; 4]>,
    crop_fraction: f32,
    max_side: u32,
) -> Result<RgbImage, SnapshotError> {
    let full = frame_rgb(frame, range)?;
    let (side, left, top) = crop_region(full.width(), full.height(), roi, crop_fraction);
    let crop = image::imageops::crop_imm(&full, left, top, side, side).to_image();
    Ok(if side > max_side {
        image::imageops::resize(&crop, max_side, max_side, image::imageops::FilterType::Triangle)
    } else {
        crop
    })
}

pub fn jpeg(img: &RgbImage, quality: u8) -> Result<Vec<u8>, SnapshotError> {
    let mut out = vec![];
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, quality)
        .encode_image(img)
        .map_err(|e| SnapshotError::Encode(e.to_string()))?;
    Ok(out)
}

/// The last `keep` snapshots of one view on disk, newest by name
/// (`<seq>-<label>.jpg`), for checking what the model saw and for teaching.
pub struct Ring {
    dir: PathBuf,
    keep: usize,
}

impl Ring {
    pub fn new(state_dir: &Path, view: &str, keep: usize) -> Ring {
        Ring { dir: state_dir.join("snapshots").join(view), keep }
    }

    /// Writes the snapshot (whole or not at all) and deletes the oldest
    /// beyond `keep`.
    pub fn save(&self, seq: u64, label: &str, jpeg: &[u8]) -> Result<PathBuf, SnapshotError> {
        let err = |path: &Path, e: std::io::Error| SnapshotError::Keep { path: path.to_owned(), reason: e.to_string() };
        std::fs::create_dir_all(&self.dir).map_err(|e| err(&self.dir, e))?;
        let label: String =
            label.chars().take(40).map(|c| if c.is_alphanumeric() || c == '-' { c } else { '_' }).collect();
        let path = self.dir.join(format!("{seq:012}-{label}.jpg"));
        let tmp = path.with_extension("jpg.tmp");
        std::fs::write(&tmp, jpeg).map_err(|e| err(&tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| err(&path, e))?;
        let mut files: Vec<PathBuf> = std::fs::read_dir(&self.dir)
            .map_err(|e| err(&self.dir, e))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "jpg"))
            .collect();
        files.sort();
        for old in files.iter().take(files.len().saturating_sub(self.keep)) {
            let _ = std::fs::remove_file(old);
        }
        Ok(path)
    }
}

/// Colours for the views' outlines, in order.
pub const COLOURS: [(&str, [u8; 3]); 6] = [
    ("red", [230, 25, 25]),
    ("green", [25, 200, 25]),
    ("blue", [40, 90, 255]),
    ("yellow", [240, 220, 0]),
    ("magenta", [230, 0, 230]),
    ("cyan", [0, 220, 220]),
];

/// The frame with each view's region of interest outlined (thin) and the
/// square the model sees inside it (thick), in the view's colour.
pub fn aim(frame: &RgbImage, views: &[(Option<[f32; 4]>, f32)]) -> RgbImage {
    let mut img = frame.clone();
    let (w, h) = img.dimensions();
    let line = (w.max(h) / 400).max(1);
    for (i, &(roi, crop)) in views.iter().enumerate() {
        let colour = Rgb(COLOURS[i % COLOURS.len()].1);
        if let Some([x, y, rw, rh]) = roi {
            let px = |f: f32, of: u32| ((f * of as f32).round() as u32).min(of.saturating_sub(1));
            rect(&mut img, (px(x, w), px(y, h), px(rw, w).max(1), px(rh, h).max(1)), line, colour);
        }
        let (side, left, top) = crop_region(w, h, roi, crop);
        rect(&mut img, (left, top, side, side), line * 3, colour);
    }
    img
}

/// An outline of `thickness` pixels inside the rectangle `(x, y, w, h)`.
fn rect(img: &mut RgbImage, (x, y, w, h): (u32, u32, u32, u32), thickness: u32, colour: Rgb<u8>) {
    let (iw, ih) = img.dimensions();
    let (x1, y1) = ((x + w).min(iw), (y + h).min(ih));
    for py in y..y1 {
        for px in x..x1 {
            let edge = px < x + thickness || px + thickness >= x1 || py < y + thickness || py + thickness >= y1;
            if edge {
                img.put_pixel(px, py, colour);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::PixelFormat;
    use std::time::SystemTime;

    /// A 40x20 RGB frame: left half black, right half white.
    fn halves() -> Frame {
        let data = (0..20 * 40).flat_map(|i| if i % 40 < 20 { [0u8; 3] } else { [255u8; 3] }).collect();
        Frame {
            seq: 0,
            captured_at: SystemTime::now(),
            width: 40,
            height: 20,
            format: PixelFormat::Rgb8,
            data,
            origin: "t".into(),
        }
    }

    #[test]
    fn a_view_snapshot_is_its_region_decodable_and_bounded() {
        let f = halves();
        let right = view_rgb(&f, ColorRange::Full, Some([0.5, 0.0, 0.5, 1.0]), 1.0, 640).unwrap();
        assert_eq!(right.dimensions(), (20, 20));
        assert!(right.pixels().all(|p| p.0 == [255; 3]), "the right half only");
        let small = view_rgb(&f, ColorRange::Full, None, 1.0, 8).unwrap();
        assert_eq!(small.dimensions(), (8, 8), "scaled down to max_side");
        let bytes = jpeg(&right, 80).unwrap();
        let back = image::load_from_memory(&bytes).unwrap().into_rgb8();
        assert_eq!(back.dimensions(), (20, 20));
        assert!(back.pixels().all(|p| p.0.iter().all(|&c| c > 240)), "a white JPEG decodes white");
    }

    #[test]
    fn the_ring_keeps_the_newest() {
        let d = tempfile::tempdir().unwrap();
        let ring = Ring::new(d.path(), "door", 2);
        for seq in 0..4 {
            ring.save(seq, "door open", b"\xff\xd8x").unwrap();
        }
        let mut names: Vec<String> = std::fs::read_dir(d.path().join("snapshots/door"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["000000000002-door_open.jpg", "000000000003-door_open.jpg"]);
    }

    #[test]
    fn aiming_outlines_the_region_and_the_square() {
        let frame = RgbImage::from_pixel(400, 200, Rgb([128, 128, 128]));
        let img = aim(&frame, &[(Some([0.5, 0.0, 0.5, 1.0]), 1.0)]);
        assert_eq!(img.get_pixel(200, 100).0, COLOURS[0].1, "the square's left edge");
        assert_eq!(img.get_pixel(300, 100).0, [128; 3], "inside stays as it was");
        assert_eq!(img.get_pixel(100, 100).0, [128; 3], "outside the region too");
    }
}
