//! MQTT over rumqttc on its own thread with a single-threaded tokio
//! runtime.
//!
//! Results go from the daemon into the [`Outbox`] and leave it only when
//! the broker acknowledged them (PUBACK at QoS 1, PUBCOMP at QoS 2). After
//! every (re)connect the session is new (clean session), so whatever is
//! still in the outbox is sent again in `seq` order, marked `replayed`.
//! A view's retained `state` only ever gets live results: a replayed
//! backlog must not look like news to Home Assistant.
//!
//! Commands arrive on the command topic, are checked here and queued for
//! the daemon's loop ([`Inbox`]); the loop's replies go out on the reply
//! topic. Health, control and snapshot messages are retained and kept in
//! memory, so every reconnect (a broker that forgot them) sends them again.
//!
//! rumqttc's `poll()` is driven by a task of its own that never gets
//! cancelled: cancelling it during an outage restarts the connection
//! attempt, and it retries as fast as it is polled (rumqtt #703, #918), so
//! that task sleeps with exponential backoff and jitter after each error.
//! Everything else (results, commits, diagnostics) runs in the driver,
//! which sees the poller's events through a channel.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use log::{debug, info, warn};
use rumqttc::{AsyncClient, ConnectionError, Event, EventLoop, NetworkOptions, Outgoing, Packet, QoS};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::connect::{describe, options};
use super::diagnostics::{write_file, Health};
use super::discovery;
use super::options::PublisherOptions;
use super::outbox::Outbox;
use super::topics::Topics;
use super::{PublishError, Publisher};
use crate::capture::health::Health as CameraHealth;
use crate::command::{Control, Inbox, Reply, Request};
use crate::postprocess::Classification;
use crate::stats::Stats;

/// Outbox rows handed to rumqttc and not yet acknowledged. Below rumqttc's
/// in-flight limit (100), so the request channel never fills up.
const WINDOW: usize = 64;
/// rumqttc's request channel: the window plus state, availability,
/// discovery and diagnostics publishes.
const CHANNEL: usize = 256;

enum Msg {
    Result {
        seq: u64,
        view: String,
        payload: Vec<u8>,
        inference_ms: f64,
        total_ms: f64,
    },
    /// A retained message for a view's topic (`health`, `control`,
    /// `snapshot`).
    Retained {
        view: String,
        what: &'static str,
        payload: Vec<u8>,
    },
    /// A view's interval changed: Home Assistant's expiry follows it.
    Interval {
        view: String,
        interval: f64,
    },
    Reply(Vec<u8>),
    Stats(Stats),
    Close(std::time::Instant),
}

/// The discovery topics published last time, so that devices a config no
/// longer has are removed from Home Assistant (an empty retained config).
const DISCOVERY_FILE: &str = "discovery-topics.json";

pub struct MqttPublisher {
    tx: mpsc::UnboundedSender<Msg>,
    first_seq: u64,
    thread: Option<JoinHandle<()>>,
}

