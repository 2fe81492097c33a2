//! The config file as written: one struct per section, every key optional
//! where it has a default, unknown keys rejected. [`super::resolve`] turns
//! these into the stages' own types.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use crate::capture::camera::FormatPref;
use crate::capture::health::HealthParams;
use crate::preprocess::{ColorRange, ResizeFilter};
use crate::thermal::ThermalConfig;
use crate::triggers::TriggersConfig;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    #[serde(default)]
    pub device: DeviceSection,
    /// One source, the view `main`: the shape of every config before views.
    pub source: Option<SourceSection>,
    #[serde(default)]
    pub sources: BTreeMap<String, SourceSection>,
    #[serde(default)]
    pub views: BTreeMap<String, ViewSection>,
    pub model: ModelSection,
    #[serde(default)]
    pub mqtt: MqttSection,
    #[serde(default)]
    pub schedule: ScheduleSection,
    /// The views' triggers unless a view has its own.
    #[serde(default)]
    pub triggers: TriggersConfig,
    #[serde(default)]
    pub thermal: ThermalConfig,
    #[serde(default)]
    pub health: HealthSection,
    #[serde(default)]
    pub snapshots: SnapshotSection,
}

/// `[snapshots]`: the picture the model saw, for every view unless a view
/// says otherwise.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SnapshotSection {
    pub enabled: bool,
    pub max_side: u32,
    pub quality: u8,
    pub min_interval: f64,
    pub keep: usize,
}

impl Default for SnapshotSection {
    fn default() -> Self {
        let d = crate::snapshot::SnapshotConfig::default();
        SnapshotSection {
            enabled: d.enabled,
            max_side: d.max_side,
            quality: d.quality,
            min_interval: d.min_interval.as_secs_f64(),
            keep: d.keep,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceSection {
    pub id: Option<String>,
    pub name: Option<String>,
    pub state_dir: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum SourceSection {
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
        password_file: Option<PathBuf>,
        password_env: Option<String>,
        password_credential: Option<String>,
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

/// `[views.NAME]`: a region of a source with its own schedule and triggers.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ViewSection {
    /// The source's name; may be left out when there is one source.
    pub source: Option<String>,
    pub roi: Option<[f32; 4]>,
    pub crop_fraction: Option<f32>,
    pub interval: Option<f64>,
    /// Replaces `[triggers]` for this view.
    pub triggers: Option<TriggersConfig>,
    /// Overrides `[snapshots] enabled` for this view.
    pub snapshots: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthSection {
    pub stale_after: f64,
    pub frozen_frames: u32,
    pub dark_below: f32,
    pub uniform_below: f32,
    pub skip_unhealthy: bool,
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

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    pub path: PathBuf,
    pub manifest: Option<PathBuf>,
    pub labels: Option<PathBuf>,
    pub input_size: Option<u32>,
    pub resize: Option<ResizeFilter>,
    pub crop_fraction: Option<f32>,
    pub mean: Option<[f32; 3]>,
    pub std: Option<[f32; 3]>,
    /// Region of interest `[x, y, w, h]`, fractions of the frame: the
    /// default for views without their own.
    pub roi: Option<[f32; 4]>,
    #[serde(default = "default_top_k")]
    pub top_k: usize,
    #[serde(default)]
    pub threads: usize,
    #[serde(default = "default_true")]
    pub verify_sha256: bool,
}

impl ModelSection {
    /// A section naming only the model file (`classify --model` without a
    /// readable config).
    pub fn bare(path: PathBuf) -> ModelSection {
        ModelSection {
            path,
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
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MqttSection {
    pub enabled: bool,
    pub host: String,
    pub port: u16,
    pub client_id: Option<String>,
    pub topic_prefix: String,
    pub qos: u8,
    pub keep_alive: f64,
    pub reconnect_min: f64,
    pub reconnect_max: f64,
    pub connect_timeout: f64,
    pub username: Option<String>,
    pub password_file: Option<PathBuf>,
    pub password_env: Option<String>,
    pub password_credential: Option<String>,
    pub tls: bool,
    pub ca_file: Option<PathBuf>,
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    pub discovery: bool,
    pub discovery_prefix: String,
    pub commands: bool,
    pub diagnostics_interval: f64,
    pub outbox_max_rows: u64,
    pub outbox_max_bytes: u64,
    pub outbox_commit_interval: f64,
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
            commands: true,
            diagnostics_interval: 60.0,
            outbox_max_rows: 100_000,
            outbox_max_bytes: 64 << 20,
            outbox_commit_interval: 1.0,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScheduleSection {
    pub interval: f64,
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
