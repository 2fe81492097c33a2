//! The publisher seam: results leave the daemon through a [`Publisher`],
//! which must never block the inference loop on the network.
//!
//! The MQTT implementation is split by concern: [`outbox`] keeps every
//! result on disk until the broker acknowledged it, `mqtt` drives the
//! connection, `connect` turns the settings into rumqttc options (TLS,
//! password), `topics` names every topic, `discovery` and `diagnostics`
//! build the Home Assistant and health payloads, `options` is what the
//! publisher is started with.

mod connect;
mod diagnostics;
pub mod discovery;
mod mqtt;
mod options;
pub mod outbox;
mod topics;

use std::path::PathBuf;
use std::time::Duration;

pub use mqtt::{mark_replayed, MqttPublisher};
pub use options::{MqttConfig, PublisherOptions, SourceInfo, TlsFiles, TriggerInfo, ViewInfo};
pub use topics::{Topics, RESERVED};

use crate::capture::health::Health;
use crate::command::{Control, Reply};
use crate::postprocess::Classification;
use crate::stats::Stats;

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("result {seq} not queued for MQTT: {reason}")]
    NotQueued { seq: u64, reason: String },
    #[error("cannot start the MQTT client: {0}")]
    Start(String),
    #[error("{path}: cannot use the state directory: {reason} (create it writable for lookout's user, or set device.state_dir)")]
    StateDir { path: PathBuf, reason: String },
    #[error("{path}: the MQTT outbox cannot be opened: {reason} (move the file away to start with an empty outbox)")]
    Outbox { path: PathBuf, reason: String },
    #[error("MQTT password: {0}")]
    Password(String),
    #[error("MQTT TLS: {path}: {reason}")]
    Tls { path: PathBuf, reason: String },
}

impl PublishError {
    /// Errors the user fixes in the config or on disk; main exits with
    /// EX_CONFIG for them so systemd does not restart in a loop.
    pub fn is_config(&self) -> bool {
        !matches!(self, PublishError::NotQueued { .. } | PublishError::Start(_))
    }
}

pub trait Publisher {
    /// Hands a result over for delivery and returns at once.
    fn publish(&mut self, result: &Classification) -> Result<(), PublishError>;
    /// Delivers what is pending within `timeout`, then disconnects.
    fn close(&mut self, timeout: Duration);
    /// The `seq` the first result of this run gets: publishers that persist
    /// results continue where the last run stopped, so `seq` never repeats.
    fn first_seq(&self) -> u64 {
        0
    }
    /// The daemon's counters, for diagnostics.
    fn observe(&mut self, _stats: &Stats) {}
    /// A view's source changed health (and once at start).
    fn health(&mut self, _view: &str, _health: Health) {}
    /// A view's settings changed (and once at start).
    fn control(&mut self, _view: &str, _control: &Control) {}
    /// The answer to a command.
    fn reply(&mut self, _reply: &Reply) {}
    /// The picture a view classified (a JPEG), retained on its snapshot topic.
    fn snapshot(&mut self, _view: &str, _jpeg: Vec<u8>) {}
}

/// For `mqtt.enabled = false`: results are only logged.
pub struct NoPublisher;

impl Publisher for NoPublisher {
    fn publish(&mut self, _: &Classification) -> Result<(), PublishError> {
        Ok(())
    }
    fn close(&mut self, _: Duration) {}
}
