//! MQTT over rumqttc. The event loop runs on its own thread with a
//! single-threaded tokio runtime; it owns reconnection, because rumqttc
//! retries as fast as it is polled (rumqtt #703, #918): after an error it
//! sleeps with exponential backoff and jitter.
//!
//! Topics: `<prefix>/<device>/result` (every result, not retained) and
//! `<prefix>/<device>/state` (the latest result, retained, for late
//! subscribers). Durable delivery across outages is the outbox's job.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Outgoing, Packet, QoS};

use super::{PublishError, Publisher};
use crate::config::MqttConfig;
use crate::postprocess::Classification;

/// Requests rumqttc buffers while the broker is away; beyond it results are
/// dropped (and logged) rather than blocking inference.
const QUEUE: usize = 1000;

#[derive(Default)]
struct Progress {
    /// Publishes handed to rumqttc.
    queued: AtomicU64,
    /// Publishes the broker acknowledged (or, at QoS 0, that were written).
    done: AtomicU64,
    connected: AtomicBool,
    stop: AtomicBool,
}

pub struct MqttPublisher {
    client: AsyncClient,
    result_topic: String,
    state_topic: String,
    qos: QoS,
    progress: Arc<Progress>,
    thread: Option<JoinHandle<()>>,
}

impl MqttPublisher {
    pub fn start(cfg: &MqttConfig, device_id: &str) -> Result<MqttPublisher, PublishError> {
        let mut opts = MqttOptions::new(&cfg.client_id, &cfg.host, cfg.port);
        opts.set_keep_alive(cfg.keep_alive.max(Duration::from_secs(1)));
        opts.set_clean_session(true);
        let (client, eventloop) = AsyncClient::new(opts, QUEUE);
        let qos = match cfg.qos {
            0 => QoS::AtMostOnce,
            1 => QoS::AtLeastOnce,
            _ => QoS::ExactlyOnce,
        };
        let progress = Arc::new(Progress::default());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| PublishError::Start(e.to_string()))?;
        let p = progress.clone();
        let (min, max) = (cfg.reconnect_min, cfg.reconnect_max);
        let broker = format!("{}:{}", cfg.host, cfg.port);
        let thread = std::thread::Builder::new()
            .name("mqtt".into())
            .spawn(move || runtime.block_on(drive(eventloop, p, qos, broker, min, max)))
            .map_err(|e| PublishError::Start(e.to_string()))?;
        let base = format!("{}/{}", cfg.topic_prefix, device_id);
        Ok(MqttPublisher {
            client,
            result_topic: format!("{base}/result"),
            state_topic: format!("{base}/state"),
            qos,
            progress,
            thread: Some(thread),
        })
    }

    fn queue(&self, topic: &str, retain: bool, payload: Vec<u8>, seq: u64) -> Result<(), PublishError> {
        self.client.try_publish(topic, self.qos, retain, payload).map_err(|e| PublishError::NotQueued {
            seq,
            reason: format!("{e} (the broker has been unreachable for a while)"),
        })?;
        self.progress.queued.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

impl Publisher for MqttPublisher {
    fn publish(&mut self, result: &Classification) -> Result<(), PublishError> {
        let payload = serde_json::to_vec(result).expect("a Classification always serializes");
        self.queue(&self.result_topic, false, payload.clone(), result.seq)?;
        self.queue(&self.state_topic, true, payload, result.seq)
    }

    fn close(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let p = &self.progress;
        while p.connected.load(Ordering::SeqCst)
            && p.done.load(Ordering::SeqCst) < p.queued.load(Ordering::SeqCst)
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(10));
        }
        let pending = p.queued.load(Ordering::SeqCst).saturating_sub(p.done.load(Ordering::SeqCst));
        if pending > 0 {
            warn!("MQTT: stopping with {pending} publishes unacknowledged");
        }
        let _ = self.client.try_disconnect();
        p.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for MqttPublisher {
    fn drop(&mut self) {
        if self.thread.is_some() {
            self.close(Duration::ZERO);
        }
    }
}

async fn drive(mut eventloop: EventLoop, p: Arc<Progress>, qos: QoS, broker: String, min: Duration, max: Duration) {
    let mut backoff = min;
    let mut failures = 0u32;
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    loop {
        if p.stop.load(Ordering::SeqCst) {
            return;
        }
        // Polling is only interrupted (by the stop check) between events;
        // a pending connect attempt runs to its own timeout.
        let event = tokio::select! {
            e = eventloop.poll() => e,
            _ = tick.tick(), if p.stop.load(Ordering::SeqCst) => return,
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                if failures > 0 {
                    info!("MQTT: connected to {broker} after {failures} failed attempts");
                } else {
                    info!("MQTT: connected to {broker}");
                }
                p.connected.store(true, Ordering::SeqCst);
                backoff = min;
                failures = 0;
            }
            Ok(Event::Incoming(Packet::PubAck(_) | Packet::PubComp(_))) => {
                p.done.fetch_add(1, Ordering::SeqCst);
            }
            Ok(Event::Outgoing(Outgoing::Publish(_))) if qos == QoS::AtMostOnce => {
                p.done.fetch_add(1, Ordering::SeqCst);
            }
            Ok(Event::Outgoing(Outgoing::Disconnect)) => {
                p.connected.store(false, Ordering::SeqCst);
                return;
            }
            Ok(_) => {}
            Err(e) => {
                p.connected.store(false, Ordering::SeqCst);
                failures += 1;
                let wait = jitter(backoff);
                if failures == 1 {
                    warn!("MQTT: {broker}: {e}; retrying with backoff");
                } else {
                    debug!("MQTT: {broker}: {e}; attempt {failures}, next in {wait:?}");
                }
                let until = Instant::now() + wait;
                while Instant::now() < until && !p.stop.load(Ordering::SeqCst) {
                    tokio::time::sleep(Duration::from_millis(50).min(until - Instant::now())).await;
                }
                backoff = (backoff * 2).min(max);
            }
        }
    }
}

/// 50-100 % of `d`, so many cameras behind one broker do not reconnect in
/// lockstep after it restarts.
fn jitter(d: Duration) -> Duration {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().subsec_nanos();
    d.mul_f64(0.5 + (nanos % 1000) as f64 / 2000.0)
}
