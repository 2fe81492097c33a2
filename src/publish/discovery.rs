//! Home Assistant MQTT discovery, device-based: one retained config per
//! device at `<prefix>/device/<object id>/config` describes it and all its
//! entities, so Home Assistant shows lookout without any YAML.
//!
//! One camera: one device, the board, with everything on it. Several
//! cameras: the board is a hub device with the diagnostics, and each camera
//! is a device of its own (`via_device` the board) with its views' entities,
//! so each can be put in the room it watches (Home Assistant assigns areas
//! per device).
//!
//! Home Assistant 2025.4 ignores a device-level `qos`, so every component
//! carries its own. Only entities fed by a view's `state` topic expire:
//! health, control and diagnostics are retained and tied to availability.

use serde_json::{json, Map, Value};

use super::options::{PublisherOptions, SourceInfo, TriggerInfo, ViewInfo};
use super::topics::Topics;
use crate::triggers::PublishPolicy;

/// An enum sensor lists its options in the discovery payload; beyond this
/// many states (ImageNet's ungrouped classes) the trigger state is a plain
/// text sensor.
const MAX_ENUM_OPTIONS: usize = 64;

/// Seconds after which Home Assistant shows a state entity as unavailable:
/// twice the longest expected gap between state messages, at least a
/// minute. `commit_s` is the outbox's commit delay.
pub fn expire_after(view: &ViewInfo, stretch: f64, commit_s: f64) -> u64 {
    let period = view.interval * stretch;
    let gap = match &view.triggers {
        Some(t) if t.publish == PublishPolicy::Change => t.heartbeat + period,
        _ => period,
    } + commit_s;
    (2.0 * gap).ceil().max(60.0) as u64
}

/// `(config topic, payload)` for every device, the board first.
pub fn payloads(opts: &PublisherOptions, topics: &Topics) -> Vec<(String, Value)> {
    let d = Discovery { opts, topics, qos: opts.mqtt.qos, board: format!("lookout_{}", opts.device_id) };
    let mut board = d.board_components();
    let mut out = vec![];
    let one_device = opts.sources.len() == 1;
    for s in &opts.sources {
        let cmps = d.source_components(s, !one_device);
        if one_device {
            board.extend(cmps);
        } else {
            let id = format!("{}_{}", d.board, s.name);
            let dev = json!({
                "identifiers": [id],
                "name": format!("{} {}", opts.device_name, s.name),
                "manufacturer": "lookout",
                "model": opts.model_name,
                "via_device": d.board,
            });
            out.push((format!("{}_{}", opts.device_id, s.name), d.device(dev, cmps)));
        }
    }
    let dev = json!({
        "identifiers": [d.board],
        "name": opts.device_name,
        "manufacturer": "lookout",
        "model": opts.model_name,
        "sw_version": env!("CARGO_PKG_VERSION"),
    });
    out.insert(0, (opts.device_id.clone(), d.device(dev, board)));
    out.into_iter().filter_map(|(object, payload)| Some((topics.discovery_config(&object)?, payload))).collect()
}

struct Discovery<'a> {
    opts: &'a PublisherOptions,
    topics: &'a Topics,
    qos: u8,
    /// The board's identifier, `lookout_<device id>`.
    board: String,
}