impl MqttPublisher {
    /// Opens the outbox in the state directory and starts connecting.
    pub fn start(opts: PublisherOptions) -> Result<MqttPublisher, PublishError> {
        let m = &opts.mqtt;
        let outbox = Outbox::open(&opts.state_dir, m.outbox_max_rows, m.outbox_max_bytes)?;
        let topics = Topics::new(&m.topic_prefix, &opts.device_id, m.discovery_prefix.as_deref());
        let mqtt_options = options(m, &topics.availability)?;
        let (client, mut eventloop) = AsyncClient::new(mqtt_options, CHANNEL);
        let mut net = NetworkOptions::new();
        net.set_connection_timeout(m.connect_timeout.as_secs().max(1));
        eventloop.set_network_options(net);
        let first_seq = outbox.next_seq();
        if outbox.depth() > 0 {
            info!(
                "MQTT outbox {}: {} results from earlier runs wait for the broker",
                outbox.path().display(),
                outbox.depth()
            );
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| PublishError::Start(e.to_string()))?;
        let (min, max) = (m.reconnect_min, m.reconnect_max);
        let qos = m.qos;
        let broker = format!("{}:{}", m.host, m.port);
        let (commit_interval, diagnostics_interval) = (m.outbox_commit_interval, m.diagnostics_interval);
        let inbox = opts.inbox.clone().filter(|_| m.commands);
        let driver = Driver {
            client,
            outbox,
            rx,
            qos: match qos {
                0 => QoS::AtMostOnce,
                1 => QoS::AtLeastOnce,
                _ => QoS::ExactlyOnce,
            },
            broker,
            commit_interval,
            diagnostics_interval,
            diagnostics_file: opts.state_dir.join("diagnostics.json"),
            discovery_file: opts.state_dir.join(DISCOVERY_FILE),
            topics,
            inbox,
            retained: BTreeMap::new(),
            state_seq: HashMap::new(),
            connected: false,
            link: Arc::new(Link::default()),
            generation: 0,
            sent: VecDeque::new(),
            inflight: HashMap::new(),
            in_window: 0,
            cursor: None,
            replay_upto: None,
            last_commit: Instant::now() - commit_interval,
            commit_failing: false,
            health: Health::new(),
            closing: None,
            opts,
        };
        let thread = std::thread::Builder::new()
            .name("mqtt".into())
            .spawn(move || runtime.block_on(driver.run(eventloop, min, max)))
            .map_err(|e| PublishError::Start(e.to_string()))?;
        Ok(MqttPublisher { tx, first_seq, thread: Some(thread) })
    }
}

impl Publisher for MqttPublisher {
    fn publish(&mut self, result: &Classification) -> Result<(), PublishError> {
        let payload = serde_json::to_vec(result).expect("a Classification always serializes");
        let msg = Msg::Result {
            seq: result.seq,
            view: result.view.clone(),
            payload,
            inference_ms: result.latency_ms.inference,
            total_ms: result.latency_ms.total,
        };
        self.tx.send(msg).map_err(|_| PublishError::NotQueued {
            seq: result.seq,
            reason: "the MQTT thread has stopped (see the log above)".into(),
        })
    }

