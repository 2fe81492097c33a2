//! The bad-input matrix of issue #10 through the built binary, for the
//! cases tests/cli.rs and tests/mqtt.rs do not cover: out-of-range config
//! values and missing paths, broken and mismatched models, bad frames in a
//! running daemon, a refused and a silent broker, and a full disk under the
//! outbox. Each case asserts the exit code and the one error line, or for
//! faults at run time the log line, that the daemon kept running and that
//! no result was lost.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;

const MIN: Duration = Duration::from_secs(60);

fn samples() -> PathBuf {
    root().join("models/digits/samples")
}

fn models() -> PathBuf {
    root().join("models/digits")
}

/// Exit code and stderr of the binary with `args`.
fn run(args: &[&std::ffi::OsStr]) -> (i32, String) {
    let mut cmd = lookout();
    cmd.args(args);
    let out = run_with_timeout(cmd, MIN * 2);
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// The one `lookout: error:` line of a failed run.
fn error_line(stderr: &str) -> String {
    let lines: Vec<&str> = stderr.lines().filter(|l| l.starts_with("lookout: error:")).collect();
    assert_eq!(lines.len(), 1, "exactly one error line in: {stderr}");
    lines[0].to_owned()
}

#[test]
fn out_of_range_values_and_missing_paths_exit_78_naming_file_and_key() {
    let d = tempfile::tempdir().unwrap();
    let good = digits_config(&samples(), "digits-int8.onnx", 1883, "");
    let model = |k: &str| good.replace("[model]\n", &format!("[model]\n{k}\n"));
    let mqtt = |k: &str| good.replace("[mqtt]\n", &format!("[mqtt]\n{k}\n"));
    let source = |k: &str| good.replace("kind = \"files\"\n", &format!("kind = \"files\"\n{k}\n"));
    let cases: Vec<(String, &str)> = vec![
        (model("threads = 257"), "`model.threads` is 257"),
        (model("top_k = 0"), "`model.top_k` is 0"),
        (model("crop_fraction = 1.5"), "`model.crop_fraction` is 1.5"),
        (model("input_size = 4"), "`model.input_size` is 4"),
        (model("std = [0.5, 0.0, 0.5]"), "`model.std`"),
        (model("labels = \"no-such-labels.txt\""), "no-such-labels.txt does not exist"),
        (model("manifest = \"no-such.manifest.json\""), "no-such.manifest.json does not exist"),
        (good.replace(&samples().display().to_string(), "/no/such/frames"), "/no/such/frames does not exist"),
        (source("fps = -1.0"), "`source.fps` is -1"),
        (good.replace("interval = 0.05", "interval = -1.0"), "`schedule.interval` is -1"),
        (good.replace("interval = 0.05", "interval = nan"), "`schedule.interval` is NaN"),
        (good.replace("port = 1883", "port = 0"), "`mqtt.port` is 0"),
        (good.replace("port = 1883", "port = 70000"), "`port`"),
        (mqtt("qos = 3"), "`mqtt.qos` is 3"),
        (mqtt("outbox_max_rows = 0"), "mqtt.outbox_max_rows"),
        (good.replace("reconnect_min = 0.1", "reconnect_min = -0.5"), "mqtt.reconnect_min"),
        (mqtt("keep_alive = -5.0"), "mqtt.keep_alive"),
        (format!("{good}[triggers]\nthreshold = -0.1\n"), "`triggers.threshold` is -0.1"),
        (format!("{good}[triggers]\nthresholds = {{ three = -1.0 }}\n"), "`triggers.thresholds` is -1"),
        (format!("{good}[triggers]\nmargin = 1.5\n"), "`triggers.margin` is 1.5"),
        (format!("{good}[triggers]\nvotes = 0\n"), "triggers.votes"),
        (format!("{good}[health]\ndark_below = 300.0\n"), "`health.dark_below` is 300"),
        (format!("{good}[health]\nstale_after = -1.0\n"), "`health.stale_after` is -1"),
    ];
    for (text, expect) in &cases {
        let cfg = write_config(d.path(), text);
        let (code, err) = run(&["check-config".as_ref(), cfg.as_os_str()]);
        assert_eq!(code, 78, "{expect}: {err}");
        let line = error_line(&err);
        assert!(line.contains(&cfg.display().to_string()) && line.contains(expect), "wanted {expect:?} in: {line}");
    }

    // threads = 0 is in range: it means one thread per core.
    let cfg = write_config(d.path(), &model("threads = 0"));
    let mut cmd = lookout();
    cmd.arg("check-config").arg(&cfg);
    let out = run_with_timeout(cmd, MIN);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("threads = 0"));
}

