//! Is the camera still showing the world? A source can deliver frames that
//! are useless: none at all (stale), the same bytes again and again (a
//! frozen driver or pipe), or black and featureless (lens covered, lights
//! off). The daemon feeds every frame to a [`HealthMonitor`], logs changes,
//! publishes the state with each result and may skip classification.
//!
//! Checks are cheap on purpose: a hash and luma statistics over a
//! subsample of the raw bytes, without decoding; only encoded frames take
//! their statistics from the decoded model input.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::frame::{Frame, PixelFormat};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    #[default]
    Ok,
    /// No frame within `stale_after`.
    Stale,
    /// `frozen_frames` identical frames in a row.
    Frozen,
    /// Nearly black or uniform: covered, dark, or a blank test pattern.
    Dark,
}

impl Health {
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Ok => "ok",
            Health::Stale => "stale",
            Health::Frozen => "frozen",
            Health::Dark => "dark",
        }
    }
}

impl std::fmt::Display for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Thresholds, from the `[health]` config section.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HealthParams {
    #[serde(with = "secs")]
    pub stale_after: Duration,
    /// Identical frames in a row that make a source frozen; 0 turns it off.
    pub frozen_frames: u32,
    /// Mean luma (0-255) below which a frame is dark; 0 turns it off.
    pub dark_below: f32,
    /// Luma standard deviation below which a frame is uniform (covered);
    /// 0 turns it off.
    pub uniform_below: f32,
    /// Skip classification while the source is not ok.
    pub skip_unhealthy: bool,
}

impl Default for HealthParams {
    fn default() -> Self {
        HealthParams {
            stale_after: Duration::from_secs(10),
            frozen_frames: 30,
            dark_below: 12.0,
            uniform_below: 2.0,
            skip_unhealthy: false,
        }
    }
}

mod secs {
    pub fn serialize<S: serde::Serializer>(d: &std::time::Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }
}

/// Mean and standard deviation of luma, 0-255.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Luma {
    pub mean: f32,
    pub std: f32,
}

/// About this many samples per statistic: enough for a mean and spread,
/// cheap at any resolution.
const SAMPLES: usize = 4096;

fn stats(values: impl Iterator<Item = f32>) -> Luma {
    let (mut n, mut sum, mut sq) = (0f64, 0f64, 0f64);
    for v in values {
        let v = f64::from(v);
        n += 1.0;
        sum += v;
        sq += v * v;
    }
    if n == 0.0 {
        return Luma { mean: 0.0, std: 0.0 };
    }
    let mean = sum / n;
    Luma { mean: mean as f32, std: (sq / n - mean * mean).max(0.0).sqrt() as f32 }
}

/// Luma statistics of a raw frame from a subsample of its bytes; `None`
/// for encoded frames (use [`luma_of_input`] after decoding) and frames
/// whose size does not match their format.
pub fn luma_of_raw(frame: &Frame) -> Option<Luma> {
    let len = frame.format.frame_len(frame.width, frame.height)?;
    if frame.data.len() != len || len == 0 {
        return None;
    }
    let pixels = frame.width as usize * frame.height as usize;
    let step = (pixels / SAMPLES).max(1);
    let d = &frame.data;
    let luma: Box<dyn Fn(usize) -> f32> = match frame.format {
        PixelFormat::Gray8 => Box::new(|p| f32::from(d[p])),
        // Y sits at every even byte of YUYV; NV12 starts with the Y plane.
        PixelFormat::Yuyv => Box::new(|p| f32::from(d[2 * p])),
        PixelFormat::Nv12 => Box::new(|p| f32::from(d[p])),
        PixelFormat::Rgb8 => Box::new(|p| rgb_luma(d[3 * p], d[3 * p + 1], d[3 * p + 2])),
        PixelFormat::Bgr8 => Box::new(|p| rgb_luma(d[3 * p + 2], d[3 * p + 1], d[3 * p])),
        PixelFormat::Encoded => return None,
    };
    Some(stats((0..pixels).step_by(step).map(luma)))
}

