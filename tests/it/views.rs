//! Several sources and views in one daemon, the pictures they publish and
//! the commands that steer them, through the built binary against a real
//! Mosquitto.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use crate::common::*;

const MIN: Duration = Duration::from_secs(60);

/// Two file sources: the sample digits and one picture of a three; the
/// digits are seen by two regions, left and right halves.
fn config(dir: &Path, port: u16, extra: &str) -> std::path::PathBuf {
    let samples = root().join("models/digits/samples");
    let three = dir.join("three");
    std::fs::create_dir_all(&three).unwrap();
    std::fs::copy(samples.join("3-three.jpg"), three.join("3.jpg")).unwrap();
    let text = format!(
        "[device]\nid = \"multi\"\nstate_dir = \"state\"\n\n\
         [sources.digits]\nkind = \"files\"\npath = \"{}\"\nloop = true\n\n\
         [sources.other]\nkind = \"files\"\npath = \"{}\"\nloop = true\n\n\
         [views.left]\nsource = \"digits\"\nroi = [0.0, 0.0, 0.5, 1.0]\n\n\
         [views.right]\nsource = \"digits\"\nroi = [0.5, 0.0, 0.5, 1.0]\n\n\
         [views.other]\nsource = \"other\"\ninterval = 0.3\n\n\
         [model]\npath = \"{}\"\n\n\
         [mqtt]\nhost = \"127.0.0.1\"\nport = {port}\nreconnect_min = 0.1\nreconnect_max = 0.5\n{extra}\n\n\
         [schedule]\ninterval = 0.2\n\n\
         [snapshots]\nenabled = true\nmin_interval = 0\n",
        samples.display(),
        three.display(),
        root().join("models/digits/digits-int8.onnx").display(),
    );
    write_config(dir, &text)
}

fn of_topic<'a>(got: &'a [(String, Value, bool)], topic: &str) -> Vec<&'a Value> {
    got.iter().filter(|(t, _, _)| t == topic).map(|(_, v, _)| v).collect()
}

#[test]
fn every_view_publishes_its_own_results_health_and_picture() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), broker.port, "");
    let all = Listener::new(broker.port, "lookout/multi/#");
    let d = Daemon::start(&cfg, &[]);
    let got = all.until(MIN, |m| {
        ["left", "right", "other"].iter().all(|v| of_topic(m, &format!("lookout/multi/{v}/result")).len() >= 3)
    });
    for v in ["left", "right", "other"] {
        let results = of_topic(&got, &format!("lookout/multi/{v}/result"));
        assert!(results.len() >= 3, "{v}: {}", d.log());
        assert!(results.iter().all(|r| r["view"] == v), "{v}: {results:?}");
        assert_eq!(of_topic(&got, &format!("lookout/multi/{v}/health")), [&Value::from("ok")], "{v}");
    }
    let others: Vec<&str> =
        of_topic(&got, "lookout/multi/other/result").iter().map(|r| r["label"].as_str().unwrap()).collect();
    assert!(others.iter().all(|l| *l == "three"), "{others:?}");
    // One seq counter for the whole daemon: no seq twice.
    let mut seqs: Vec<u64> =
        got.iter().filter(|(t, _, _)| t.ends_with("/result")).map(|(_, r, _)| r["seq"].as_u64().unwrap()).collect();
    let n = seqs.len();
    seqs.sort_unstable();
    seqs.dedup();
    assert_eq!(seqs.len(), n);

    // The pictures: retained, one per view, of exactly the region.
    let late = Listener::new(broker.port, "lookout/multi/+/snapshot");
    let pictures = late.until(Duration::from_secs(10), |m| m.len() >= 3);
    let mut sizes = std::collections::BTreeMap::new();
    let mut pixels = std::collections::BTreeMap::new();
    assert_eq!(pictures.len(), 3, "{pictures:?}");
    assert!(pictures.iter().all(|(_, _, retained)| *retained));
    // The listener reads payloads as text; the bytes come raw.
    for v in ["left", "right", "other"] {
        let jpeg = retained_bytes(broker.port, &format!("lookout/multi/{v}/snapshot"));
        let img = image::load_from_memory(&jpeg).unwrap_or_else(|e| panic!("{v}: {e}")).into_rgb8();
        sizes.insert(v, img.dimensions());
        pixels.insert(v, img.into_raw());
    }
    assert_eq!(sizes["left"], (64, 64), "half of a 128x96 frame: its 64-pixel square");
    assert_eq!(sizes["right"], (64, 64));
    assert_eq!(sizes["other"], (96, 96));
    assert_ne!(pixels["left"], pixels["right"], "two regions, two pictures");
    assert!(dir.path().join("state/snapshots/left").read_dir().unwrap().count() > 0, "kept on disk");
}

/// The retained payload of `topic`, as bytes.
fn retained_bytes(port: u16, topic: &str) -> Vec<u8> {
    use rumqttc::{Client, Event, MqttOptions, Packet, QoS};
    let opts = MqttOptions::new(format!("test-raw-{}", free_port()), "127.0.0.1", port);
    let (client, mut conn) = Client::new(opts, 10);
    client.subscribe(topic, QoS::AtLeastOnce).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        if let Ok(Ok(Event::Incoming(Packet::Publish(p)))) = conn.recv_timeout(Duration::from_millis(200)) {
            return p.payload.to_vec();
        }
    }
    panic!("nothing retained on {topic}");
}

fn reply_to(replies: &Listener, id: &str) -> Value {
    let got = replies.until(Duration::from_secs(20), |m| m.iter().any(|(_, v, _)| v["id"] == id));
    got.into_iter().map(|(_, v, _)| v).find(|v| v["id"] == id).unwrap_or_else(|| panic!("no reply to {id}"))
}

