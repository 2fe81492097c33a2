//! The configuration file: strict TOML in, a resolved [`Config`] out.
//!
//! Strict because a typo in an unattended daemon's config must stop it at
//! start with the file, line and key named, not be silently ignored. Paths
//! are resolved against the config file's folder (systemd starts services in
//! `/`), and model parameters come from the model's manifest unless the
//! config overrides them.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::capture::camera::FormatPref;
use crate::capture::health::HealthParams;
use crate::model::manifest::{Manifest, ManifestError};
use crate::preprocess::{ColorRange, PreprocessParams, ResizeFilter};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read the config file: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error("{path}:{line}: {message}")]
    Parse { path: PathBuf, line: usize, message: String },
    #[error("{path}: `{key}` {message}")]
    Invalid { path: PathBuf, key: &'static str, message: String },
    #[error("{0}")]
    Manifest(#[from] ManifestError),
}

// ---- the file as written -------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    #[serde(default)]
    device: DeviceSection,
    source: SourceSection,
    model: ModelSection,
    #[serde(default)]
    mqtt: MqttSection,
    #[serde(default)]
    schedule: ScheduleSection,
    #[serde(default)]
    triggers: crate::triggers::TriggersConfig,
    #[serde(default)]
    thermal: crate::thermal::ThermalConfig,
    #[serde(default)]
    health: HealthSection,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeviceSection {
    id: Option<String>,
    name: Option<String>,
    state_dir: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
enum SourceSection {
    Files {
        path: PathBuf,
        #[serde(default, rename = "loop")]
        looping: bool,
        #[serde(default)]
        fps: f64,
    },
    Camera {
        #[serde(default = "default_camera_device")]
        device: String,
        #[serde(default = "default_width")]
        width: u32,
        #[serde(default = "default_height")]
        height: u32,
        #[serde(default = "default_camera_fps")]
        fps: u32,
        #[serde(default)]
        format: FormatPref,
        #[serde(default)]
        color_range: ColorRange,
        #[serde(default = "default_frame_timeout")]
        frame_timeout: f64,
        #[serde(default = "default_reconnect_min")]
        reconnect_min: f64,
        #[serde(default = "default_reconnect_max")]
        reconnect_max: f64,
    },
    Command {
        command: Vec<String>,
        #[serde(default = "default_frame_timeout")]
        frame_timeout: f64,
        #[serde(default = "default_reconnect_min")]
        reconnect_min: f64,
        #[serde(default = "default_reconnect_max")]
        reconnect_max: f64,
    },
    Snapshot {
        url: String,
        #[serde(default = "default_snapshot_interval")]
        interval: f64,
        #[serde(default = "default_snapshot_timeout")]
        timeout: f64,
        username: Option<String>,
        password: Option<String>,
        #[serde(default = "default_reconnect_max")]
        reconnect_max: f64,
    },
}

fn default_camera_device() -> String {
    "0".into()
}
fn default_width() -> u32 {
    640
}
fn default_height() -> u32 {
    480
}
fn default_camera_fps() -> u32 {
    15
}
fn default_frame_timeout() -> f64 {
    5.0
}
fn default_reconnect_min() -> f64 {
    1.0
}
fn default_reconnect_max() -> f64 {
    60.0
}
fn default_snapshot_interval() -> f64 {
    1.0
}
fn default_snapshot_timeout() -> f64 {
    5.0
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct HealthSection {
    stale_after: f64,
    frozen_frames: u32,
    dark_below: f32,
    uniform_below: f32,
    skip_unhealthy: bool,
}

impl Default for HealthSection {
    fn default() -> Self {
        let d = HealthParams::default();
        HealthSection {
            stale_after: d.stale_after.as_secs_f64(),
            frozen_frames: d.frozen_frames,
            dark_below: d.dark_below,
            uniform_below: d.uniform_below,
            skip_unhealthy: d.skip_unhealthy,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ModelSection {
    path: PathBuf,
    manifest: Option<PathBuf>,
    labels: Option<PathBuf>,
    input_size: Option<u32>,
    resize: Option<ResizeFilter>,
    crop_fraction: Option<f32>,
    mean: Option<[f32; 3]>,
    std: Option<[f32; 3]>,
    /// Region of interest `[x, y, w, h]`, fractions of the frame.
    roi: Option<[f32; 4]>,
    #[serde(default = "default_top_k")]
    top_k: usize,
    #[serde(default)]
    threads: usize,
    #[serde(default = "default_true")]
    verify_sha256: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct MqttSection {
    enabled: bool,
    host: String,
    port: u16,
    client_id: Option<String>,
    topic_prefix: String,
    qos: u8,
    keep_alive: f64,
    reconnect_min: f64,
    reconnect_max: f64,
    connect_timeout: f64,
    username: Option<String>,
    password_file: Option<PathBuf>,
    password_env: Option<String>,
    password_credential: Option<String>,
    tls: bool,
    ca_file: Option<PathBuf>,
    client_cert: Option<PathBuf>,
    client_key: Option<PathBuf>,
    discovery: bool,
    discovery_prefix: String,
    diagnostics_interval: f64,
    outbox_max_rows: u64,
    outbox_max_bytes: u64,
    outbox_commit_interval: f64,
}

impl Default for MqttSection {
    fn default() -> Self {
        MqttSection {
            enabled: true,
            host: "localhost".into(),
            port: 1883,
            client_id: None,
            topic_prefix: "lookout".into(),
            qos: 1,
            keep_alive: 30.0,
            reconnect_min: 1.0,
            reconnect_max: 60.0,
            connect_timeout: 10.0,
            username: None,
            password_file: None,
            password_env: None,
            password_credential: None,
            tls: false,
            ca_file: None,
            client_cert: None,
            client_key: None,
            discovery: true,
            discovery_prefix: "homeassistant".into(),
            diagnostics_interval: 60.0,
            outbox_max_rows: 100_000,
            outbox_max_bytes: 64 << 20,
            outbox_commit_interval: 1.0,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct ScheduleSection {
    interval: f64,
}

impl Default for ScheduleSection {
    fn default() -> Self {
        ScheduleSection { interval: 1.0 }
    }
}

fn default_top_k() -> usize {
    5
}

fn default_true() -> bool {
    true
}

// ---- the resolved configuration ----------------------------------------

/// A validated configuration with absolute paths and model defaults filled in.
#[derive(Debug, Clone, Serialize)]
pub struct Config {
    #[serde(skip)]
    pub file: PathBuf,
    pub device: Device,
    pub source: SourceConfig,
    pub model: ModelConfig,
    pub mqtt: MqttConfig,
    pub schedule: Schedule,
    pub triggers: crate::triggers::TriggersConfig,
    pub thermal: crate::thermal::ThermalConfig,
    pub health: HealthParams,
}

#[derive(Debug, Clone, Serialize)]
pub struct Device {
    /// Goes into MQTT topics and client ids, so restricted to `[A-Za-z0-9_-]`.
    pub id: String,
    pub name: String,
    /// Where the MQTT outbox (and the persisted result counter) lives.
    pub state_dir: PathBuf,
}

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
        #[serde(with = "secs")]
        frame_timeout: Duration,
        #[serde(with = "secs")]
        reconnect_min: Duration,
        #[serde(with = "secs")]
        reconnect_max: Duration,
    },
    /// A program writing MJPEG to stdout.
    Command {
        command: Vec<String>,
        #[serde(with = "secs")]
        frame_timeout: Duration,
        #[serde(with = "secs")]
        reconnect_min: Duration,
        #[serde(with = "secs")]
        reconnect_max: Duration,
    },
    /// A JPEG fetched over HTTP(S) every interval.
    Snapshot {
        url: String,
        #[serde(with = "secs")]
        interval: Duration,
        #[serde(with = "secs")]
        timeout: Duration,
        #[serde(skip_serializing_if = "Option::is_none")]
        username: Option<String>,
        /// Never printed by `check-config`.
        #[serde(skip_serializing)]
        password: Option<String>,
        #[serde(with = "secs")]
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
}

#[derive(Debug, Clone, Serialize)]
pub struct ModelConfig {
    pub path: PathBuf,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub manifest_path: Option<PathBuf>,
    /// The manifest as read, kept for the model name and sha256 it carries.
    #[serde(skip)]
    pub manifest: Option<Manifest>,
    pub labels: PathBuf,
    /// Square input side; `None` means "whatever the ONNX file declares".
    #[serde(skip_serializing_if = "Option::is_none")]
    pub input_size: Option<u32>,
    pub preprocess: PreprocessParams,
    pub top_k: usize,
    /// Inference threads; 0 = one per core.
    pub threads: usize,
    pub verify_sha256: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct MqttConfig {
    pub enabled: bool,
    pub host: String,
    pub port: u16,
    pub client_id: String,
    pub topic_prefix: String,
    pub qos: u8,
    #[serde(with = "secs")]
    pub keep_alive: Duration,
    #[serde(with = "secs")]
    pub reconnect_min: Duration,
    #[serde(with = "secs")]
    pub reconnect_max: Duration,
    #[serde(with = "secs")]
    pub connect_timeout: Duration,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// Where the password comes from; never the password itself, so the
    /// config (and `check-config` output) can be world-readable.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password: Option<PasswordSource>,
    /// `Some` when TLS is on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsFiles>,
    /// Home Assistant discovery prefix; `None` when discovery is off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub discovery_prefix: Option<String>,
    #[serde(with = "secs")]
    pub diagnostics_interval: Duration,
    pub outbox_max_rows: u64,
    pub outbox_max_bytes: u64,
    #[serde(with = "secs")]
    pub outbox_commit_interval: Duration,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PasswordSource {
    File(PathBuf),
    Env(String),
    /// A systemd credential: `$CREDENTIALS_DIRECTORY/<name>`.
    Credential(String),
}

#[derive(Debug, Clone, Serialize)]
pub struct TlsFiles {
    pub ca_file: PathBuf,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_cert: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_key: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Schedule {
    #[serde(with = "secs")]
    pub interval: Duration,
}

mod secs {
    pub fn serialize<S: serde::Serializer>(d: &std::time::Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }
}

impl Config {
    /// Reads, parses, validates and resolves a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::Read { path: path.to_owned(), reason: io_reason(&e) })?;
        Config::parse(&text, path)
    }

    /// Parses `text` as if read from `path` (relative paths resolve against
    /// `path`'s folder).
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let raw: FileConfig = toml::from_str(text).map_err(|e| parse_error(path, text, &e))?;
        let base = path.parent().map(Path::to_owned).unwrap_or_default();
        resolve(raw, path, &base)
    }

    /// The resolved configuration as TOML, for `lookout check-config`.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }

    /// Replaces the model (for `classify --model`): the manifest beside the
    /// new file supplies its defaults; the config's explicit overrides stay.
    pub fn with_model(mut self, model: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(&self.file).unwrap_or_default();
        let raw: Option<FileConfig> = toml::from_str(&text).ok();
        let mut section = match raw {
            Some(raw) => raw.model,
            None => ModelSection {
                path: PathBuf::new(),
                manifest: None,
                labels: None,
                input_size: None,
                resize: None,
                crop_fraction: None,
                mean: None,
                std: None,
                roi: None,
                top_k: default_top_k(),
                threads: 0,
                verify_sha256: true,
            },
        };
        section.path = std::path::absolute(model).unwrap_or_else(|_| model.to_owned());
        section.manifest = None;
        // The new model's own manifest names its labels; without one, the
        // config's labels are the best guess (and are checked against the
        // model's output width at load).
        if Manifest::path_beside(&section.path).is_file() {
            section.labels = None;
        }
        let base = self.file.parent().map(Path::to_owned).unwrap_or_default();
        self.model = resolve_model(section, &self.file, &base)?;
        Ok(self)
    }
}

fn io_reason(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "no such file (check the path)".into(),
        std::io::ErrorKind::PermissionDenied => "permission denied (check the file's owner and mode)".into(),
        _ => e.to_string(),
    }
}

/// One line: the line number from the span, toml's message without its
/// multi-line excerpt.
fn parse_error(path: &Path, text: &str, e: &toml::de::Error) -> ConfigError {
    let message = e.message().trim().replace('\n', "; ");
    let mut line = e.span().map(|s| line_of(text, s.start)).unwrap_or(0);
    // Errors inside the tagged `[source]` table carry the table's span, not
    // the key's: find the offending key's own line.
    let span = e.span().unwrap_or(0..0);
    let start = span.start.min(text.len());
    let table = &text[start..span.end.clamp(start, text.len())];
    let off = match message.strip_prefix("unknown field `").and_then(|m| m.split('`').next()) {
        Some(key) => find_key(&text[start..], key),
        // A bad value there: the line holding the value serde quotes.
        None if table.starts_with('[') => bad_value(&message).and_then(|v| find_value(table, &v)),
        None => None,
    };
    if let Some(off) = off {
        line = line_of(text, start + off);
    }
    if message.starts_with("unknown field") {
        let hint = "remove the key or fix its spelling; config/lookout.toml lists every key";
        return ConfigError::Parse { path: path.to_owned(), line, message: format!("{message} ({hint})") };
    }
    // Wrong types and values: name the key written on the offending line.
    let key = text.lines().nth(line.saturating_sub(1)).and_then(|l| l.split_once('=')).map(|(k, _)| k.trim());
    let message = match key {
        Some(k) if !k.is_empty() && !k.starts_with('[') => format!("`{k}`: {message}"),
        _ => message,
    };
    ConfigError::Parse { path: path.to_owned(), line, message }
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].bytes().filter(|&b| b == b'\n').count() + 1
}

/// The value a serde message quotes, as TOML writes it: ``unknown variant
/// `pc` `` -> `"pc"`, `invalid type: string "x"` -> `"x"`, `invalid type:
/// integer `5`` -> `5`.
fn bad_value(message: &str) -> Option<String> {
    if let Some(v) = message.strip_prefix("unknown variant `") {
        return v.split('`').next().map(|v| format!("{v:?}"));
    }
    let rest = message.strip_prefix("invalid type: ")?;
    match rest.split_once(' ')? {
        ("string", v) => v.split(", expected").next().map(str::to_owned),
        (_, v) => v.split('`').nth(1).map(str::to_owned),
    }
}

/// Offset of the first `key = value` line in `text` whose value is `value`.
fn find_value(text: &str, value: &str) -> Option<usize> {
    let mut off = 0;
    for l in text.split_inclusive('\n') {
        if l.split_once('=').is_some_and(|(_, v)| v.split('#').next().unwrap_or("").trim() == value) {
            return Some(off);
        }
        off += l.len();
    }
    None
}

fn find_key(text: &str, key: &str) -> Option<usize> {
    let mut off = 0;
    for l in text.split_inclusive('\n') {
        let t = l.trim_start();
        if t.strip_prefix(key).is_some_and(|rest| rest.trim_start().starts_with('=')) {
            return Some(off);
        }
        off += l.len();
    }
    None
}

/// `base/../x` -> `x`, without touching the file system (symlinks such as
/// `/dev/v4l/by-id` links must stay as written).
fn join(base: &Path, p: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in base.join(p).components() {
        match c {
            Component::ParentDir if matches!(out.components().next_back(), Some(Component::Normal(_))) => {
                out.pop();
            }
            c => out.push(c),
        }
    }
    out
}

fn invalid(path: &Path, key: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { path: path.to_owned(), key, message: message.into() }
}

fn resolve(raw: FileConfig, file: &Path, base: &Path) -> Result<Config, ConfigError> {
    let id = match raw.device.id {
        Some(id) => id,
        None => default_device_id()
            .and_then(|id| match id.as_str() {
                "" | "localhost" | "_none_" => Err(format!("the host name is {id:?}")),
                _ => Ok(id),
            })
            .map_err(|why| {
                invalid(
                    file,
                    "device.id",
                    format!("is not set and {why}; set a host name (hostnamectl hostname NAME) or device.id"),
                )
            })?,
    };
    if id.is_empty() || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
        return Err(invalid(
            file,
            "device.id",
            format!("{id:?} must be non-empty and use only letters, digits, '-' and '_' (it is part of MQTT topics)"),
        ));
    }
    let name = raw.device.name.unwrap_or_else(|| format!("lookout {id}"));
    // systemd's StateDirectory= sets STATE_DIRECTORY; outside systemd the FHS place.
    let state_dir = match raw.device.state_dir {
        Some(p) => join(base, &p),
        None => {
            std::env::var_os("STATE_DIRECTORY").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/var/lib/lookout"))
        }
    };

    let source = match raw.source {
        SourceSection::Files { path, looping, fps } => {
            let path = join(base, &path);
            if !path.exists() {
                return Err(invalid(file, "source.path", format!("{} does not exist", path.display())));
            }
            if !(fps.is_finite() && fps >= 0.0) {
                return Err(invalid(
                    file,
                    "source.fps",
                    format!("is {fps}; use 0 (as fast as classified) or a positive rate"),
                ));
            }
            SourceConfig::Files { path, looping, fps }
        }
        SourceSection::Camera {
            device,
            width,
            height,
            fps,
            format,
            color_range,
            frame_timeout,
            reconnect_min,
            reconnect_max,
        } => {
            if device.trim().is_empty() {
                return Err(invalid(file, "source.device", "is empty; give an index (0), /dev/videoN, a /dev/v4l/by-id link or part of the camera's name (`lookout cameras` lists them)"));
            }
            if !(16..=8192).contains(&width) || !(16..=8192).contains(&height) {
                return Err(invalid(
                    file,
                    "source.width",
                    format!("{width}x{height} is not a camera size; use e.g. 640 x 480"),
                ));
            }
            if !(1..=1000).contains(&fps) {
                return Err(invalid(
                    file,
                    "source.fps",
                    format!("is {fps}; give frames per second between 1 and 1000"),
                ));
            }
            let (frame_timeout, reconnect_min, reconnect_max) =
                supervision(file, frame_timeout, reconnect_min, reconnect_max)?;
            SourceConfig::Camera {
                device,
                width,
                height,
                fps,
                format,
                color_range,
                frame_timeout,
                reconnect_min,
                reconnect_max,
            }
        }
        SourceSection::Command { command, frame_timeout, reconnect_min, reconnect_max } => {
            if command.first().is_none_or(|p| p.trim().is_empty()) {
                return Err(invalid(file, "source.command", "is empty; give the program and its arguments, e.g. [\"rpicam-vid\", \"--codec\", \"mjpeg\", \"-t\", \"0\", \"-o\", \"-\"]"));
            }
            let (frame_timeout, reconnect_min, reconnect_max) =
                supervision(file, frame_timeout, reconnect_min, reconnect_max)?;
            SourceConfig::Command { command, frame_timeout, reconnect_min, reconnect_max }
        }
        SourceSection::Snapshot { url, interval, timeout, username, password, reconnect_max } => {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(invalid(file, "source.url", format!("{url:?} must start with http:// or https://")));
            }
            if password.is_some() && username.is_none() {
                return Err(invalid(file, "source.password", "is set without source.username; basic auth needs both"));
            }
            let interval = seconds(file, "source.interval", interval, 0.01)?;
            let timeout = seconds(file, "source.timeout", timeout, 0.01)?;
            let reconnect_max = seconds(file, "source.reconnect_max", reconnect_max, 0.01)?;
            SourceConfig::Snapshot { url, interval, timeout, username, password, reconnect_max }
        }
    };

    let model = resolve_model(raw.model, file, base)?;

    let m = raw.mqtt;
    if m.host.is_empty() {
        return Err(invalid(file, "mqtt.host", "is empty; name the broker's host"));
    }
    if m.port == 0 {
        return Err(invalid(file, "mqtt.port", "is 0; use the broker's port (1883 is the default)"));
    }
    if m.qos > 2 {
        return Err(invalid(file, "mqtt.qos", format!("is {}; MQTT knows QoS 0, 1 and 2", m.qos)));
    }
    if m.topic_prefix.is_empty() || m.topic_prefix.contains(['+', '#']) || m.topic_prefix.ends_with('/') {
        return Err(invalid(
            file,
            "mqtt.topic_prefix",
            format!("{:?} must be non-empty, without '+', '#' or a trailing '/'", m.topic_prefix),
        ));
    }
    let keep_alive = seconds(file, "mqtt.keep_alive", m.keep_alive, 5.0)?;
    let reconnect_min = seconds(file, "mqtt.reconnect_min", m.reconnect_min, 0.01)?;
    let reconnect_max = seconds(file, "mqtt.reconnect_max", m.reconnect_max, 0.01)?;
    if reconnect_max < reconnect_min {
        return Err(invalid(file, "mqtt.reconnect_max", "is below mqtt.reconnect_min"));
    }
    let connect_timeout = seconds(file, "mqtt.connect_timeout", m.connect_timeout, 1.0)?;
    let password = match (m.password_file, m.password_env, m.password_credential) {
        (None, None, None) => None,
        (Some(p), None, None) => Some(PasswordSource::File(join(base, &p))),
        (None, Some(v), None) => Some(PasswordSource::Env(v)),
        (None, None, Some(c)) => Some(PasswordSource::Credential(c)),
        _ => {
            return Err(invalid(
                file,
                "mqtt.password_file",
                "password_file, password_env and password_credential exclude each other; keep one",
            ))
        }
    };
    if password.is_some() && m.username.is_none() {
        return Err(invalid(
            file,
            "mqtt.username",
            "is not set but a password source is; MQTT sends a password only with a user name",
        ));
    }
    let tls = match (m.tls, m.ca_file) {
        (false, None) => None,
        (false, Some(_)) => {
            return Err(invalid(file, "mqtt.tls", "is false but mqtt.ca_file is set; set tls = true to use it"))
        }
        (true, None) => {
            return Err(invalid(
                file,
                "mqtt.ca_file",
                "is not set; TLS needs the CA certificate (PEM) that signed the broker's",
            ))
        }
        (true, Some(ca)) => {
            if m.client_cert.is_some() != m.client_key.is_some() {
                return Err(invalid(
                    file,
                    "mqtt.client_key",
                    "client_cert and client_key go together; set both or neither",
                ));
            }
            Some(TlsFiles {
                ca_file: join(base, &ca),
                client_cert: m.client_cert.map(|p| join(base, &p)),
                client_key: m.client_key.map(|p| join(base, &p)),
            })
        }
    };
    if m.discovery_prefix.is_empty() || m.discovery_prefix.contains(['+', '#']) || m.discovery_prefix.ends_with('/') {
        return Err(invalid(
            file,
            "mqtt.discovery_prefix",
            format!("{:?} must be non-empty, without '+', '#' or a trailing '/'", m.discovery_prefix),
        ));
    }
    let diagnostics_interval = seconds(file, "mqtt.diagnostics_interval", m.diagnostics_interval, 1.0)?;
    let outbox_commit_interval = seconds(file, "mqtt.outbox_commit_interval", m.outbox_commit_interval, 0.0)?;
    if m.outbox_max_rows == 0 || m.outbox_max_bytes < 4096 {
        return Err(invalid(
            file,
            "mqtt.outbox_max_rows",
            "outbox_max_rows must be at least 1 and outbox_max_bytes at least 4096",
        ));
    }
    let mqtt = MqttConfig {
        enabled: m.enabled,
        client_id: m.client_id.unwrap_or_else(|| format!("lookout-{id}")),
        host: m.host,
        port: m.port,
        topic_prefix: m.topic_prefix,
        qos: m.qos,
        keep_alive,
        reconnect_min,
        reconnect_max,
        connect_timeout,
        username: m.username,
        password,
        tls,
        discovery_prefix: m.discovery.then_some(m.discovery_prefix),
        diagnostics_interval,
        outbox_max_rows: m.outbox_max_rows,
        outbox_max_bytes: m.outbox_max_bytes,
        outbox_commit_interval,
    };

    let h = raw.health;
    let health = HealthParams {
        stale_after: seconds(file, "health.stale_after", h.stale_after, 0.01)?,
        frozen_frames: h.frozen_frames,
        dark_below: luma(file, "health.dark_below", h.dark_below)?,
        uniform_below: luma(file, "health.uniform_below", h.uniform_below)?,
        skip_unhealthy: h.skip_unhealthy,
    };

    let interval = seconds(file, "schedule.interval", raw.schedule.interval, 0.0)?;
    if interval.is_zero() {
        return Err(invalid(file, "schedule.interval", "is 0; give the seconds between classifications, e.g. 1.0"));
    }

    // Group labels and threshold names are checked against the model's
    // labels when the model is loaded.
    raw.triggers.validate().map_err(|e| match e {
        crate::triggers::TriggerError::Invalid { key, message } => invalid(file, key, message),
    })?;
    raw.thermal.validate().map_err(|(key, message)| invalid(file, key, message))?;

    Ok(Config {
        file: file.to_owned(),
        device: Device { id, name, state_dir },
        source,
        model,
        mqtt,
        schedule: Schedule { interval },
        triggers: raw.triggers,
        thermal: raw.thermal,
        health,
    })
}

fn supervision(file: &Path, timeout: f64, min: f64, max: f64) -> Result<(Duration, Duration, Duration), ConfigError> {
    let timeout = seconds(file, "source.frame_timeout", timeout, 0.1)?;
    let min = seconds(file, "source.reconnect_min", min, 0.01)?;
    let max = seconds(file, "source.reconnect_max", max, 0.01)?;
    if max < min {
        return Err(invalid(file, "source.reconnect_max", "is below source.reconnect_min"));
    }
    Ok((timeout, min, max))
}

fn luma(file: &Path, key: &'static str, v: f32) -> Result<f32, ConfigError> {
    if !(v.is_finite() && (0.0..=255.0).contains(&v)) {
        return Err(invalid(file, key, format!("is {v}; give a luma level between 0 (off) and 255")));
    }
    Ok(v)
}

fn seconds(file: &Path, key: &'static str, v: f64, min: f64) -> Result<Duration, ConfigError> {
    if !v.is_finite() || v < min || v > 1e7 {
        return Err(invalid(file, key, format!("is {v}; give seconds between {min} and 10000000")));
    }
    Ok(Duration::from_secs_f64(v))
}

fn resolve_model(m: ModelSection, file: &Path, base: &Path) -> Result<ModelConfig, ConfigError> {
    let path = join(base, &m.path);
    if !path.is_file() {
        return Err(invalid(
            file,
            "model.path",
            format!("{} does not exist; export a model (tools/README.md) or fix the path", path.display()),
        ));
    }
    let manifest_path = match m.manifest {
        Some(p) => {
            let p = join(base, &p);
            if !p.is_file() {
                return Err(invalid(file, "model.manifest", format!("{} does not exist", p.display())));
            }
            Some(p)
        }
        None => Some(Manifest::path_beside(&path)).filter(|p| p.is_file()),
    };
    let manifest = manifest_path.as_deref().map(Manifest::load).transpose()?;
    let manifest_dir = manifest_path.as_deref().and_then(Path::parent).unwrap_or(Path::new(""));

    let labels = match (m.labels, &manifest) {
        (Some(l), _) => join(base, &l),
        (None, Some(man)) => join(manifest_dir, &man.labels),
        (None, None) => {
            return Err(invalid(
                file,
                "model.labels",
                "is not set and the model has no manifest beside it; give the labels file (one label per line)",
            ));
        }
    };
    if !labels.is_file() {
        return Err(invalid(file, "model.labels", format!("{} does not exist", labels.display())));
    }

    let from_manifest = manifest.as_ref().map(|m| m.preprocess.clone());
    let defaults = from_manifest.unwrap_or_default();
    let preprocess = PreprocessParams {
        resize: m.resize.unwrap_or(defaults.resize),
        crop_fraction: m.crop_fraction.unwrap_or(defaults.crop_fraction),
        mean: m.mean.unwrap_or(defaults.mean),
        std: m.std.unwrap_or(defaults.std),
        roi: m.roi,
    };
    if let Some(problem) = m.roi.and_then(crate::preprocess::roi_problem) {
        return Err(invalid(file, "model.roi", problem));
    }
    if !(preprocess.crop_fraction > 0.0 && preprocess.crop_fraction <= 1.0) {
        return Err(invalid(
            file,
            "model.crop_fraction",
            format!("is {}; use a fraction of the short side in (0, 1]", preprocess.crop_fraction),
        ));
    }
    if preprocess.std.iter().any(|s| !(s.is_finite() && *s > 0.0)) || preprocess.mean.iter().any(|v| !v.is_finite()) {
        return Err(invalid(file, "model.std", "every std must be a positive number and every mean finite"));
    }
    let input_size = m.input_size.or(manifest.as_ref().map(|m| m.input_size()));
    if let Some(s) = input_size {
        if !(8..=4096).contains(&s) {
            return Err(invalid(
                file,
                "model.input_size",
                format!("is {s}; use the model's input side, between 8 and 4096"),
            ));
        }
    }
    if m.top_k == 0 {
        return Err(invalid(file, "model.top_k", "is 0; give how many ranked labels to report (at least 1)"));
    }
    if m.threads > 256 {
        return Err(invalid(
            file,
            "model.threads",
            format!("is {}; use 0 for one per core, or the thread count", m.threads),
        ));
    }
    Ok(ModelConfig {
        path,
        manifest_path,
        manifest,
        labels,
        input_size,
        preprocess,
        top_k: m.top_k,
        threads: m.threads,
        verify_sha256: m.verify_sha256,
    })
}

/// The host name, from the kernel (gethostname(2)): never from /proc, which
/// the unit's `ProcSubset=pid` hides, so every packaged board would share one
/// id (and knock the others off the broker with the same client id). Names
/// that say nothing are refused rather than shared by every such board.
fn default_device_id() -> Result<String, String> {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; the kernel writes at most
    // that many bytes and we stop at the first NUL (or the end).
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error().to_string());
    }
    let host = String::from_utf8_lossy(&buf[..buf.iter().position(|&b| b == 0).unwrap_or(buf.len())]).into_owned();
    // "(none)" is the kernel's name before anyone set one.
    match host.trim() {
        "" | "(none)" | "localhost" => Err(format!("the host name is {host:?}")),
        _ => Ok(device_id_from_host(&host)),
    }
}

/// A host name as an MQTT topic segment: `cam.lan` -> `cam_lan`.
fn device_id_from_host(host: &str) -> String {
    host.trim().chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    fn fixture() -> (tempfile::TempDir, PathBuf) {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), "m.onnx", "not really onnx");
        write(d.path(), "labels.txt", "a\nb\n");
        std::fs::create_dir(d.path().join("frames")).unwrap();
        let cfg = d.path().join("lookout.toml");
        (d, cfg)
    }

    const BASE: &str =
        "[source]\nkind = \"files\"\npath = \"frames\"\n\n[model]\npath = \"m.onnx\"\nlabels = \"labels.txt\"\n";

    #[test]
    fn relative_paths_resolve_against_the_config_folder() {
        let (d, cfg) = fixture();
        let c = Config::parse(BASE, &cfg).unwrap();
        assert_eq!(c.model.path, d.path().join("m.onnx"));
        assert_eq!(c.model.labels, d.path().join("labels.txt"));
        assert_eq!(c.schedule.interval, Duration::from_secs(1));
        assert_eq!(c.mqtt.client_id, format!("lookout-{}", c.device.id));
    }

    #[test]
    fn the_default_id_is_the_kernel_host_name() {
        let (_d, cfg) = fixture();
        let mut uts: libc::utsname = unsafe { std::mem::zeroed() };
        assert_eq!(unsafe { libc::uname(&mut uts) }, 0);
        let node = unsafe { std::ffi::CStr::from_ptr(uts.nodename.as_ptr()) }.to_string_lossy().into_owned();
        let c = Config::parse(BASE, &cfg).unwrap();
        assert_eq!(c.device.id, device_id_from_host(&node));
        assert_eq!(device_id_from_host("cam.lan\n"), "cam_lan");
    }

    #[test]
    fn unknown_key_is_named_with_its_line() {
        let (_d, cfg) = fixture();
        let text = format!("{BASE}\n[schedule]\nintervall = 2.0\n");
        let e = Config::parse(&text, &cfg).unwrap_err().to_string();
        assert!(e.contains("lookout.toml:10:"), "{e}");
        assert!(e.contains("unknown field `intervall`"), "{e}");
        assert!(!e.contains('\n'), "one line: {e}");
    }

    #[test]
    fn region_of_interest_is_read_and_checked() {
        let (_d, cfg) = fixture();
        let with = |roi: &str| BASE.replace("labels.txt\"\n", &format!("labels.txt\"\nroi = {roi}\n"));
        let c = Config::parse(&with("[0.25, 0, 0.5, 1]"), &cfg).unwrap();
        assert_eq!(c.model.preprocess.roi, Some([0.25, 0.0, 0.5, 1.0]));
        assert_eq!(Config::parse(BASE, &cfg).unwrap().model.preprocess.roi, None);
        for (roi, expect) in [
            ("[0.5, 0, 0.6, 1]", "outside the frame"),
            ("[0, 0, 0, 1]", "zero width"),
            ("[0, 0, 2, 1]", "outside 0..1"),
        ] {
            let e = Config::parse(&with(roi), &cfg).unwrap_err().to_string();
            assert!(e.contains("`model.roi`") && e.contains(expect), "{roi}: {e}");
        }
    }

    #[test]
    fn unknown_key_in_the_tagged_source_table_points_at_the_key() {
        let (_d, cfg) = fixture();
        let text = BASE.replace("path = \"frames\"\n", "path = \"frames\"\nfsp = 3\n");
        let e = Config::parse(&text, &cfg).unwrap_err().to_string();
        assert!(e.contains("lookout.toml:4:") && e.contains("`fsp`"), "{e}");
    }

    #[test]
    fn wrong_type_and_out_of_range_values_are_rejected() {
        let (_d, cfg) = fixture();
        let cases = [
            ("[schedule]\ninterval = \"fast\"\n", "lookout.toml:10:"),
            ("[schedule]\ninterval = 0\n", "schedule.interval"),
            ("[mqtt]\nqos = 3\n", "mqtt.qos"),
            ("[mqtt]\ntopic_prefix = \"a/#\"\n", "mqtt.topic_prefix"),
            ("[device]\nid = \"a b\"\n", "device.id"),
        ];
        for (extra, expect) in cases {
            let e = Config::parse(&format!("{BASE}\n{extra}"), &cfg).unwrap_err().to_string();
            assert!(e.contains(expect), "{extra:?} gave {e}");
        }
        let e = Config::parse(&BASE.replace("top_k", "x").replace("labels.txt\"\n", "labels.txt\"\ntop_k = 0\n"), &cfg)
            .unwrap_err();
        assert!(e.to_string().contains("model.top_k"), "{e}");
    }

    #[test]
    fn mqtt_security_and_outbox_keys_are_checked() {
        let (d, cfg) = fixture();
        let cases = [
            ("[mqtt]\nusername = \"u\"\npassword_file = \"pw\"\npassword_env = \"PW\"\n", "exclude each other"),
            ("[mqtt]\npassword_env = \"PW\"\n", "mqtt.username"),
            ("[mqtt]\ntls = true\n", "mqtt.ca_file"),
            ("[mqtt]\nca_file = \"ca.pem\"\n", "mqtt.tls"),
            ("[mqtt]\ntls = true\nca_file = \"ca.pem\"\nclient_cert = \"c.pem\"\n", "client_key"),
            ("[mqtt]\ndiscovery_prefix = \"ha/\"\n", "mqtt.discovery_prefix"),
            ("[mqtt]\noutbox_max_rows = 0\n", "mqtt.outbox_max_rows"),
            ("[mqtt]\npassword = \"in-the-config\"\n", "unknown field `password`"),
        ];
        for (extra, expect) in cases {
            let e = Config::parse(&format!("{BASE}\n{extra}"), &cfg).unwrap_err().to_string();
            assert!(e.contains(expect), "{extra:?} gave {e}");
        }
        let text = format!(
            "{BASE}\n[device]\nstate_dir = \"state\"\n\n[mqtt]\nusername = \"cam\"\npassword_file = \"pw\"\n\
             tls = true\nca_file = \"ca.pem\"\ndiscovery = false\n"
        );
        let c = Config::parse(&text, &cfg).unwrap();
        assert_eq!(c.device.state_dir, d.path().join("state"));
        assert_eq!(c.mqtt.password, Some(PasswordSource::File(d.path().join("pw"))));
        assert_eq!(c.mqtt.tls.unwrap().ca_file, d.path().join("ca.pem"));
        assert_eq!(c.mqtt.discovery_prefix, None);
        assert_eq!(Config::parse(BASE, &cfg).unwrap().mqtt.discovery_prefix.as_deref(), Some("homeassistant"));
    }

    #[test]
    fn missing_model_names_the_path() {
        let (_d, cfg) = fixture();
        let e = Config::parse(&BASE.replace("m.onnx", "gone.onnx"), &cfg).unwrap_err().to_string();
        assert!(e.contains("model.path") && e.contains("gone.onnx") && e.contains("does not exist"), "{e}");
    }

    #[test]
    fn missing_config_file_says_so() {
        let e = Config::load(Path::new("/nonexistent/lookout.toml")).unwrap_err().to_string();
        assert!(e.contains("/nonexistent/lookout.toml") && e.contains("no such file"), "{e}");
    }

    #[test]
    fn live_sources_parse_with_defaults_and_reject_bad_values() {
        let (_d, cfg) = fixture();
        let model = "\n[model]\npath = \"m.onnx\"\nlabels = \"labels.txt\"\n";
        let parse = |source: &str| Config::parse(&format!("[source]\n{source}{model}"), &cfg);
        let c = parse("kind = \"camera\"\n").unwrap();
        match &c.source {
            SourceConfig::Camera { device, width, height, fps, format, frame_timeout, .. } => {
                assert_eq!((device.as_str(), *width, *height, *fps, *format), ("0", 640, 480, 15, FormatPref::Auto));
                assert_eq!(*frame_timeout, Duration::from_secs(5));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(c.source.color_range(), ColorRange::Limited);
        let full = parse("kind = \"camera\"\ncolor_range = \"full\"\n").unwrap();
        assert_eq!(full.source.color_range(), ColorRange::Full);
        assert!(full.to_toml().contains("color_range = \"full\""), "{}", full.to_toml());
        let e = parse("kind = \"camera\"\ncolor_range = \"pc\"\n").unwrap_err().to_string();
        assert!(e.contains(":3: `color_range`: unknown variant `pc`") && e.contains("limited"), "{e}");
        let e = parse("kind = \"camera\"\nwidth = \"wide\"\n").unwrap_err().to_string();
        assert!(e.contains(":3: `width`: invalid type: string \"wide\""), "{e}");
        let e = parse("kind = \"camera\"\nformat = 7\n").unwrap_err().to_string();
        assert!(e.contains(":3: `format`: invalid type: integer `7`"), "{e}");
        let c = parse("kind = \"snapshot\"\nurl = \"http://cam/snap.jpg\"\nusername = \"u\"\npassword = \"hunter2\"\n")
            .unwrap();
        assert!(matches!(&c.source, SourceConfig::Snapshot { interval, .. } if *interval == Duration::from_secs(1)));
        assert!(!c.to_toml().contains("hunter2"), "check-config must not print the password");
        let c = parse("kind = \"command\"\ncommand = [\"rpicam-vid\", \"-o\", \"-\"]\n").unwrap();
        assert!(matches!(&c.source, SourceConfig::Command { command, .. } if command.len() == 3));
        assert_eq!(c.health, HealthParams::default());

        let cases = [
            ("kind = \"camera\"\nformat = \"h264\"\n", "unknown variant `h264`"),
            ("kind = \"camera\"\nfps = 0\n", "source.fps"),
            ("kind = \"camera\"\nreconnect_min = 10.0\nreconnect_max = 1.0\n", "source.reconnect_max"),
            ("kind = \"camera\"\ndevise = \"0\"\n", "unknown field `devise`"),
            ("kind = \"command\"\ncommand = []\n", "source.command"),
            ("kind = \"snapshot\"\nurl = \"cam/snap.jpg\"\n", "source.url"),
            ("kind = \"snapshot\"\nurl = \"http://c/s\"\npassword = \"p\"\n", "source.password"),
            ("kind = \"webcam\"\n", "unknown variant `webcam`"),
        ];
        for (source, expect) in cases {
            let e = parse(source).unwrap_err().to_string();
            assert!(e.contains(expect), "{source:?} gave {e}");
        }
        let e = Config::parse(&format!("{BASE}\n[health]\ndark_below = 300\n"), &cfg).unwrap_err().to_string();
        assert!(e.contains("health.dark_below"), "{e}");
    }

    #[test]
    fn the_documented_example_parses() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        for name in ["config/lookout.toml", "config/demo.toml"] {
            let c = Config::load(&root.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(c.model.path.is_absolute() || c.model.path.starts_with(root), "{name}");
        }
    }
}
