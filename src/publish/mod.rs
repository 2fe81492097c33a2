//! The publisher seam: results leave the daemon through a [`Publisher`],
//! which must never block the inference loop on the network.

mod mqtt;

use std::time::Duration;

pub use mqtt::MqttPublisher;

use crate::postprocess::Classification;

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("result {seq} not queued for MQTT: {reason}")]
    NotQueued { seq: u64, reason: String },
    #[error("cannot start the MQTT client: {0}")]
    Start(String),
}

pub trait Publisher {
    /// Hands a result over for delivery and returns at once.
    fn publish(&mut self, result: &Classification) -> Result<(), PublishError>;
    /// Delivers what is pending within `timeout`, then disconnects.
    fn close(&mut self, timeout: Duration);
}

/// For `mqtt.enabled = false`: results are only logged.
pub struct NoPublisher;

impl Publisher for NoPublisher {
    fn publish(&mut self, _: &Classification) -> Result<(), PublishError> {
        Ok(())
    }
    fn close(&mut self, _: Duration) {}
}