    fn close(&mut self, timeout: Duration) {
        let _ = self.tx.send(Msg::Close(std::time::Instant::now() + timeout));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    fn first_seq(&self) -> u64 {
        self.first_seq
    }

    fn observe(&mut self, stats: &Stats) {
        let _ = self.tx.send(Msg::Stats(stats.clone()));
    }

    fn health(&mut self, view: &str, health: CameraHealth) {
        let payload = health.as_str().as_bytes().to_vec();
        let _ = self.tx.send(Msg::Retained { view: view.into(), what: "health", payload });
    }

    fn control(&mut self, view: &str, control: &Control) {
        let payload = serde_json::to_vec(control).unwrap_or_default();
        let _ = self.tx.send(Msg::Retained { view: view.into(), what: "control", payload });
        let _ = self.tx.send(Msg::Interval { view: view.into(), interval: control.interval });
    }

    fn reply(&mut self, reply: &Reply) {
        let _ = self.tx.send(Msg::Reply(serde_json::to_vec(reply).unwrap_or_default()));
    }

    fn snapshot(&mut self, view: &str, jpeg: Vec<u8>) {
        let _ = self.tx.send(Msg::Retained { view: view.into(), what: "snapshot", payload: jpeg });
    }
}

impl Drop for MqttPublisher {
    fn drop(&mut self) {
        if self.thread.is_some() {
            self.close(Duration::ZERO);
        }
    }
}

/// The connection as the poller sees it, ahead of the events the driver has
/// processed.
///
/// When `poll()` fails, rumqttc moves every request still in its channel to
/// a pending list that the next clean session discards. A publish queued
/// after that would go out on the *next* connection, and its packet id
/// would be matched to the wrong outbox row. Both tasks share one thread,
/// so the poller updates this before the driver can run again, and the
/// driver queues only while the connection it last saw come up is still up.
#[derive(Default)]
struct Link {
    up: AtomicBool,
    /// Counts connections; the driver compares it with the one it saw.
    generation: AtomicU64,
}

type Polled = (u64, Result<Event, ConnectionError>);

/// Owns `poll()`: it is never cancelled, and after an error it waits
/// (exponential backoff with jitter) before the next attempt.
async fn poller(mut eventloop: EventLoop, link: Arc<Link>, tx: mpsc::Sender<Polled>, min: Duration, max: Duration) {
    let mut backoff = Backoff::new(min, max);
    loop {
        let event = eventloop.poll().await;
        let failed = event.is_err();
        if matches!(event, Ok(Event::Incoming(Packet::ConnAck(_)))) {
            backoff.reset();
            link.generation.fetch_add(1, Ordering::SeqCst);
            link.up.store(true, Ordering::SeqCst);
        }
        if failed {
            link.up.store(false, Ordering::SeqCst);
            // Events of the dead connection must not reach the new one.
            eventloop.state.events.clear();
        }
        let generation = link.generation.load(Ordering::SeqCst);
        if tx.send((generation, event)).await.is_err() {
            return;
        }
        if failed {
            tokio::time::sleep(backoff.next(clock_fraction())).await;
        }
    }
}

/// What the driver handed to rumqttc, in order, until rumqttc reports the
/// packet id it gave each publish.
enum Sent {
    Row(u64),
    Other,
}

struct Driver {
    client: AsyncClient,
    outbox: Outbox,
    rx: mpsc::UnboundedReceiver<Msg>,
    topics: Topics,
    /// Who this device is and what Home Assistant shows.
    opts: PublisherOptions,
    /// Where checked commands go; `None` when commands are off.
    inbox: Option<Inbox>,
    /// Retained messages besides results (topic -> payload): sent when
    /// they change and again after every connect.
    retained: BTreeMap<String, Vec<u8>>,
    /// The newest `seq` each view's state topic got, so it never goes back.
    state_seq: HashMap<String, u64>,
    qos: QoS,
    broker: String,
    commit_interval: Duration,
    diagnostics_interval: Duration,
    diagnostics_file: PathBuf,
    discovery_file: PathBuf,
    connected: bool,
    link: Arc<Link>,
    /// The `Link::generation` of the connection `connected` refers to.
    generation: u64,
    /// Publishes queued in rumqttc whose packet id is not known yet.
    sent: VecDeque<Sent>,
    /// Packet id -> `seq` of results waiting for their acknowledgement.
    inflight: HashMap<u16, u64>,
    in_window: usize,
    /// The newest `seq` sent on this connection.
    cursor: Option<u64>,
    /// Rows up to this `seq` were in the outbox when the connection came
    /// up: they are late and go out with `replayed: true`.
    replay_upto: Option<u64>,
    last_commit: Instant,
    /// The last commit failed; reported when it starts and when it ends.
    commit_failing: bool,
    health: Health,
    /// Set by `close`: finish by this deadline.
    closing: Option<Instant>,
}

impl Driver {
    async fn run(mut self, eventloop: EventLoop, min: Duration, max: Duration) {
        let (ev_tx, mut ev_rx) = mpsc::channel(64);
        tokio::spawn(poller(eventloop, self.link.clone(), ev_tx, min, max));
        let mut diagnostics = tokio::time::interval(self.diagnostics_interval);
        diagnostics.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let commit_at = self.outbox.dirty().then_some(self.last_commit + self.commit_interval);
            let far = Instant::now() + Duration::from_secs(3600);
            tokio::select! {
                msg = self.rx.recv(), if self.closing.is_none() => match msg {
                    Some(Msg::Result { seq, view, payload, inference_ms, total_ms }) => {
                        self.outbox.push(seq, &view, payload);
                        (self.health.inference_ms, self.health.total_ms) = (Some(inference_ms), Some(total_ms));
                        if self.last_commit.elapsed() >= self.commit_interval {
                            self.commit_and_send();
                        }
                    }
                    Some(Msg::Retained { view, what, payload }) => {
                        let topic = self.topics.view(&view, what);
                        if self.retained.get(&topic) != Some(&payload) {
                            self.publish(&topic, true, payload.clone(), Sent::Other);
                            self.retained.insert(topic, payload);
                        }
                    }
                    Some(Msg::Interval { view, interval }) => self.interval_changed(&view, interval),
                    Some(Msg::Reply(payload)) => {
                        if !self.publish(&self.topics.reply.clone(), false, payload, Sent::Other) {
                            debug!("MQTT: a command reply is dropped: not connected");
                        }
                    }
                    Some(Msg::Stats(s)) => self.health.stats = s,
                    Some(Msg::Close(deadline)) => {
                        self.closing = Some(Instant::from_std(deadline));
                        self.commit_and_send();
                    }
                    // The publisher was dropped without close().
                    None => self.closing = Some(Instant::now()),
                },
                _ = tokio::time::sleep_until(commit_at.unwrap_or(far)), if commit_at.is_some() => {
                    self.commit_and_send();
                }
                _ = diagnostics.tick() => self.diagnostics(),
                ev = ev_rx.recv() => match ev {
                    Some((generation, Ok(event))) => {
                        self.generation = generation;
                        self.event(event)
                    }
                    Some((_, Err(e))) => self.failed(&e),
                    None => return,
                },
                _ = tokio::time::sleep_until(self.closing.unwrap_or(far)), if self.closing.is_some() => {
                    if self.connected && self.in_window > 0 {
                        warn!("MQTT: stopping with {} results unacknowledged; they stay in the outbox", self.in_window);
                    }
                    break;
                }
            }
            if self.closing.is_some() && (!self.connected || self.drained()) {
                break;
            }
        }
        self.stop(&mut ev_rx).await;
    }

