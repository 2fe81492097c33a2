//! USB/V4L2 cameras through nokhwa.
//!
//! nokhwa needs three workarounds, each here: its own mode negotiation
//! fails ("Failed to Fufill") when the exact mode is missing, so we list the
//! modes and pick the closest ourselves; `frame()` has no timeout and a
//! `Camera` is not `Send`, so a worker thread owns the camera and the
//! [`Supervised`](super::supervisor::Supervised) source gives up on it when
//! no frame comes; and it addresses devices by index only, so paths and
//! `/dev/v4l/by-id` links are resolved here. Frames are handed over raw
//! (MJPEG, YUYV, NV12, GRAY, RGB): the preprocessor converts them.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[cfg(feature = "camera")]
use super::CaptureError;
use crate::frame::PixelFormat;

/// The pixel format asked for in the config.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FormatPref {
    /// MJPEG, then YUYV, NV12, GRAY, RGB: MJPEG keeps USB bandwidth low at
    /// any size, and decoding 640x480 costs a few ms.
    #[default]
    Auto,
    Mjpeg,
    Yuyv,
    Nv12,
    Gray,
    Rgb,
}

/// One capture mode a camera offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mode {
    pub format: PixelFormat,
    pub width: u32,
    pub height: u32,
    pub fps: u32,
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}x{} @ {} fps", format_name(self.format), self.width, self.height, self.fps)
    }
}

pub fn format_name(f: PixelFormat) -> &'static str {
    match f {
        PixelFormat::Encoded => "MJPEG",
        PixelFormat::Yuyv => "YUYV",
        PixelFormat::Nv12 => "NV12",
        PixelFormat::Gray8 => "GRAY",
        PixelFormat::Rgb8 => "RGB3",
        PixelFormat::Bgr8 => "BGR3",
    }
}

/// Rank of a format under `pref`; `None` when excluded.
fn format_rank(f: PixelFormat, pref: FormatPref) -> Option<u32> {
    let wanted = match pref {
        FormatPref::Auto => {
            let order =
                [PixelFormat::Encoded, PixelFormat::Yuyv, PixelFormat::Nv12, PixelFormat::Gray8, PixelFormat::Rgb8];
            return Some(order.iter().position(|&o| o == f).unwrap_or(order.len()) as u32);
        }
        FormatPref::Mjpeg => PixelFormat::Encoded,
        FormatPref::Yuyv => PixelFormat::Yuyv,
        FormatPref::Nv12 => PixelFormat::Nv12,
        FormatPref::Gray => PixelFormat::Gray8,
        FormatPref::Rgb => return matches!(f, PixelFormat::Rgb8 | PixelFormat::Bgr8).then_some(0),
    };
    (f == wanted).then_some(0)
}

/// The mode closest to the request: nearest pixel count (on a log scale, so
/// 320x240 and 1280x960 are equally far from 640x480), then the preferred
/// format, then the lowest frame rate at or above the wanted one (or the
/// highest below it). `auto` takes GRAY only from a camera without colour
/// modes: colour models lose accuracy on gray input.
pub fn choose_mode(modes: &[Mode], width: u32, height: u32, fps: u32, pref: FormatPref) -> Option<Mode> {
    let want = (f64::from(width) * f64::from(height)).max(1.0);
    modes
        .iter()
        .filter(|m| m.width > 0 && m.height > 0 && m.fps > 0)
        .filter_map(|m| {
            let rank = format_rank(m.format, pref)?;
            let size = ((f64::from(m.width) * f64::from(m.height) / want).ln().abs() * 100.0).round() as u64;
            let rate = if m.fps >= fps { m.fps - fps } else { 1000 + fps - m.fps };
            let colorless = pref == FormatPref::Auto && m.format == PixelFormat::Gray8;
            Some(((colorless, size, rank, rate), *m))
        })
        .min_by_key(|(k, _)| *k)
        .map(|(_, m)| m)
}

/// How the config names a camera.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceSpec {
    Index(u32),
    /// `/dev/videoN` or a link to one (`/dev/v4l/by-id/...`).
    Path(PathBuf),
    /// A substring of the camera's name, case-insensitive.
    Name(String),
}

impl DeviceSpec {
    pub fn parse(s: &str) -> DeviceSpec {
        if let Ok(i) = s.parse() {
            DeviceSpec::Index(i)
        } else if s.starts_with('/') {
            DeviceSpec::Path(s.into())
        } else {
            DeviceSpec::Name(s.into())
        }
    }
}