impl Discovery<'_> {
    fn device(&self, dev: Value, cmps: Map<String, Value>) -> Value {
        json!({
            "dev": dev,
            "o": { "name": "lookout", "sw": env!("CARGO_PKG_VERSION") },
            "cmps": cmps,
        })
    }

    /// A component with what every one carries.
    fn component(&self, platform: &str, unique: &str, name: &str) -> Value {
        json!({
            "p": platform,
            "unique_id": unique,
            "name": name,
            "availability": [{ "topic": self.topics.availability }],
            "qos": self.qos,
        })
    }

    fn board_components(&self) -> Map<String, Value> {
        let diag = &self.topics.diagnostics;
        let mut cmps = Map::new();
        let mut sensor = |key: &str, name: &str, template: &str, unit: Option<&str>, class: Option<&str>| {
            let mut e = self.component("sensor", &format!("{}_{key}", self.board), name);
            e["state_topic"] = json!(diag);
            e["value_template"] = json!(template);
            e["entity_category"] = json!("diagnostic");
            if let Some(u) = unit {
                e["unit_of_measurement"] = json!(u);
                e["state_class"] = json!("measurement");
            }
            if let Some(c) = class {
                e["device_class"] = json!(c);
            }
            cmps.insert(key.into(), e);
        };
        // A template that renders None (a null in the payload) gives
        // "unknown"; a string such as 'unknown' would fail a numeric sensor.
        sensor("latency", "Inference latency", "{{ value_json.latency_ms.inference }}", Some("ms"), Some("duration"));
        sensor("outbox", "Outbox depth", "{{ value_json.outbox.depth }}", Some("results"), None);
        sensor("temperature", "CPU temperature", "{{ value_json.cpu_temperature_c }}", Some("°C"), Some("temperature"));
        sensor("mqtt_error", "MQTT last error", "{{ value_json.mqtt.last_error or 'none' }}", None, None);
        let mut throttled = self.component("binary_sensor", &format!("{}_throttled", self.board), "Throttled");
        throttled["state_topic"] = json!(diag);
        throttled["value_template"] =
            json!("{{ none if value_json.throttled_now is none else ('ON' if value_json.throttled_now else 'OFF') }}");
        throttled["device_class"] = json!("problem");
        throttled["entity_category"] = json!("diagnostic");
        cmps.insert("throttled".into(), throttled);
        cmps
    }

    /// A source's entities: its health, then each view's. `named`: the
    /// source has a device of its own (else its entities join the board's,
    /// and their names say which camera when there are several views).
    fn source_components(&self, s: &SourceInfo, named: bool) -> Map<String, Value> {
        let mut cmps = Map::new();
        let Some(first) = s.views.first() else { return cmps };
        let health = self.topics.view(&first.name, "health");
        let source_id = format!("{}_{}", self.board, s.name);
        let mut h = self.component("sensor", &format!("{source_id}_health"), "Camera health");
        h["state_topic"] = json!(health);
        h["value_template"] = json!("{{ value }}");
        h["device_class"] = json!("enum");
        h["options"] = json!(["ok", "stale", "frozen", "dark"]);
        h["entity_category"] = json!("diagnostic");
        cmps.insert(format!("{}_health", s.name), h);
        let mut p = self.component("binary_sensor", &format!("{source_id}_camera"), "Camera problem");
        p["state_topic"] = json!(health);
        p["value_template"] = json!("{{ 'OFF' if value == 'ok' else 'ON' }}");
        p["device_class"] = json!("problem");
        p["entity_category"] = json!("diagnostic");
        cmps.insert(format!("{}_camera", s.name), p);
        let prefix_names = s.views.len() > 1 || !named && self.opts.sources.len() > 1;
        for v in &s.views {
            self.view_components(v, prefix_names, &mut cmps);
        }
        cmps
    }

    fn view_components(&self, v: &ViewInfo, prefix_names: bool, cmps: &mut Map<String, Value>) {
        let state = self.topics.view(&v.name, "state");
        let control = self.topics.view(&v.name, "control");
        let expire = expire_after(v, self.opts.thermal_stretch, self.opts.mqtt.outbox_commit_interval.as_secs_f64());
        let name = |n: &str| if prefix_names { format!("{} {}", v.name, n.to_lowercase()) } else { n.to_owned() };
        let unique = |key: &str| format!("{}_{}_{key}", self.board, v.name);
        let key = |k: &str| format!("{}_{k}", v.name);
        let from_state = |platform: &str, k: &str, n: &str, template: &str| {
            let mut e = self.component(platform, &unique(k), &name(n));
            e["state_topic"] = json!(state);
            e["value_template"] = json!(template);
            e["expire_after"] = json!(expire);
            e
        };

        let mut label = from_state("sensor", "label", "Label", "{{ value_json.label }}");
        label["icon"] = json!("mdi:eye");
        // Labels only: scores would make every result a new database row.
        label["json_attributes_topic"] = json!(state);
        label["json_attributes_template"] =
            json!("{{ {'top_k': value_json.top_k | map(attribute='label') | list} | tojson }}");
        cmps.insert(key("label"), label);
        let mut confidence =
            from_state("sensor", "confidence", "Confidence", "{{ (value_json.score * 100) | round(1) }}");
        confidence["unit_of_measurement"] = json!("%");
        confidence["state_class"] = json!("measurement");
        cmps.insert(key("confidence"), confidence);

        if let Some(t) = &v.triggers {
            cmps.insert(key("state"), self.trigger_state(t, from_state("sensor", "state", "State", "")));
            for g in &t.groups {
                let quoted = Value::from(g.as_str()).to_string();
                let template = format!(
                    "{{{{ 'ON' if value_json.trigger is defined and value_json.trigger.state == {quoted} else 'OFF' }}}}"
                );
                let k = format!("group_{}", slug(g));
                let mut e = from_state("binary_sensor", &k, &format!("{g} present"), &template);
                e["device_class"] = json!("occupancy");
                cmps.insert(key(&k), e);
            }
        }

        if v.snapshots {
            let mut image = self.component("image", &unique("snapshot"), &name("Snapshot"));
            image["image_topic"] = json!(self.topics.view(&v.name, "snapshot"));
            image["content_type"] = json!("image/jpeg");
            cmps.insert(key("snapshot"), image);
        }
        if self.opts.inbox.is_none() {
            return;
        }
        let command = |action: &str| json!({ "cmd": action, "view": v.name }).to_string();
        let mut button = self.component("button", &unique("classify"), &name("Classify now"));
        button["command_topic"] = json!(self.topics.command);
        button["payload_press"] = json!(command("classify"));
        button["icon"] = json!("mdi:camera-iris");
        cmps.insert(key("classify"), button);
        let mut switch = self.component("switch", &unique("running"), &name("Classification"));
        switch["state_topic"] = json!(control);
        switch["value_template"] = json!("{{ 'OFF' if value_json.paused else 'ON' }}");
        switch["command_topic"] = json!(self.topics.command);
        switch["payload_on"] = json!(command("resume"));
        switch["payload_off"] = json!(command("pause"));
        switch["state_on"] = json!("ON");
        switch["state_off"] = json!("OFF");
        switch["entity_category"] = json!("config");
        cmps.insert(key("running"), switch);
        let number = |k: &str, n: &str, field: &str, (min, max, step): (f64, f64, f64)| {
            let mut e = self.component("number", &unique(k), &name(n));
            e["state_topic"] = json!(control);
            e["value_template"] = json!(format!("{{{{ value_json.{field} }}}}"));
            e["command_topic"] = json!(self.topics.command);
            e["command_template"] =
                json!(format!("{{\"cmd\":\"set\",\"view\":{},\"{field}\":{{{{ value }}}}}}", json!(v.name)));
            e["min"] = json!(min);
            e["max"] = json!(max);
            e["step"] = json!(step);
            e["mode"] = json!("box");
            e["entity_category"] = json!("config");
            e
        };
        let mut interval = number("interval", "Interval", "interval", (0.1, 86400.0, 0.1));
        interval["unit_of_measurement"] = json!("s");
        interval["device_class"] = json!("duration");
        cmps.insert(key("interval"), interval);
        if v.triggers.is_some() {
            cmps.insert(key("threshold"), number("threshold", "Threshold", "threshold", (0.0, 1.0, 0.01)));
        }
    }

    fn trigger_state(&self, t: &TriggerInfo, mut e: Value) -> Value {
        e["value_template"] = json!("{{ value_json.trigger.state if value_json.trigger is defined else none }}");
        if t.states.len() <= MAX_ENUM_OPTIONS {
            e["device_class"] = json!("enum");
            e["options"] = json!(t.states);
        }
        e["icon"] = json!("mdi:motion-sensor");
        e
    }
}