    /// Everything committed has been acknowledged: `send_rows` refills the
    /// window whenever rows are left, so an empty window means none are.
    fn drained(&self) -> bool {
        self.in_window == 0
    }

    async fn stop(mut self, ev_rx: &mut mpsc::Receiver<Polled>) {
        if self.connected {
            // A clean DISCONNECT suppresses the last will: say it ourselves.
            self.publish(&self.topics.availability.clone(), true, b"offline".to_vec(), Sent::Other);
            let _ = self.client.try_disconnect();
            let wait = tokio::time::sleep(Duration::from_secs(2));
            tokio::pin!(wait);
            loop {
                tokio::select! {
                    _ = &mut wait => break,
                    // Acks that arrive now still get their rows deleted.
                    ev = ev_rx.recv() => match ev {
                        Some((_, Ok(Event::Outgoing(Outgoing::Disconnect)))) | None | Some((_, Err(_))) => break,
                        Some((_, Ok(e))) => self.event(e),
                    }
                }
            }
        }
        self.commit();
        if self.outbox.pending() > 0 {
            warn!("MQTT: {} results could not be written to the outbox and are lost", self.outbox.pending());
        }
        self.diagnostics();
        let depth = self.outbox.depth();
        if depth > 0 {
            info!("MQTT: {depth} results stay in the outbox for the next run");
        }
    }

    fn commit_and_send(&mut self) {
        self.commit();
        self.last_commit = Instant::now();
        self.send_rows();
    }

    /// Commits the outbox. A failure (a full disk, most likely) is reported
    /// once, when it starts, and again when it ends: the commit is retried
    /// at every interval, and results wait in memory meanwhile.
    fn commit(&mut self) {
        let result = self.outbox.commit();
        let dropped = self.outbox.take_dropped_in_memory();
        if dropped > 0 {
            warn!("MQTT outbox: dropped the {dropped} oldest results waiting in memory (mqtt.outbox_max_rows/_bytes)");
        }
        match result {
            Err(e) if !self.commit_failing => {
                warn!(
                    "{e}: results cannot be written to disk (free space on its filesystem, or make device.state_dir \
                     writable); they wait in memory, within mqtt.outbox_max_rows, and are retried every {:.1} s",
                    self.commit_interval.as_secs_f64()
                );
                self.commit_failing = true;
            }
            Err(e) => debug!("{e}; {} results wait in memory", self.outbox.pending()),
            Ok(()) if self.commit_failing => {
                info!("MQTT outbox {}: written again", self.outbox.path().display());
                self.commit_failing = false;
            }
            Ok(()) => {}
        }
    }