/// The V4L2 index of `/dev/videoN` or of what a link points to. Resolved at
/// every (re)open: after a replug the by-id link may point elsewhere.
pub fn index_of_path(path: &Path) -> Result<u32, String> {
    let real = std::fs::canonicalize(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => {
            "does not exist (unplugged? `lookout cameras` lists the cameras present)".to_string()
        }
        _ => e.to_string(),
    })?;
    real.file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("video"))
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| format!("resolves to {}, which is not a /dev/videoN device", real.display()))
}

/// `/dev/video*` nodes, sorted by index.
pub fn video_nodes(dev: &Path) -> Vec<(u32, PathBuf)> {
    let mut nodes: Vec<(u32, PathBuf)> = std::fs::read_dir(dev)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let i = e.file_name().to_str()?.strip_prefix("video")?.parse().ok()?;
            Some((i, e.path()))
        })
        .collect();
    nodes.sort();
    nodes
}

/// `/dev/v4l/by-id` links per device index, to show users a name that
/// survives replugging.
pub fn by_id_links() -> Vec<(u32, PathBuf)> {
    let dir = Path::new("/dev/v4l/by-id");
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter_map(|e| Some((index_of_path(&e.path()).ok()?, e.path())))
        .collect()
}

/// A sentence for an OS error while opening a camera: what it means here
/// and what to do.
pub fn explain(reason: &str) -> String {
    let r = reason.to_ascii_lowercase();
    if r.contains("permission denied") || r.contains("os error 13") {
        format!(
            "{reason} (permission denied: add the user to the `video` group, \
             `sudo usermod -aG video $USER`, then log in again)"
        )
    } else if r.contains("busy") || r.contains("os error 16") {
        format!("{reason} (the camera is busy: another program has it open)")
    } else if r.contains("no such") || r.contains("os error 2") || r.contains("os error 19") {
        format!("{reason} (the device vanished: unplugged?)")
    } else {
        reason.to_string()
    }
}

/// A device as `lookout cameras` shows it.
#[derive(Debug, Clone)]
pub struct Listing {
    pub index: u32,
    pub path: PathBuf,
    pub name: String,
    pub by_id: Option<PathBuf>,
    /// The modes, or why they could not be read.
    pub modes: Result<Vec<Mode>, String>,
}

#[cfg(feature = "camera")]
pub use v4l::{frame_from_buffer, list, CameraConnector};

#[cfg(feature = "camera")]
mod v4l {
    use std::sync::mpsc;
    use std::time::{Duration, SystemTime};

    use log::info;
    use nokhwa::utils::{frame_formats, CameraFormat, CameraIndex, FrameFormat, RequestedFormat, RequestedFormatType};
    use nokhwa::Camera;

    use super::*;
    use crate::capture::supervisor::{Connector, Feed};
    use crate::frame::Frame;

    pub struct CameraConnector {
        pub spec: DeviceSpec,
        pub width: u32,
        pub height: u32,
        pub fps: u32,
        pub format: FormatPref,
        name: String,
    }

    impl CameraConnector {
        pub fn new(device: &str, width: u32, height: u32, fps: u32, format: FormatPref) -> CameraConnector {
            CameraConnector {
                spec: DeviceSpec::parse(device),
                width,
                height,
                fps,
                format,
                name: format!("camera:{device}"),
            }
        }

        fn open_err(&self, reason: impl Into<String>) -> CaptureError {
            CaptureError::Open { source_name: self.name.clone(), reason: reason.into() }
        }

        fn index(&self) -> Result<u32, CaptureError> {
            match &self.spec {
                DeviceSpec::Index(i) => Ok(*i),
                DeviceSpec::Path(p) => index_of_path(p).map_err(|r| self.open_err(format!("{}: {r}", p.display()))),
                DeviceSpec::Name(n) => {
                    let cams = nokhwa::query(nokhwa::utils::ApiBackend::Video4Linux)
                        .map_err(|e| self.open_err(explain(&e.to_string())))?;
                    let needle = n.to_lowercase();
                    // Each camera also has metadata nodes with the same
                    // name; the capture node has the lowest index.
                    let found = cams
                        .iter()
                        .filter(|c| c.human_name().to_lowercase().contains(&needle))
                        .filter_map(|c| c.index().as_index().ok())
                        .min();
                    found.ok_or_else(|| {
                        let names: Vec<String> = cams.iter().map(|c| c.human_name()).collect();
                        self.open_err(format!(
                            "no camera name contains {n:?} (cameras present: {})",
                            if names.is_empty() { "none".into() } else { names.join(", ") }
                        ))
                    })
                }
            }
        }
    }