fn rgb_luma(r: u8, g: u8, b: u8) -> f32 {
    0.299 * f32::from(r) + 0.587 * f32::from(g) + 0.114 * f32::from(b)
}

/// Luma statistics of a model input tensor (NCHW, normalized with
/// `(x / 255 - mean) / std`), for frames that had to be decoded first.
pub fn luma_of_input(input: &[f32], mean: [f32; 3], std: [f32; 3]) -> Luma {
    let plane = input.len() / 3;
    let step = (plane / SAMPLES).max(1);
    let px = |c: usize, i: usize| (input[c * plane + i] * std[c] + mean[c]) * 255.0;
    stats((0..plane).step_by(step).map(|i| 0.299 * px(0, i) + 0.587 * px(1, i) + 0.114 * px(2, i)))
}

/// FNV-1a over the length and a strided subsample: identical frames hash
/// equal; a live sensor's noise makes two real frames differ.
pub fn fingerprint(data: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    let mut eat = |b: u8| {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    };
    data.len().to_le_bytes().into_iter().for_each(&mut eat);
    let step = (data.len() / (4 * SAMPLES)).max(1);
    data.iter().step_by(step).copied().for_each(eat);
    h
}

/// Tracks one source's health across frames.
pub struct HealthMonitor {
    params: HealthParams,
    last_print: Option<u64>,
    /// Consecutive frames equal to the one before.
    repeats: u32,
    last_frame: Option<Instant>,
    started: Instant,
    state: Health,
}

impl HealthMonitor {
    pub fn new(params: HealthParams, now: Instant) -> HealthMonitor {
        HealthMonitor { params, last_print: None, repeats: 0, last_frame: None, started: now, state: Health::Ok }
    }

    pub fn state(&self) -> Health {
        self.state
    }

    pub fn params(&self) -> &HealthParams {
        &self.params
    }

    /// A frame arrived with its fingerprint and luma (when known). Returns
    /// the new state if it changed.
    pub fn frame(&mut self, print: u64, luma: Option<Luma>, now: Instant) -> Option<Health> {
        self.last_frame = Some(now);
        self.repeats = if self.last_print == Some(print) { self.repeats.saturating_add(1) } else { 0 };
        self.last_print = Some(print);
        let p = &self.params;
        let dark = luma.is_some_and(|l| l.mean < p.dark_below || l.std < p.uniform_below);
        let state = if p.frozen_frames > 0 && self.repeats >= p.frozen_frames {
            Health::Frozen
        } else if dark {
            Health::Dark
        } else {
            Health::Ok
        };
        self.set(state)
    }

    /// The source delivered a frame at `at` (the model may not look at it
    /// for a while): a stale source is ok again. Returns the new state if it
    /// changed.
    pub fn arrived(&mut self, at: Instant) -> Option<Health> {
        if self.last_frame.is_none_or(|t| t < at) {
            self.last_frame = Some(at);
        }
        if self.state == Health::Stale {
            return self.set(Health::Ok);
        }
        None
    }

    /// Time passed without a frame. Returns the new state if it changed.
    pub fn idle(&mut self, now: Instant) -> Option<Health> {
        let since = self.last_frame.unwrap_or(self.started);
        if now.saturating_duration_since(since) >= self.params.stale_after {
            return self.set(Health::Stale);
        }
        None
    }