    /// Hands committed rows to rumqttc while the window has room.
    fn send_rows(&mut self) {
        if !self.connected {
            return;
        }
        while self.in_window < WINDOW {
            let rows = match self.outbox.after(self.cursor, WINDOW - self.in_window) {
                Ok(r) => r,
                Err(e) => {
                    warn!("{e}");
                    return;
                }
            };
            if rows.is_empty() {
                return;
            }
            for (seq, payload) in rows {
                let late = self.replay_upto.is_some_and(|u| seq <= u);
                let (view, _) = head(&payload);
                let result = self.topics.view(&view, "result");
                if late {
                    let replayed = mark_replayed(&payload);
                    if !self.publish(&result, false, replayed, Sent::Row(seq)) {
                        return;
                    }
                } else {
                    if !self.publish(&result, false, payload.clone(), Sent::Row(seq)) {
                        return;
                    }
                    // Never older than what the state topic already holds
                    // (announce() may have sent a newer one first).
                    if self.state_seq.get(&view).is_none_or(|&s| seq > s) {
                        self.state_seq.insert(view.clone(), seq);
                        self.publish(&self.topics.view(&view, "state"), true, payload, Sent::Other);
                    }
                }
                self.cursor = Some(seq);
                self.in_window += 1;
            }
        }
    }

    /// Whether the connection the driver knows about is still the live one.
    fn link_up(&self) -> bool {
        self.connected
            && self.link.up.load(Ordering::SeqCst)
            && self.link.generation.load(Ordering::SeqCst) == self.generation
    }

    fn publish(&mut self, topic: &str, retain: bool, payload: Vec<u8>, what: Sent) -> bool {
        if !self.link_up() {
            return false;
        }
        match self.client.try_publish(topic, self.qos, retain, payload) {
            Ok(()) => {
                self.sent.push_back(what);
                true
            }
            Err(e) => {
                debug!("MQTT: {topic} not queued: {e}");
                false
            }
        }
    }

    fn event(&mut self, event: Event) {
        match event {
            Event::Incoming(Packet::ConnAck(_)) => self.connected_now(),
            Event::Outgoing(Outgoing::Publish(pkid)) => match self.sent.pop_front() {
                Some(Sent::Row(seq)) if self.qos == QoS::AtMostOnce => self.acked(seq),
                Some(Sent::Row(seq)) => {
                    self.inflight.insert(pkid, seq);
                }
                _ => {}
            },
            Event::Incoming(Packet::PubAck(a)) if self.qos == QoS::AtLeastOnce => {
                if let Some(seq) = self.inflight.remove(&a.pkid) {
                    self.acked(seq);
                }
            }
            Event::Incoming(Packet::PubComp(a)) if self.qos == QoS::ExactlyOnce => {
                if let Some(seq) = self.inflight.remove(&a.pkid) {
                    self.acked(seq);
                }
            }
            Event::Incoming(Packet::Publish(p)) => {
                if Some(p.topic.as_str()) == self.topics.ha_status() && &p.payload[..] == b"online" {
                    info!("MQTT: Home Assistant restarted; sending discovery and state again");
                    self.announce();
                } else if p.topic == self.topics.command {
                    self.command(&p.payload, p.retain);
                }
            }
            _ => {}
        }
    }

    fn acked(&mut self, seq: u64) {
        self.outbox.ack(seq);
        self.in_window = self.in_window.saturating_sub(1);
        // Refill in batches rather than one query per acknowledgement.
        if self.in_window <= WINDOW / 2 {
            self.send_rows();
        }
    }

    fn connected_now(&mut self) {
        self.health.connects += 1;
        if self.health.failed_attempts > 0 {
            info!("MQTT: connected to {} after {} failed attempts", self.broker, self.health.failed_attempts);
        } else {
            info!("MQTT: connected to {}", self.broker);
        }
        self.connected = true;
        self.health.connected = true;
        self.health.failed_attempts = 0;
        // Deletes of rows acknowledged before the outage land first, so they
        // are not sent again.
        self.commit();
        self.last_commit = Instant::now();
        self.cursor = None;
        self.replay_upto = self.outbox.newest().unwrap_or(None);
        if let Some(upto) = self.replay_upto {
            info!("MQTT: sending {} results from the outbox (up to seq {upto})", self.outbox.depth());
        }
        self.publish(&self.topics.availability.clone(), true, b"online".to_vec(), Sent::Other);
        if self.link_up() {
            if let Some(status) = self.topics.ha_status() {
                let _ = self.client.try_subscribe(status, QoS::AtLeastOnce);
            }
            if self.inbox.is_some() {
                let _ = self.client.try_subscribe(self.topics.command.clone(), QoS::AtLeastOnce);
            }
        }
        self.announce();
        self.remove_old_devices();
        self.diagnostics();
        self.send_rows();
    }