    fn to_pixel(f: FrameFormat) -> PixelFormat {
        match f {
            FrameFormat::MJPEG => PixelFormat::Encoded,
            FrameFormat::YUYV => PixelFormat::Yuyv,
            FrameFormat::NV12 => PixelFormat::Nv12,
            FrameFormat::GRAY => PixelFormat::Gray8,
            FrameFormat::RAWRGB => PixelFormat::Rgb8,
            FrameFormat::RAWBGR => PixelFormat::Bgr8,
        }
    }

    fn to_mode(f: &CameraFormat) -> Mode {
        Mode { format: to_pixel(f.format()), width: f.width(), height: f.height(), fps: f.frame_rate() }
    }

    /// Opens a camera in any mode, to read its mode list.
    fn open_any(index: u32) -> Result<(Camera, Vec<CameraFormat>), String> {
        let any = RequestedFormat::with_formats(RequestedFormatType::None, frame_formats());
        let mut cam = Camera::new(CameraIndex::Index(index), any).map_err(|e| explain(&e.to_string()))?;
        let formats = cam.compatible_camera_formats().map_err(|e| explain(&e.to_string()))?;
        Ok((cam, formats))
    }

    impl Connector for CameraConnector {
        fn connect(&mut self, feed: Feed) -> Result<(), CaptureError> {
            let index = self.index()?;
            let (w, h, fps, pref, name) = (self.width, self.height, self.fps, self.format, self.name.clone());
            let (tx, rx) = mpsc::sync_channel::<Result<Mode, String>>(1);
            // The camera lives and dies on this thread (it is not Send).
            std::thread::Builder::new()
                .name("camera".into())
                .spawn(move || {
                    let opened = (|| -> Result<(Camera, Mode), String> {
                        let (mut cam, formats) = open_any(index)?;
                        let modes: Vec<Mode> = formats.iter().map(to_mode).collect();
                        let pick = choose_mode(&modes, w, h, fps, pref).ok_or_else(|| {
                            format!("no mode matches format {pref:?} (offered: {})", describe(&modes))
                        })?;
                        let exact = formats[modes.iter().position(|m| *m == pick).expect("picked from modes")];
                        let request = RequestedFormat::with_formats(RequestedFormatType::Exact(exact), frame_formats());
                        cam.set_camera_requset(request).map_err(|e| explain(&e.to_string()))?;
                        cam.open_stream().map_err(|e| explain(&e.to_string()))?;
                        Ok((cam, pick))
                    })();
                    let (mut cam, mode) = match opened {
                        Ok(c) => c,
                        Err(e) => {
                            let _ = tx.send(Err(e));
                            return;
                        }
                    };
                    let _ = tx.send(Ok(mode));
                    while !feed.is_closed() {
                        match cam.frame() {
                            Ok(buf) => feed.push(frame_from_buffer(&buf, &name)),
                            Err(e) => {
                                feed.fail(CaptureError::Read { origin: name.clone(), reason: explain(&e.to_string()) });
                                break;
                            }
                        }
                    }
                    let _ = cam.stop_stream();
                })
                .map_err(|e| self.open_err(e.to_string()))?;
            // Opening can hang on a broken device as reading can.
            match rx.recv_timeout(Duration::from_secs(10)) {
                Ok(Ok(mode)) => {
                    info!("{}: /dev/video{index} opened: {mode}", self.name);
                    Ok(())
                }
                Ok(Err(reason)) => Err(self.open_err(format!("/dev/video{index}: {reason}"))),
                Err(_) => Err(self.open_err(format!("/dev/video{index}: opening took over 10 s"))),
            }
        }

        fn name(&self) -> String {
            self.name.clone()
        }
    }

    /// A nokhwa buffer as a raw [`Frame`]: the bytes as the camera sent
    /// them, decoded later by the preprocessor.
    pub fn frame_from_buffer(buf: &nokhwa::Buffer, origin: &str) -> Frame {
        let res = buf.resolution();
        let format = to_pixel(buf.source_frame_format());
        // An encoded frame's size comes from its header.
        let (width, height) = if format == PixelFormat::Encoded { (0, 0) } else { (res.width(), res.height()) };
        Frame {
            seq: 0,
            captured_at: SystemTime::now(),
            width,
            height,
            format,
            data: buf.buffer().to_vec(),
            origin: origin.into(),
        }
    }

    fn describe(modes: &[Mode]) -> String {
        if modes.is_empty() {
            return "none".into();
        }
        modes.iter().map(Mode::to_string).collect::<Vec<_>>().join(", ")
    }

