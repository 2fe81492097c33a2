//! Triggers through the built binary: a change of scene on real frames and
//! a real model reaches a real broker as exactly the expected transitions.

use std::time::Duration;

use crate::common::*;

#[test]
fn a_change_of_scene_publishes_exactly_the_transitions() {
    let broker = Broker::start();
    // Four frames of a three, then four of a seven, replayed in name order.
    let frames = tempfile::tempdir().unwrap();
    let samples = root().join("models/digits/samples");
    for i in 0..8 {
        let src = if i < 4 { "3-three.jpg" } else { "7-seven.jpg" };
        std::fs::copy(samples.join(src), frames.path().join(format!("{i:02}.jpg"))).unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let extra = "\n[triggers]\nenabled = true\nvotes = 2\nwindow = 3\npublish = \"change\"\nheartbeat = 3600.0\n";
    let config = write_config(dir.path(), &digits_config(frames.path(), "digits-int8.onnx", broker.port, extra));
    let mut sub = Subscriber::new(broker.port, "lookout/e2e/main/result");

    let mut cmd = lookout();
    cmd.arg("run").arg("--config").arg(&config);
    let out = run_with_timeout(cmd, Duration::from_secs(120));
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "lookout run failed: {log}");
    assert_eq!(log.matches("] result ").count(), 8, "every frame is classified: {log}");

    // Waits past the expected count so an extra message would be seen.
    let got = sub.collect(4, Duration::from_secs(5));
    let transitions: Vec<(u64, &str, &str, &str)> = got
        .iter()
        .map(|(_, v)| {
            let t = &v["trigger"];
            (
                v["frame_seq"].as_u64().unwrap(),
                v["label"].as_str().unwrap(),
                t["instant"].as_str().unwrap(),
                t["state"].as_str().unwrap(),
            )
        })
        .collect();
    // 2 of 3 votes: the first three alone is not enough, the second is; the
    // first seven is outvoted, the second wins.
    assert_eq!(
        transitions,
        vec![(0, "three", "three", "unknown"), (1, "three", "three", "three"), (5, "seven", "seven", "seven")],
        "{log}"
    );
    assert!(got.iter().skip(1).all(|(_, v)| v["trigger"]["changed"] == true));
}

#[test]
fn a_group_naming_a_missing_label_stops_with_exit_78() {
    let dir = tempfile::tempdir().unwrap();
    let samples = root().join("models/digits/samples");
    let extra = "\n[triggers]\nenabled = true\n\n[[triggers.group]]\nname = \"round\"\nlabels = [\"zero\", \"ate\"]\n";
    let config = write_config(dir.path(), &digits_config(&samples, "digits-int8.onnx", 1, extra));
    for sub in ["check-config", "run"] {
        let mut cmd = lookout();
        cmd.arg(sub);
        if sub == "run" {
            cmd.arg("--config");
        }
        cmd.arg(&config);
        let out = run_with_timeout(cmd, Duration::from_secs(60));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(78), "{sub}: {err}");
        let last = err.lines().last().unwrap();
        assert!(
            last.starts_with("lookout: error: ")
                && last.contains("lookout.toml: `triggers.group` `round`: label \"ate\" is not in the model's labels"),
            "{sub}: {last}"
        );
    }
}
