//! The frame-source seam. A source produces [`Frame`]s; the daemon runs it
//! on its own thread, so a source may block.

mod files;

pub use files::FilesSource;

use crate::config::SourceConfig;
use crate::frame::Frame;

#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("{source_name}: cannot open: {reason}")]
    Open { source_name: String, reason: String },
    #[error("{origin}: cannot read frame: {reason}")]
    Read { origin: String, reason: String },
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

/// Opens the source a config describes.
pub fn open(cfg: &SourceConfig) -> Result<Box<dyn FrameSource>, CaptureError> {
    match cfg {
        SourceConfig::Files { path, looping, fps } => Ok(Box::new(FilesSource::open(path, *looping, *fps)?)),
    }
}