#[test]
fn a_state_dir_that_is_a_file_exits_78_naming_it() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("state-file"), "").unwrap();
    let text = digits_config(&samples(), "digits-int8.onnx", free_port(), "")
        .replace("state_dir = \"state\"", "state_dir = \"state-file\"");
    let cfg = write_config(d.path(), &text);
    let (code, err) = run(&["run".as_ref(), "--config".as_ref(), cfg.as_os_str()]);
    assert_eq!(code, 78, "{err}");
    let line = error_line(&err);
    assert!(line.contains("state-file") && line.contains("device.state_dir"), "{line}");
}

/// `lookout classify --model <model>` of one sample with the digits labels:
/// (exit code, the error line).
fn classify_with(dir: &Path, model: &Path) -> (i32, String) {
    let text = digits_config(&samples(), "digits-int8.onnx", 1883, "")
        .replace("[model]\n", &format!("[model]\nlabels = \"{}\"\n", models().join("labels.txt").display()));
    let cfg = write_config(dir, &text);
    let img = samples().join("3-three.jpg");
    let (code, err) = run(&[
        "classify".as_ref(),
        "--config".as_ref(),
        cfg.as_os_str(),
        "--model".as_ref(),
        model.as_os_str(),
        img.as_os_str(),
    ]);
    let line = if code == 0 { String::new() } else { error_line(&err) };
    (code, line)
}

#[test]
fn broken_and_mismatched_models_exit_79_and_say_what_is_wrong() {
    let d = tempfile::tempdir().unwrap();
    let good = std::fs::read(models().join("digits-int8.onnx")).unwrap();

    let (code, line) = classify_with(d.path(), &d.path().join("absent.onnx"));
    assert_eq!(code, 78, "{line}");
    assert!(line.contains("absent.onnx does not exist"), "{line}");

    let empty = d.path().join("empty.onnx");
    std::fs::write(&empty, b"").unwrap();
    let (code, line) = classify_with(d.path(), &empty);
    assert_eq!(code, 79, "{line}");
    assert!(line.contains("empty.onnx: cannot load the model") && line.contains("ONNX"), "{line}");

    // The first half of the real model: a protobuf cut mid-tensor.
    let truncated = d.path().join("truncated.onnx");
    std::fs::write(&truncated, &good[..good.len() / 2]).unwrap();
    let (code, line) = classify_with(d.path(), &truncated);
    assert_eq!(code, 79, "{line}");
    assert!(line.contains("truncated.onnx: cannot load the model") && line.contains("ONNX"), "{line}");

    // The same cut file with the real model's manifest beside it: the
    // checksum names the mismatch before any parsing.
    std::fs::copy(models().join("digits-int8.manifest.json"), d.path().join("truncated.manifest.json")).unwrap();
    std::fs::copy(models().join("labels.txt"), d.path().join("labels.txt")).unwrap();
    let (code, line) = classify_with(d.path(), &truncated);
    assert_eq!(code, 79, "{line}");
    assert!(line.contains("truncated.onnx: sha256 is") && line.contains("its manifest says"), "{line}");

    // Valid ONNX files whose input is not a [1, 3, H, W] image
    // (tools/make_bad_models.py).
    let bad = root().join("tests/fixtures/bad-models");
    let (code, line) = classify_with(d.path(), &bad.join("rank2.onnx"));
    assert_eq!(code, 79, "{line}");
    assert!(line.contains("rank2.onnx") && line.contains("input"), "{line}");
    let (code, line) = classify_with(d.path(), &bad.join("gray.onnx"));
    assert_eq!(code, 79, "{line}");
    assert!(line.contains("gray.onnx") && line.contains("input"), "{line}");
}