#[test]
fn commands_are_applied_answered_and_kept_across_a_restart() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), broker.port, "");
    let replies = Listener::new(broker.port, "lookout/multi/reply");
    let results = Listener::new(broker.port, "lookout/multi/+/result");
    let mut d = Daemon::start(&cfg, &[]);
    d.wait_results(3, MIN);
    let cmd = |payload: &str| publish_once(broker.port, "lookout/multi/command", payload, false);

    cmd(r#"{"cmd":"set","view":"other","interval":3600,"id":"a"}"#);
    let r = reply_to(&replies, "a");
    assert_eq!(
        (r["ok"].clone(), r["views"]["other"]["interval"].clone()),
        (Value::from(true), Value::from(3600.0)),
        "{r}"
    );
    cmd(r#"{"cmd":"pause","view":"right","id":"b"}"#);
    assert_eq!(reply_to(&replies, "b")["ok"], true);
    // From now on: left only, until a command asks for the others. Commands
    // apply in order, so results after this classification's came after
    // the pause (earlier ones may still be on their way).
    cmd(r#"{"cmd":"classify","view":"left","id":"mark"}"#);
    let mark = reply_to(&replies, "mark")["seq"].as_u64().unwrap();
    let quiet = results.until(Duration::from_secs(3), |_| false);
    let views: std::collections::BTreeSet<&str> = quiet
        .iter()
        .filter(|(_, v, _)| v["seq"].as_u64().unwrap() > mark)
        .map(|(_, v, _)| v["view"].as_str().unwrap())
        .collect();
    assert_eq!(views, ["left"].into(), "{quiet:?}");
    cmd(r#"{"cmd":"classify","view":"other","id":"c"}"#);
    let r = reply_to(&replies, "c");
    assert_eq!((r["ok"].clone(), r["label"].clone()), (Value::from(true), Value::from("three")), "{r}");

    // Bad payloads are answered, never acted on.
    for (payload, id, expect) in [
        (r#"{"cmd":"explode","id":"d"}"#, "d", "unknown command"),
        (r#"{"cmd":"set","view":"left","interval":-1,"id":"e"}"#, "e", "`interval` is -1"),
        (r#"{"cmd":"pause","view":"attic","id":"f"}"#, "f", "no view \"attic\""),
        (r#"{"cmd":"set","view":"left","threshold":0.5,"id":"g"}"#, "g", "has no triggers"),
    ] {
        cmd(payload);
        let r = reply_to(&replies, id);
        assert_eq!(r["ok"], false, "{payload}: {r}");
        assert!(r["error"].as_str().unwrap().contains(expect), "{payload}: {r}");
    }
    publish_once(broker.port, "lookout/multi/command", "{not json", false);
    let got =
        replies.until(Duration::from_secs(10), |m| m.iter().any(|(_, v, _)| v["ok"] == false && v.get("id").is_none()));
    assert!(
        got.iter().any(|(_, v, _)| v["error"].as_str().is_some_and(|e| e.contains("not a JSON object"))),
        "{got:?}"
    );
    // A retained command runs once, as it arrives; it must not run again
    // at every reconnect (where it arrives marked retained).
    publish_once(broker.port, "lookout/multi/command", r#"{"cmd":"status","id":"h"}"#, true);
    assert_eq!(reply_to(&replies, "h")["ok"], true);
    assert!(d.is_running(), "{}", d.log());

    // A restart keeps what the commands set; check-config shows it.
    assert_eq!(d.terminate(MIN), Some(0), "{}", d.log());
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_lookout")).arg("check-config").arg(&cfg).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("# Changed by commands") && text.contains("# [views.right]") && text.contains("# paused = true"),
        "{text}"
    );
    let control = Listener::new(broker.port, "lookout/multi/right/control");
    let replies = Listener::new(broker.port, "lookout/multi/reply");
    let d = Daemon::start(&cfg, &[]);
    let got = control.until(MIN, |m| m.iter().any(|(_, v, r)| !r && v["paused"] == true));
    assert!(got.iter().any(|(_, v, _)| v["paused"] == true), "{got:?}\n{}", d.log());
    d.wait_for("settings from earlier commands", MIN);
    let r = reply_to(&replies, "h");
    assert!(r["error"].as_str().unwrap().contains("not retained"), "{r}");
    // An empty retained message clears it; it is not a command.
    publish_once(broker.port, "lookout/multi/command", "", true);
    assert!(replies.until(Duration::from_secs(1), |m| !m.is_empty()).is_empty(), "an empty payload is answered");
}

#[test]
fn with_commands_off_the_command_topic_is_ignored() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), broker.port, "commands = false");
    let replies = Listener::new(broker.port, "lookout/multi/reply");
    let results = Listener::new(broker.port, "lookout/multi/right/result");
    let d = Daemon::start(&cfg, &[]);
    d.wait_results(3, MIN);
    publish_once(broker.port, "lookout/multi/command", r#"{"cmd":"pause","view":"right","id":"x"}"#, false);
    std::thread::sleep(Duration::from_secs(1));
    let _ = results.until(Duration::from_millis(100), |_| false);
    let after = results.until(Duration::from_secs(2), |m| m.len() >= 3);
    assert!(after.len() >= 3, "the view kept running: {}", d.log());
    assert!(replies.until(Duration::from_millis(200), |m| !m.is_empty()).is_empty(), "no reply with commands off");
    assert!(!d.log().contains("command pause"), "{}", d.log());
}