    /// Discovery and the latest state, for a broker or a Home Assistant
    /// that may have forgotten them.
    fn announce(&mut self) {
        for (topic, payload) in discovery::payloads(&self.opts, &self.topics) {
            self.publish(&topic, true, serde_json::to_vec(&payload).unwrap_or_default(), Sent::Other);
        }
        let mut states = vec![];
        for (view, payload) in self.outbox.last_states() {
            if let (_, Some(seq)) = head(payload) {
                let newest = self.state_seq.entry(view.clone()).or_insert(seq);
                *newest = (*newest).max(seq);
            }
            states.push((self.topics.view(view, "state"), payload.clone()));
        }
        let retained: Vec<(String, Vec<u8>)> = self.retained.iter().map(|(t, p)| (t.clone(), p.clone())).collect();
        for (topic, payload) in states.into_iter().chain(retained) {
            self.publish(&topic, true, payload, Sent::Other);
        }
    }

    /// Empties the retained discovery configs published by an earlier run
    /// for devices this config no longer has (a camera removed or renamed),
    /// so Home Assistant drops them instead of showing them unavailable.
    fn remove_old_devices(&mut self) {
        let now: Vec<String> = discovery::payloads(&self.opts, &self.topics).into_iter().map(|(t, _)| t).collect();
        let before: Vec<String> =
            std::fs::read(&self.discovery_file).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default();
        for old in before.iter().filter(|t| !now.contains(t)) {
            info!("MQTT: removing {old} from Home Assistant (no longer configured)");
            self.publish(old, true, vec![], Sent::Other);
        }
        if before != now {
            if let Err(e) = write_file(&self.discovery_file, &serde_json::to_vec(&now).unwrap_or_default()) {
                debug!("{}: {e}", self.discovery_file.display());
            }
        }
    }

    /// A view's interval changed (a command): Home Assistant's expiry for
    /// its state entities follows.
    fn interval_changed(&mut self, view: &str, interval: f64) {
        let mut changed = false;
        for v in self.opts.sources.iter_mut().flat_map(|s| s.views.iter_mut()).filter(|v| v.name == view) {
            changed |= v.interval != interval;
            v.interval = interval;
        }
        if changed && self.connected {
            for (topic, payload) in discovery::payloads(&self.opts, &self.topics) {
                self.publish(&topic, true, serde_json::to_vec(&payload).unwrap_or_default(), Sent::Other);
            }
        }
    }

    /// A message on the command topic: checked here, queued for the loop,
    /// or answered with an error at once.
    fn command(&mut self, payload: &[u8], retained: bool) {
        let Some(inbox) = self.inbox.clone() else { return };
        // An empty message is how a retained one is cleared: not a command.
        if payload.is_empty() {
            return;
        }
        let reply = if retained {
            // A retained command would run again at every connect.
            let e = crate::command::CommandError::Range {
                field: "retain",
                value: "true".into(),
                hint: "commands are not retained messages: publish without -r (and clear it with an empty retained message)",
            };
            Some(Reply::rejected(Request::salvage_id(payload), &e))
        } else {
            match Request::parse(payload) {
                Ok(req) if inbox.push(req.clone()) => None,
                Ok(req) => Some(Reply::error(&req, "too many commands waiting; try again")),
                Err(e) => Some(Reply::rejected(Request::salvage_id(payload), &e)),
            }
        };
        if let Some(r) = reply {
            warn!("MQTT: command refused: {}", r.error.as_deref().unwrap_or(""));
            self.publish(&self.topics.reply.clone(), false, serde_json::to_vec(&r).unwrap_or_default(), Sent::Other);
        }
    }

    fn failed(&mut self, e: &ConnectionError) {
        let message = describe(e, &self.broker);
        if self.connected {
            warn!("MQTT: connection lost: {message}; reconnecting with backoff");
        } else if self.health.last_error.as_deref() != Some(message.as_str()) {
            warn!("MQTT: {message}; retrying with backoff");
        } else {
            debug!("MQTT: {message}; attempt {}", self.health.failed_attempts + 1);
        }
        self.connected = false;
        self.health.connected = false;
        self.health.failed_attempts += 1;
        self.health.last_error = Some(message);
        // rumqttc drops everything of the old session when the clean one
        // starts; the outbox still has every unacknowledged row.
        self.sent.clear();
        self.inflight.clear();
        self.in_window = 0;
    }

