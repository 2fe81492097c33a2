//! The frame-source seam. A source produces [`Frame`]s; the daemon runs it
//! on its own thread, so a source may block.
//!
//! - `files`: image files or a directory, replayed.
//! - `camera`: V4L2 (USB) cameras through nokhwa, behind the `camera` feature.
//! - `command`: an MJPEG stream on a program's stdout (Pi and Jetson CSI
//!   cameras, RTSP through ffmpeg), split by [`mjpeg`].
//! - `snapshot`: a JPEG fetched over HTTP(S) every interval.
//!
//! Live sources run under [`supervisor::Supervised`], which reopens them with
//! backoff; [`health`] judges the frames they deliver.

pub mod camera;
mod command;
mod config;
mod files;
pub mod health;
pub mod mjpeg;
mod snapshot;
pub mod supervisor;

use std::time::Duration;

pub use command::CommandConnector;
pub use config::SourceConfig;
pub use files::FilesSource;
pub use snapshot::SnapshotSource;

use crate::frame::Frame;

#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("{source_name}: cannot open: {reason}")]
    Open { source_name: String, reason: String },
    #[error("{origin}: cannot read frame: {reason}")]
    Read { origin: String, reason: String },
    #[error("{source_name}: no frame for {secs} s (the device hangs); reopening it")]
    Stalled { source_name: String, secs: f64 },
    /// Not an error: the source waits (backoff, or its next snapshot is not
    /// due). The capture loop sleeps `wait`, interruptibly, and asks again.
    #[error("next frame in {wait:?}")]
    NotYet { wait: Duration },
}

pub trait FrameSource: Send {
    /// The next frame, `Ok(None)` when the source has ended for good (a
    /// replay that does not loop). Errors are per frame: the caller logs
    /// them and asks again.
    fn next_frame(&mut self) -> Result<Option<Frame>, CaptureError>;

    /// A live source (a camera) only matters for its newest frame, so the
    /// daemon drops older ones; a replay hands over every frame.
    fn is_live(&self) -> bool;

    /// For log lines.
    fn name(&self) -> String;
}

/// Opens the source a config describes. Live sources connect lazily, on
/// their first frame: a camera that is unplugged at boot is retried with
/// backoff rather than stopping the daemon.
pub fn open(cfg: &SourceConfig) -> Result<Box<dyn FrameSource>, CaptureError> {
    use supervisor::{Backoff, Supervised};
    match cfg {
        SourceConfig::Files { path, looping, fps } => Ok(Box::new(FilesSource::open(path, *looping, *fps)?)),
        SourceConfig::Command { command, base, frame_timeout, reconnect_min, reconnect_max } => {
            Ok(Box::new(Supervised::new(
                CommandConnector::new(command.clone(), base.clone()),
                *frame_timeout,
                Backoff::new(*reconnect_min, *reconnect_max),
            )))
        }
        SourceConfig::Snapshot { url, interval, timeout, username, password, reconnect_max } => {
            let password = password.as_ref().map(|p| p.read(&p.key("source.password"))).transpose().map_err(|e| {
                CaptureError::Open {
                    source_name: format!("snapshot:{}", crate::secret::redact(url)),
                    reason: e.to_string(),
                }
            })?;
            Ok(Box::new(SnapshotSource::new(url, *interval, *timeout, username.clone(), password, *reconnect_max)))
        }
        #[cfg(feature = "camera")]
        SourceConfig::Camera {
            device,
            width,
            height,
            fps,
            format,
            frame_timeout,
            reconnect_min,
            reconnect_max,
            ..
        } => Ok(Box::new(Supervised::new(
            camera::CameraConnector::new(device, *width, *height, *fps, *format),
            *frame_timeout,
            Backoff::new(*reconnect_min, *reconnect_max),
        ))),
        #[cfg(not(feature = "camera"))]
        SourceConfig::Camera { device, .. } => Err(CaptureError::Open {
            source_name: format!("camera:{device}"),
            reason: "this lookout was built without the `camera` feature; rebuild with it, or use a `command` source"
                .into(),
        }),
    }
}
