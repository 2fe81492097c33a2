//! What a frame source is, as the config resolves it (the `[source]` and
//! `[sources.NAME]` tables); [`super::open`] builds the source from it.

use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

use super::camera::FormatPref;
use crate::preprocess::ColorRange;
use crate::secret::SecretSource;

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum SourceConfig {
    Files {
        path: PathBuf,
        #[serde(rename = "loop")]
        looping: bool,
        /// Frames per second; 0 replays as fast as the classifier takes them,
        /// without dropping any.
        fps: f64,
    },
    /// A V4L2 camera (nokhwa).
    Camera {
        /// An index, `/dev/videoN`, a `/dev/v4l/by-id/...` link or a name substring.
        device: String,
        width: u32,
        height: u32,
        fps: u32,
        format: FormatPref,
        /// How its YUYV/NV12 frames code luma and chroma (V4L2 reports it,
        /// nokhwa does not pass it on); MJPEG is always full range.
        color_range: ColorRange,
        /// No frame for this long: the camera is reopened.
        #[serde(serialize_with = "secs")]
        frame_timeout: Duration,
        #[serde(serialize_with = "secs")]
        reconnect_min: Duration,
        #[serde(serialize_with = "secs")]
        reconnect_max: Duration,
    },
    /// A program writing MJPEG to stdout.
    Command {
        /// Arguments may hold `${file:..}`, `${env:..}` or
        /// `${credential:..}` references, expanded only when the program
        /// starts (and never logged).
        #[serde(serialize_with = "redacted_args")]
        command: Vec<String>,
        /// The config file's folder: relative `${file:..}` paths start here.
        #[serde(skip)]
        base: PathBuf,
        #[serde(serialize_with = "secs")]
        frame_timeout: Duration,
        #[serde(serialize_with = "secs")]
        reconnect_min: Duration,
        #[serde(serialize_with = "secs")]
        reconnect_max: Duration,
    },
    /// A JPEG fetched over HTTP(S) every interval.
    Snapshot {
        #[serde(serialize_with = "redacted")]
        url: String,
        #[serde(serialize_with = "secs")]
        interval: Duration,
        #[serde(serialize_with = "secs")]
        timeout: Duration,
        #[serde(skip_serializing_if = "Option::is_none")]
        username: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        password: Option<SecretSource>,
        #[serde(serialize_with = "secs")]
        reconnect_max: Duration,
    },
}

impl SourceConfig {
    /// The YUV range of the frames this source delivers; only cameras send
    /// raw YUV, and only their range is configurable.
    pub fn color_range(&self) -> ColorRange {
        match self {
            SourceConfig::Camera { color_range, .. } => *color_range,
            _ => ColorRange::Limited,
        }
    }

    /// Whether the config file itself holds a secret (a snapshot password,
    /// a password in a URL of a command's arguments): then it must not be
    /// readable by others.
    pub fn holds_secret(&self) -> bool {
        match self {
            SourceConfig::Snapshot { url, password, .. } => {
                matches!(password, Some(SecretSource::Inline(_))) || crate::secret::redact(url) != *url
            }
            SourceConfig::Command { command, .. } => command.iter().any(|a| crate::secret::redact(a) != *a),
            _ => false,
        }
    }
}

/// URLs with a password print without it (`check-config`).
fn redacted<S: serde::Serializer>(url: &str, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&crate::secret::redact(url))
}

fn redacted_args<S: serde::Serializer>(args: &[String], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(args.iter().map(|a| crate::secret::redact(a)))
}

fn secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}