/// A name as a key: lower case, letters and digits, `_` for the rest.
fn slug(s: &str) -> String {
    s.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '_' }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::publish::options::MqttConfig;
    use std::time::Duration;

    pub fn options(sources: Vec<SourceInfo>, commands: bool) -> PublisherOptions {
        PublisherOptions {
            mqtt: MqttConfig {
                enabled: true,
                host: "h".into(),
                port: 1883,
                client_id: "c".into(),
                topic_prefix: "lookout".into(),
                qos: 1,
                keep_alive: Duration::from_secs(30),
                reconnect_min: Duration::from_secs(1),
                reconnect_max: Duration::from_secs(60),
                connect_timeout: Duration::from_secs(10),
                username: None,
                password: None,
                tls: None,
                discovery_prefix: Some("homeassistant".into()),
                commands,
                diagnostics_interval: Duration::from_secs(60),
                outbox_max_rows: 10,
                outbox_max_bytes: 4096,
                outbox_commit_interval: Duration::from_secs(1),
            },
            device_id: "yard".into(),
            device_name: "lookout yard".into(),
            state_dir: "/tmp".into(),
            model_name: "digits-int8".into(),
            sources,
            thermal_stretch: 2.0,
            inbox: commands.then(crate::command::Inbox::default),
        }
    }

    fn view(name: &str, triggers: bool) -> ViewInfo {
        ViewInfo {
            name: name.into(),
            interval: 2.0,
            snapshots: false,
            triggers: triggers.then(|| TriggerInfo {
                states: vec!["low".into(), "nine".into(), "unknown".into()],
                groups: vec!["low".into()],
                publish: PublishPolicy::Change,
                heartbeat: 60.0,
            }),
        }
    }

    #[test]
    fn expiry_covers_the_heartbeat_and_the_thermal_stretch() {
        let mut v = view("v", true);
        // change: 60 s heartbeat + 2 s x 2 stretch + 1 s commit, twice.
        assert_eq!(expire_after(&v, 2.0, 1.0), 130);
        v.triggers = None;
        assert_eq!(expire_after(&v, 2.0, 1.0), 60, "at least a minute");
        v.interval = 120.0;
        assert_eq!(expire_after(&v, 1.0, 1.0), 242, "an interval longer than a minute");
    }

    #[test]
    fn one_camera_is_one_device_with_every_entity_and_qos_on_each() {
        let opts = options(vec![SourceInfo { name: "main".into(), views: vec![view("main", true)] }], true);
        let topics = Topics::new("lookout", "yard", Some("homeassistant"));
        let p = payloads(&opts, &topics);
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].0, "homeassistant/device/yard/config");
        let cmps = p[0].1["cmps"].as_object().unwrap();
        let mut keys: Vec<&str> = cmps.keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "latency",
                "main_camera",
                "main_classify",
                "main_confidence",
                "main_group_low",
                "main_health",
                "main_interval",
                "main_label",
                "main_running",
                "main_state",
                "main_threshold",
                "mqtt_error",
                "outbox",
                "temperature",
                "throttled"
            ]
        );
        for (k, c) in cmps {
            assert_eq!(c["qos"], 1, "{k}");
            assert_eq!(c["availability"][0]["topic"], "lookout/yard/availability", "{k}");
            let expires = c.get("expire_after").is_some();
            let from_state = c.get("state_topic").and_then(Value::as_str) == Some("lookout/yard/main/state");
            assert_eq!(expires, from_state, "{k}: only state entities expire");
        }
        assert_eq!(cmps["main_label"]["name"], "Label");
        assert_eq!(cmps["main_state"]["options"], json!(["low", "nine", "unknown"]));
        assert_eq!(cmps["main_camera"]["state_topic"], "lookout/yard/main/health");
        assert_eq!(cmps["main_classify"]["payload_press"], r#"{"cmd":"classify","view":"main"}"#);
        assert_eq!(cmps["main_interval"]["command_template"], r#"{"cmd":"set","view":"main","interval":{{ value }}}"#);
        assert_eq!(
            cmps["main_group_low"]["value_template"],
            r#"{{ 'ON' if value_json.trigger is defined and value_json.trigger.state == "low" else 'OFF' }}"#
        );
        assert!(p[0].1.get("qos").is_none(), "a device-level qos is ignored by Home Assistant: set per component");
    }

    #[test]
    fn several_cameras_are_devices_of_their_own_via_the_board() {
        let opts = options(
            vec![
                SourceInfo { name: "garage".into(), views: vec![view("door", false), view("bins", false)] },
                SourceInfo { name: "porch".into(), views: vec![view("porch", false)] },
            ],
            false,
        );
        let topics = Topics::new("lookout", "yard", Some("homeassistant"));
        let p = payloads(&opts, &topics);
        let topics: Vec<&str> = p.iter().map(|(t, _)| t.as_str()).collect();
        assert_eq!(
            topics,
            [
                "homeassistant/device/yard/config",
                "homeassistant/device/yard_garage/config",
                "homeassistant/device/yard_porch/config"
            ]
        );
        assert_eq!(p[0].1["cmps"].as_object().unwrap().len(), 5, "the board keeps the diagnostics only");
        let garage = &p[1].1;
        assert_eq!(garage["dev"]["via_device"], "lookout_yard");
        assert_eq!(garage["dev"]["name"], "lookout yard garage");
        assert_eq!(garage["cmps"]["door_label"]["name"], "door label");
        assert_eq!(garage["cmps"]["garage_camera"]["state_topic"], "lookout/yard/door/health");
        assert!(garage["cmps"].get("door_classify").is_none(), "no command entities with commands off");
        assert_eq!(p[2].1["cmps"]["porch_label"]["name"], "Label");
        let none = payloads(&PublisherOptions { ..opts }, &Topics::new("lookout", "yard", None));
        assert!(none.is_empty(), "discovery off");
    }
}