    /// Every `/dev/video*` node with its name and modes, for `lookout
    /// cameras`. Nodes that cannot be opened carry the reason.
    pub fn list() -> Vec<Listing> {
        let links = by_id_links();
        let names: Vec<(u32, String)> = nokhwa::query(nokhwa::utils::ApiBackend::Video4Linux)
            .unwrap_or_default()
            .iter()
            .filter_map(|c| Some((c.index().as_index().ok()?, c.human_name())))
            .collect();
        video_nodes(Path::new("/dev"))
            .into_iter()
            .map(|(index, path)| {
                // Check access first: nokhwa's error for it is less clear.
                let access = std::fs::File::open(&path).map(drop).map_err(|e| explain(&e.to_string()));
                let modes = access.and_then(|()| {
                    let (_, formats) = open_any(index)?;
                    Ok(formats.iter().map(to_mode).collect())
                });
                Listing {
                    index,
                    name: names.iter().find(|(i, _)| *i == index).map_or_else(String::new, |(_, n)| n.clone()),
                    by_id: links.iter().find(|(i, _)| *i == index).map(|(_, p)| p.clone()),
                    path,
                    modes,
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(format: PixelFormat, width: u32, height: u32, fps: u32) -> Mode {
        Mode { format, width, height, fps }
    }

    #[test]
    fn the_closest_mode_wins_when_the_exact_one_is_missing() {
        use PixelFormat::*;
        let modes = [
            m(Yuyv, 1920, 1080, 5),
            m(Encoded, 1920, 1080, 30),
            m(Yuyv, 640, 360, 30),
            m(Encoded, 640, 360, 30),
            m(Encoded, 640, 360, 15),
            m(Encoded, 800, 600, 30),
            m(Gray8, 640, 480, 30),
        ];
        // 640x480 is not offered: 640x360 (-25 %) beats 800x600 (+56 %),
        // MJPEG beats YUYV, and 15 fps is the lowest rate >= 10.
        assert_eq!(choose_mode(&modes, 640, 480, 10, FormatPref::Auto), Some(m(Encoded, 640, 360, 15)));
        assert_eq!(choose_mode(&modes, 640, 480, 20, FormatPref::Auto), Some(m(Encoded, 640, 360, 30)));
        assert_eq!(choose_mode(&modes, 640, 480, 10, FormatPref::Yuyv), Some(m(Yuyv, 640, 360, 30)));
        assert_eq!(choose_mode(&modes, 1920, 1080, 25, FormatPref::Yuyv), Some(m(Yuyv, 1920, 1080, 5)));
        assert_eq!(choose_mode(&modes, 640, 480, 10, FormatPref::Gray), Some(m(Gray8, 640, 480, 30)));
        assert_eq!(choose_mode(&modes, 640, 480, 10, FormatPref::Nv12), None);
        assert_eq!(choose_mode(&[], 640, 480, 10, FormatPref::Auto), None);
        let ir = [m(Gray8, 640, 480, 30)];
        assert_eq!(choose_mode(&ir, 640, 480, 10, FormatPref::Auto), Some(ir[0]), "gray when nothing else");
    }

    #[test]
    fn devices_are_named_by_index_path_or_name() {
        assert_eq!(DeviceSpec::parse("2"), DeviceSpec::Index(2));
        assert_eq!(DeviceSpec::parse("/dev/video0"), DeviceSpec::Path("/dev/video0".into()));
        assert_eq!(DeviceSpec::parse("C920"), DeviceSpec::Name("C920".into()));
    }

    #[test]
    fn links_resolve_to_the_video_index_they_point_at() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("video7"), "").unwrap();
        std::fs::create_dir(d.path().join("by-id")).unwrap();
        let link = d.path().join("by-id/usb-Acme_Cam-video-index0");
        std::os::unix::fs::symlink("../video7", &link).unwrap();
        assert_eq!(index_of_path(&link), Ok(7));
        let e = index_of_path(&d.path().join("by-id/gone")).unwrap_err();
        assert!(e.contains("does not exist") && e.contains("lookout cameras"), "{e}");
        let e = index_of_path(&d.path().join("by-id")).unwrap_err();
        assert!(e.contains("not a /dev/videoN"), "{e}");
        assert_eq!(video_nodes(d.path()), vec![(7, d.path().join("video7"))]);
    }

    #[test]
    fn os_errors_come_with_what_to_do() {
        assert!(explain("Permission denied (os error 13)").contains("`video` group"));
        assert!(explain("Device or resource busy (os error 16)").contains("another program"));
        assert!(explain("No such device (os error 19)").contains("unplugged"));
        assert_eq!(explain("weird"), "weird");
    }
}
