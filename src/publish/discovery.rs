//! Home Assistant MQTT discovery, device-based: one retained config at
//! `<prefix>/device/<device id>/config` describes the device and all its
//! entities, so HA shows lookout as one device without any YAML.

use serde_json::{json, Value};

use super::mqtt::Topics;
use crate::config::Device;

/// Seconds after which HA shows an entity as unavailable when it was not
/// updated: a few missed updates, never less than a minute.
fn expire_after(period_s: f64) -> u64 {
    (period_s * 3.0).ceil().max(60.0) as u64
}

/// The discovery payload. `interval_s` is the classification period and
/// `diagnostics_s` the diagnostics period.
pub fn discovery_payload(device: &Device, topics: &Topics, model: &str, interval_s: f64, diagnostics_s: f64) -> Value {
    let id = format!("lookout_{}", device.id);
    let results = expire_after(interval_s);
    let diag = expire_after(diagnostics_s);
    let avail = json!([{ "topic": topics.availability }]);
    let entity = |key: &str, platform: &str, name: &str, topic: &str, template: &str, expire: u64| {
        json!({
            "p": platform,
            "unique_id": format!("{id}_{key}"),
            "name": name,
            "state_topic": topic,
            "value_template": template,
            "availability": avail,
            "expire_after": expire,
        })
    };
    let mut label = entity("label", "sensor", "Label", &topics.state, "{{ value_json.label }}", results);
    label["icon"] = json!("mdi:eye");
    label["json_attributes_topic"] = json!(topics.state);
    label["json_attributes_template"] = json!(
        "{{ {'top_k': value_json.top_k, 'seq': value_json.seq, 'captured_at': value_json.captured_at} | tojson }}"
    );
    let mut confidence = entity(
        "confidence",
        "sensor",
        "Confidence",
        &topics.state,
        "{{ (value_json.score * 100) | round(1) }}",
        results,
    );
    confidence["unit_of_measurement"] = json!("%");
    confidence["state_class"] = json!("measurement");
    let diagnostic = |key: &str, name: &str, template: &str, unit: &str, class: Option<&str>| {
        let mut e = entity(key, "sensor", name, &topics.diagnostics, template, diag);
        e["entity_category"] = json!("diagnostic");
        e["unit_of_measurement"] = json!(unit);
        e["state_class"] = json!("measurement");
        if let Some(c) = class {
            e["device_class"] = json!(c);
        }
        e
    };
    let latency =
        diagnostic("latency", "Inference latency", "{{ value_json.latency_ms.inference }}", "ms", Some("duration"));
    let outbox = diagnostic("outbox", "Outbox depth", "{{ value_json.outbox.depth }}", "results", None);
    let temperature = diagnostic(
        "temperature",
        "CPU temperature",
        "{{ value_json.cpu_temperature_c if value_json.cpu_temperature_c is not none else 'unknown' }}",
        "°C",
        Some("temperature"),
    );
    let mut camera = entity(
        "camera",
        "binary_sensor",
        "Camera problem",
        &topics.state,
        "{{ 'OFF' if value_json.health == 'ok' else 'ON' }}",
        results,
    );
    camera["device_class"] = json!("problem");
    camera["entity_category"] = json!("diagnostic");
    json!({
        "dev": {
            "identifiers": [id],
            "name": device.name,
            "manufacturer": "lookout",
            "model": model,
            "sw_version": env!("CARGO_PKG_VERSION"),
        },
        "o": {
            "name": "lookout",
            "sw": env!("CARGO_PKG_VERSION"),
        },
        "cmps": {
            "label": label,
            "confidence": confidence,
            "latency": latency,
            "outbox": outbox,
            "temperature": temperature,
            "camera": camera,
        },
        "qos": 1,
    })
}
