//! The whole path through the built binary: files -> tract -> a real
//! Mosquitto -> a subscriber.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::common::*;

/// `lookout classify` on the sample frames: file name -> label.
fn classify_labels(config: &std::path::Path, frames: &[std::path::PathBuf]) -> BTreeMap<String, String> {
    let mut cmd = lookout();
    cmd.arg("classify").arg("--config").arg(config).args(frames);
    let out = run_with_timeout(cmd, Duration::from_secs(120));
    assert!(out.status.success(), "classify failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let name =
                std::path::Path::new(v["image"].as_str().unwrap()).file_name().unwrap().to_string_lossy().into_owned();
            (name, v["label"].as_str().unwrap().to_string())
        })
        .collect()
}

#[test]
fn run_publishes_what_classify_says_and_retains_the_state() {
    let broker = Broker::start();
    let samples = root().join("models/digits/samples");
    let mut frames: Vec<_> = std::fs::read_dir(&samples)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "jpg"))
        .collect();
    frames.sort();
    assert_eq!(frames.len(), 10);

    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &digits_config(&samples, "digits-int8.onnx", broker.port, ""));
    let mut sub = Subscriber::new(broker.port, "lookout/e2e/main/result");

    let mut cmd = lookout();
    cmd.arg("run").arg("--config").arg(&config);
    let out = run_with_timeout(cmd, Duration::from_secs(120));
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "lookout run failed: {log}");

    let results = sub.collect(10, Duration::from_secs(10));
    assert_eq!(results.len(), 10, "log:\n{log}");
    // Every frame in order, each labelled as `classify` labels it, and as
    // the model's exporter said the sample shows.
    let expected: BTreeMap<String, String> =
        serde_json::from_str(&std::fs::read_to_string(samples.join("expected.json")).unwrap()).unwrap();
    let by_classify = classify_labels(&config, &frames);
    assert_eq!(by_classify, expected);
    for (i, ((topic, r), (_, label))) in results.iter().zip(&by_classify).enumerate() {
        assert_eq!(topic, "lookout/e2e/main/result");
        assert_eq!(r["seq"], i as u64);
        assert_eq!(r["frame_seq"], i as u64);
        assert_eq!(r["label"].as_str().unwrap(), label, "result {i}: {r}");
        assert_eq!(r["top_k"].as_array().unwrap().len(), 5);
        assert_eq!(r["model"]["name"], "digits-int8");
        assert!(r["captured_at"].as_str().unwrap().ends_with('Z'));
        assert!(r["latency_ms"]["inference"].as_f64().unwrap() > 0.0);
    }

    // A subscriber that comes late still sees the latest result.
    let mut late = Subscriber::new(broker.port, "lookout/e2e/main/state");
    let state = late.collect(1, Duration::from_secs(5));
    assert_eq!(state.len(), 1);
    assert_eq!(state[0].1["seq"], 9);
    assert_eq!(state[0].1["label"].as_str().unwrap(), by_classify.values().last().unwrap());
}

#[test]
fn run_without_a_broker_keeps_classifying() {
    let samples = root().join("models/digits/samples");
    let dir = tempfile::tempdir().unwrap();
    // Nothing listens on this port.
    let config = write_config(dir.path(), &digits_config(&samples, "digits-int8.onnx", free_port(), ""));
    let mut cmd = lookout();
    cmd.arg("run").arg("--config").arg(&config);
    let out = run_with_timeout(cmd, Duration::from_secs(120));
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert_eq!(log.lines().filter(|l| l.contains("lookout::daemon] result ")).count(), 10, "{log}");
    assert!(log.contains("retrying with backoff"), "{log}");
    assert!(log.contains("10 classified"), "{log}");
}