    fn diagnostics(&mut self) {
        let payload = self.health.payload(self.outbox.depth(), self.outbox.bytes(), self.outbox.dropped());
        let bytes = serde_json::to_vec(&payload).unwrap_or_default();
        if let Err(e) = write_file(&self.diagnostics_file, &bytes) {
            debug!("{}: {e}", self.diagnostics_file.display());
        }
        if self.connected {
            self.publish(&self.topics.diagnostics.clone(), true, bytes, Sent::Other);
        }
    }
}

/// The view a stored result belongs to (results stored before lookout had
/// views belong to `main`) and its `seq`.
fn head(payload: &[u8]) -> (String, Option<u64>) {
    #[derive(serde::Deserialize)]
    struct Head {
        view: Option<String>,
        seq: Option<u64>,
    }
    let h = serde_json::from_slice::<Head>(payload).ok();
    let seq = h.as_ref().and_then(|h| h.seq);
    (h.and_then(|h| h.view).unwrap_or_else(|| "main".into()), seq)
}

/// Adds `"replayed": true` to a stored result.
pub fn mark_replayed(payload: &[u8]) -> Vec<u8> {
    match serde_json::from_slice::<Value>(payload) {
        Ok(Value::Object(mut map)) => {
            map.insert("replayed".into(), Value::Bool(true));
            serde_json::to_vec(&map).unwrap_or_else(|_| payload.to_vec())
        }
        _ => payload.to_vec(),
    }
}

/// Waits between connection attempts: `min`, doubling up to `max`, each
/// wait cut to a random 50-100 %, so many cameras behind one broker do not
/// reconnect in lockstep after it restarts.
struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    fn new(min: Duration, max: Duration) -> Backoff {
        Backoff { min, max, next: min }
    }

    fn reset(&mut self) {
        self.next = self.min;
    }

    /// The wait before the next attempt; `random` in [0, 1).
    fn next(&mut self, random: f64) -> Duration {
        let wait = self.next.mul_f64(0.5 + random.clamp(0.0, 1.0) / 2.0);
        self.next = (self.next * 2).min(self.max);
        wait
    }
}

/// Enough randomness for jitter without a dependency.
fn clock_fraction() -> f64 {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().subsec_nanos();
    (nanos % 1000) as f64 / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_maximum_with_jitter_and_resets() {
        let ms = Duration::from_millis;
        let mut b = Backoff::new(ms(100), ms(1000));
        let waits: Vec<Duration> = (0..6).map(|_| b.next(0.999_999)).collect();
        let full: Vec<u64> = waits.iter().map(|w| (w.as_secs_f64() * 1000.0).round() as u64).collect();
        assert_eq!(full, vec![100, 200, 400, 800, 1000, 1000]);
        assert_eq!(b.next(0.0), ms(500), "jitter takes at most half off");
        b.reset();
        assert_eq!(b.next(0.0), ms(50));
        assert_eq!(b.next(0.5), ms(150));
    }

    /// Found by fuzz/fuzz_targets/mqtt_payload.rs: without serde_json's
    /// `float_roundtrip`, re-parsing a stored result changed a long number
    /// in its last digit, so the replayed copy differed from the original.
    #[test]
    fn replaying_keeps_every_number_exactly() {
        let n = format!("{}34.64667", "1".repeat(112));
        let original: Value = serde_json::from_str(&format!("{{\"x\":{n}}}")).unwrap();
        let marked: Value = serde_json::from_slice(&mark_replayed(format!("{{\"x\":{n}}}").as_bytes())).unwrap();
        assert_eq!(marked["x"], original["x"]);
        assert_eq!(marked["x"].as_f64().unwrap(), n.parse::<f64>().unwrap());
    }

    #[test]
    fn replayed_results_are_marked_and_keep_their_fields() {
        let v: Value = serde_json::from_slice(&mark_replayed(br#"{"seq":7,"label":"three"}"#)).unwrap();
        assert_eq!(v, serde_json::json!({"seq": 7, "label": "three", "replayed": true}));
    }
}