    fn set(&mut self, state: Health) -> Option<Health> {
        (std::mem::replace(&mut self.state, state) != state).then_some(state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;

    fn frame(format: PixelFormat, w: u32, h: u32, data: Vec<u8>) -> Frame {
        Frame { seq: 0, captured_at: SystemTime::now(), width: w, height: h, format, data, origin: "t".into() }
    }

    #[test]
    fn luma_reads_y_from_raw_layouts_without_decoding() {
        // YUYV: Y bytes 200 and 0 alternating per pixel, chroma 128.
        let yuyv: Vec<u8> = (0..64 * 2).flat_map(|_| [200, 128, 0, 128]).collect();
        let l = luma_of_raw(&frame(PixelFormat::Yuyv, 16, 16, yuyv)).unwrap();
        assert_eq!((l.mean, l.std), (100.0, 100.0));
        // NV12: a Y plane of 10s; the chroma plane (255s) must be ignored.
        let mut nv12 = vec![10u8; 16 * 16];
        nv12.extend(vec![255u8; 16 * 8]);
        let l = luma_of_raw(&frame(PixelFormat::Nv12, 16, 16, nv12)).unwrap();
        assert_eq!((l.mean, l.std), (10.0, 0.0));
        let l = luma_of_raw(&frame(PixelFormat::Bgr8, 2, 1, vec![0, 0, 255, 255, 0, 0])).unwrap();
        assert!((l.mean - (0.299 * 255.0 + 0.114 * 255.0) / 2.0).abs() < 0.01, "{l:?}");
        assert_eq!(luma_of_raw(&frame(PixelFormat::Encoded, 0, 0, vec![1, 2])), None);
        assert_eq!(luma_of_raw(&frame(PixelFormat::Gray8, 4, 4, vec![1; 3])), None, "short frame");
    }

    #[test]
    fn luma_of_input_undoes_the_normalization() {
        // Gray 51 normalized with mean/std 0.5: (0.2 - 0.5) / 0.5 = -0.6.
        let l = luma_of_input(&[-0.6; 12], [0.5; 3], [0.5; 3]);
        assert!((l.mean - 51.0).abs() < 0.01 && l.std < 0.01, "{l:?}");
    }

    #[test]
    fn states_follow_frames_and_time() {
        let t0 = Instant::now();
        let params = HealthParams { frozen_frames: 3, stale_after: Duration::from_secs(5), ..HealthParams::default() };
        let mut m = HealthMonitor::new(params, t0);
        let lit = Some(Luma { mean: 120.0, std: 40.0 });
        let s = |i: u64| t0 + Duration::from_secs(i);

        assert_eq!(m.idle(s(4)), None, "not stale before stale_after");
        assert_eq!(m.idle(s(5)), Some(Health::Stale), "never a frame");
        assert_eq!(m.frame(1, lit, s(6)), Some(Health::Ok));
        // The same frame again: frozen after 3 repeats, not before.
        assert_eq!(m.frame(1, lit, s(7)), None);
        assert_eq!(m.frame(1, lit, s(8)), None);
        assert_eq!(m.frame(1, lit, s(9)), Some(Health::Frozen));
        assert_eq!(m.frame(1, lit, s(10)), None, "changes are reported once");
        assert_eq!(m.frame(2, lit, s(11)), Some(Health::Ok));
        assert_eq!(m.frame(3, Some(Luma { mean: 5.0, std: 3.0 }), s(12)), Some(Health::Dark), "black");
        assert_eq!(m.frame(4, Some(Luma { mean: 128.0, std: 1.0 }), s(13)), None, "uniform gray is dark too");
        assert_eq!(m.frame(5, None, s(14)), Some(Health::Ok), "unknown luma is not dark");
        assert_eq!(m.idle(s(18)), None);
        assert_eq!(m.idle(s(19)), Some(Health::Stale));
        assert_eq!(m.state(), Health::Stale);
    }

    #[test]
    fn fingerprints_differ_for_a_one_byte_change_in_a_small_frame() {
        let a = vec![7u8; 640 * 480 * 2];
        let mut b = a.clone();
        assert_eq!(fingerprint(&a), fingerprint(&b));
        b[0] = 8;
        assert_ne!(fingerprint(&a), fingerprint(&b));
        assert_ne!(fingerprint(&a), fingerprint(&a[1..]), "length counts");
    }

    #[test]
    fn health_serializes_lowercase() {
        assert_eq!(serde_json::to_string(&Health::Frozen).unwrap(), "\"frozen\"");
        assert_eq!(Health::Stale.to_string(), "stale");
    }
}
