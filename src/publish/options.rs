//! What the publisher is started with: the `[mqtt]` settings (the config
//! resolves them), who this device is, and what Home Assistant should show.
//! `main` builds it from the config, so publishing never reads the config
//! whole.

use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

use crate::command::Inbox;
use crate::secret::SecretSource;
use crate::triggers::PublishPolicy;

#[derive(Debug, Clone, Serialize)]
pub struct MqttConfig {
    pub enabled: bool,
    pub host: String,
    pub port: u16,
    pub client_id: String,
    pub topic_prefix: String,
    pub qos: u8,
    #[serde(serialize_with = "secs")]
    pub keep_alive: Duration,
    #[serde(serialize_with = "secs")]
    pub reconnect_min: Duration,
    #[serde(serialize_with = "secs")]
    pub reconnect_max: Duration,
    #[serde(serialize_with = "secs")]
    pub connect_timeout: Duration,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// Where the password comes from; never the password itself, so the
    /// config (and `check-config` output) can be world-readable.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password: Option<SecretSource>,
    /// `Some` when TLS is on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsFiles>,
    /// Home Assistant discovery prefix; `None` when discovery is off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub discovery_prefix: Option<String>,
    /// Whether the command topic is listened to.
    pub commands: bool,
    #[serde(serialize_with = "secs")]
    pub diagnostics_interval: Duration,
    pub outbox_max_rows: u64,
    pub outbox_max_bytes: u64,
    #[serde(serialize_with = "secs")]
    pub outbox_commit_interval: Duration,
}

#[derive(Debug, Clone, Serialize)]
pub struct TlsFiles {
    pub ca_file: PathBuf,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_cert: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_key: Option<PathBuf>,
}

fn secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

/// Everything [`super::MqttPublisher::start`] needs.
pub struct PublisherOptions {
    pub mqtt: MqttConfig,
    /// Part of every topic and Home Assistant id.
    pub device_id: String,
    /// Home Assistant's device name.
    pub device_name: String,
    /// The outbox and diagnostics.json live here.
    pub state_dir: PathBuf,
    pub model_name: String,
    pub sources: Vec<SourceInfo>,
    /// The longest a board that runs hot stretches every interval.
    pub thermal_stretch: f64,
    /// Commands go here (when `mqtt.commands` is on).
    pub inbox: Option<Inbox>,
}

/// A source and its views, as Home Assistant shows them: one device each.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceInfo {
    pub name: String,
    pub views: Vec<ViewInfo>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ViewInfo {
    pub name: String,
    /// Seconds between classifications (commands may change it).
    pub interval: f64,
    pub triggers: Option<TriggerInfo>,
    /// Its snapshot topic is offered as an image entity.
    pub snapshots: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TriggerInfo {
    /// Every state the trigger can be in (groups, ungrouped classes,
    /// `unknown`).
    pub states: Vec<String>,
    /// The label groups, each shown as a "present" binary sensor.
    pub groups: Vec<String>,
    pub publish: PublishPolicy,
    /// Seconds; with `publish = "change"` the longest gap between results.
    pub heartbeat: f64,
}
