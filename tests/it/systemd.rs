//! lookout as a service: the unit file passes systemd's own checks, the
//! built binary speaks the sd_notify protocol, stops on SIGTERM and logs in
//! journald's format.

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;

fn systemd_analyze() -> Option<PathBuf> {
    ["/usr/bin/systemd-analyze", "/bin/systemd-analyze"].iter().map(PathBuf::from).find(|p| p.exists())
}

/// The unit with ExecStart pointing at the built binary (verify insists the
/// binary exists).
fn unit_copy(dir: &Path, extra: &str) -> PathBuf {
    let text = std::fs::read_to_string(root().join("systemd/lookout.service")).unwrap();
    assert!(text.contains("ExecStart=/usr/bin/lookout "), "the test rewrites this ExecStart");
    let text = text.replace("ExecStart=/usr/bin/lookout ", &format!("ExecStart={} ", env!("CARGO_BIN_EXE_lookout")));
    let p = dir.join("lookout.service");
    std::fs::write(&p, format!("{text}{extra}")).unwrap();
    p
}

fn verify_output(analyze: &Path, unit: &Path) -> String {
    let out = Command::new(analyze).arg("verify").arg(unit).output().unwrap();
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

#[test]
fn the_unit_passes_systemd_analyze_verify_and_security() {
    let Some(analyze) = systemd_analyze() else {
        println!("skipped: systemd-analyze is not installed (apt-get install systemd)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let unit = unit_copy(dir.path(), "");
    let text = std::fs::read_to_string(&unit).unwrap();
    for key in [
        "Type=notify",
        "WatchdogSec=",
        "RestartPreventExitStatus=78 79",
        "Restart=on-failure",
        "LoadCredential=mqtt-password",
        "DeviceAllow=char-video4linux rw",
        // CSI cameras through libcamera (rpicam-vid).
        "DeviceAllow=char-media rw",
        "DeviceAllow=char-dma_heap rw",
        "SupplementaryGroups=video",
        "ProtectSystem=strict",
        "StateDirectory=lookout",
        "ConfigurationDirectory=lookout",
    ] {
        assert!(text.lines().any(|l| l.starts_with(key)), "the unit lacks {key}");
    }
    // tract reads /proc/cpuinfo for the CPU's features on ARM.
    assert!(!text.lines().any(|l| l.starts_with("ProcSubset=")), "ProcSubset= hides /proc/cpuinfo");

    // verify exits 0 even on unknown keys: any output is a failure.
    let said = verify_output(&analyze, &unit);
    assert!(said.is_empty(), "systemd-analyze verify complained:\n{said}");
    // ... and the check does catch a mistake.
    let broken = tempfile::tempdir().unwrap();
    let said = verify_output(&analyze, &unit_copy(broken.path(), "Bogus=1\n"));
    assert!(said.contains("Bogus"), "verify did not flag an unknown key: {said:?}");
    // The Jetson drop-in the package ships, read from beside the unit.
    let dropins = dir.path().join("lookout.service.d");
    std::fs::create_dir(&dropins).unwrap();
    std::fs::copy(root().join("systemd/jetson-argus.conf"), dropins.join("jetson-argus.conf")).unwrap();
    let said = verify_output(&analyze, &unit);
    assert!(said.is_empty(), "systemd-analyze verify complained about the Jetson drop-in:\n{said}");
    std::fs::write(dropins.join("zz-bogus.conf"), "[Service]\nBogus=1\n").unwrap();
    assert!(verify_output(&analyze, &unit).contains("Bogus"), "verify did not read the drop-ins");
    std::fs::remove_file(dropins.join("zz-bogus.conf")).unwrap();

    // Scored with the Jetson drop-in, its extra devices and bind included.
    let out = Command::new(&analyze).args(["security", "--offline=yes"]).arg(&unit).output().unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    let line = report.lines().find(|l| l.contains("Overall exposure level")).unwrap_or_else(|| panic!("{report}"));
    let score: f64 = line.split(':').nth(1).and_then(|s| s.split_whitespace().next()).unwrap().parse().unwrap();
    println!("systemd-analyze security --offline=yes: {score}");
    assert!(score <= 2.0, "exposure {score} > 2.0: {line}");
}

/// A replay of the sample frames that never ends, without MQTT.
fn looping_config(dir: &Path) -> PathBuf {
    let samples = root().join("models/digits/samples");
    let text = digits_config(&samples, "digits-int8.onnx", 1, "")
        .replace("[mqtt]\n", "[mqtt]\nenabled = false\n")
        .replace("kind = \"files\"\n", "kind = \"files\"\nloop = true\n");
    write_config(dir, &text)
}

fn spawn(mut cmd: Command) -> Child {
    cmd.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().expect("spawn lookout")
}

fn sigterm(child: &Child) {
    let ok = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status().unwrap().success();
    assert!(ok, "kill -TERM failed");
}

/// Waits for the child, killing it after `limit`; returns (exit code, stderr, time taken).
fn wait(child: Child, limit: Duration) -> (Option<i32>, String, Duration) {
    let start = Instant::now();
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        if rx.recv_timeout(limit).is_err() {
            let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
        }
    });
    let out = child.wait_with_output().unwrap();
    let _ = tx.send(());
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned(), start.elapsed())
}

#[test]
fn sd_notify_ready_watchdog_and_stopping_arrive_on_the_socket() {
    let dir = tempfile::tempdir().unwrap();
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200))).unwrap();

    let mut cmd = lookout();
    cmd.arg("run").arg("--config").arg(looping_config(dir.path()));
    // 0.4 s: pings every 0.1 s while results come every 0.05 s.
    cmd.env("NOTIFY_SOCKET", &sock_path).env("WATCHDOG_USEC", "400000");
    let child = spawn(cmd);

    let mut messages: Vec<String> = vec![];
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(60);
    while messages.iter().filter(|m| m.contains("WATCHDOG=1")).count() < 3 && Instant::now() < deadline {
        if let Ok(n) = sock.recv(&mut buf) {
            messages.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }
    sigterm(&child);
    let stop_deadline = Instant::now() + Duration::from_secs(10);
    while !messages.iter().any(|m| m.contains("STOPPING=1")) && Instant::now() < stop_deadline {
        if let Ok(n) = sock.recv(&mut buf) {
            messages.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }
    let (code, log, _) = wait(child, Duration::from_secs(20));
    assert_eq!(code, Some(0), "{log}");

    let first = |what: &str| messages.iter().position(|m| m.lines().any(|l| l == what));
    let ready = first("READY=1").unwrap_or_else(|| panic!("no READY=1 in {messages:?}"));
    let watchdog = first("WATCHDOG=1").unwrap_or_else(|| panic!("no WATCHDOG=1 in {messages:?}"));
    let stopping = first("STOPPING=1").unwrap_or_else(|| panic!("no STOPPING=1 in {messages:?}"));
    assert!(ready < watchdog && watchdog < stopping, "order: {messages:?}");
    assert!(messages[ready].contains("STATUS=classifying"), "{}", messages[ready]);
    assert!(messages[watchdog].contains("results; main ok"), "{}", messages[watchdog]);
    assert!(log.contains("systemd watchdog: 0.4 s"), "{log}");
}

#[test]
fn a_hung_frame_source_is_a_health_problem_not_a_reason_to_stop_the_watchdog() {
    // One real frame, then a FIFO nobody writes: reading it blocks forever,
    // like a camera whose driver hangs. Restarting would only reload the
    // model: the loop keeps pinging and reports the source stale.
    let frames = tempfile::tempdir().unwrap();
    std::fs::copy(root().join("models/digits/samples/3-three.jpg"), frames.path().join("0.jpg")).unwrap();
    let fifo = frames.path().join("1.jpg");
    assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let dir = tempfile::tempdir().unwrap();
    let text = digits_config(frames.path(), "digits-int8.onnx", 1, "[health]\nstale_after = 0.3\n")
        .replace("[mqtt]\n", "[mqtt]\nenabled = false\n")
        .replace("interval = 0.05", "interval = 3600");
    let config = write_config(dir.path(), &text);
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200))).unwrap();

    let mut cmd = lookout();
    cmd.arg("run").arg("--config").arg(&config);
    cmd.env("NOTIFY_SOCKET", &sock_path).env("WATCHDOG_USEC", "400000");
    let child = spawn(cmd);
    let mut messages: Vec<String> = vec![];
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(60);
    while !messages.iter().any(|m| m.contains("main stale")) && Instant::now() < deadline {
        if let Ok(n) = sock.recv(&mut buf) {
            messages.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }
    // Two seconds (five watchdog periods) stale, interval an hour: the
    // pings go on.
    let stale_at = messages.len();
    let quiet_until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < quiet_until {
        if let Ok(n) = sock.recv(&mut buf) {
            messages.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }
    sigterm(&child);
    let (code, log, took) = wait(child, Duration::from_secs(30));
    assert_eq!(code, Some(0), "{log}");
    assert!(took < Duration::from_secs(10), "stopping took {took:?}: {log}");

    assert!(stale_at > 0 && messages[stale_at - 1].contains("WATCHDOG=1"), "stale never reported: {messages:?}\n{log}");
    let pings = messages[stale_at..].iter().filter(|m| m.contains("WATCHDOG=1")).count();
    assert!(pings >= 8, "{pings} pings in 2 s of a 0.4 s watchdog while stale: {messages:?}");
    assert!(log.contains("main: health stale: no frame for 0.3 s"), "{log}");
    assert!(log.contains("the frame source did not stop within 2 s"), "{log}");
}

#[test]
fn sighup_changes_nothing_and_sigterm_stops_within_seconds_with_exit_0() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let samples = root().join("models/digits/samples");
    let text = digits_config(&samples, "digits-int8.onnx", broker.port, "")
        .replace("kind = \"files\"\n", "kind = \"files\"\nloop = true\n");
    let config = write_config(dir.path(), &text);
    let mut sub = Subscriber::new(broker.port, "lookout/e2e/main/result");

    let mut cmd = lookout();
    cmd.arg("run").arg("--config").arg(&config);
    let child = spawn(cmd);
    let got = sub.collect(3, Duration::from_secs(60));
    assert_eq!(got.len(), 3, "lookout published nothing before the signal");
    // SIGHUP changes nothing: results keep coming.
    assert!(Command::new("kill").arg("-HUP").arg(child.id().to_string()).status().unwrap().success());
    let after_hup = sub.collect(3, Duration::from_secs(60));
    assert_eq!(after_hup.len(), 3, "lookout stopped publishing after SIGHUP");
    sigterm(&child);
    let (code, log, took) = wait(child, Duration::from_secs(30));
    assert_eq!(code, Some(0), "{log}");
    assert!(took < Duration::from_secs(10), "SIGTERM took {took:?} (TimeoutStopSec is 30 s)");
    assert!(log.contains("signal 15: stopping"), "{log}");
    assert!(log.contains("SIGHUP: configuration reload is not supported; restart lookout"), "{log}");
    assert!(log.contains("stopped:"), "no summary: {log}");
}

#[test]
fn under_journald_lines_carry_priorities_not_timestamps() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let samples = root().join("models/digits/samples");
    let text = digits_config(&samples, "digits-int8.onnx", 1, "").replace("[mqtt]\n", "[mqtt]\nenabled = false\n");
    let config = write_config(dir.path(), &text);
    // journald's stream is stderr itself, named by JOURNAL_STREAM as
    // device:inode; here a file stands in for the journal's socket.
    let run = |journal: Option<bool>, args: &[&std::ffi::OsStr]| {
        let log = tempfile::NamedTempFile::new().unwrap();
        let meta = log.as_file().metadata().unwrap();
        let mut cmd = lookout();
        cmd.args(args);
        match journal {
            Some(true) => cmd.env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino())),
            // Inherited from a service, but stderr is something else.
            Some(false) => cmd.env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino() + 1)),
            None => cmd.env_remove("JOURNAL_STREAM"),
        };
        let child = cmd.stdout(Stdio::null()).stderr(log.reopen().unwrap()).spawn().unwrap();
        let (code, _, _) = wait(child, Duration::from_secs(120));
        (code, std::fs::read_to_string(log.path()).unwrap())
    };
    let daemon = ["run".as_ref(), "--config".as_ref(), config.as_os_str()];

    let (code, journal) = run(Some(true), &daemon);
    assert_eq!(code, Some(0), "{journal}");
    assert!(journal.lines().count() >= 10, "{journal}");
    for line in journal.lines() {
        let prio = line.strip_prefix('<').and_then(|l| l.split_once('>')).map(|(p, _)| p);
        assert!(matches!(prio, Some("3" | "4" | "6" | "7")), "no journald priority: {line}");
        assert!(!line.contains("[20") && !line.contains("Z "), "timestamp under journald: {line}");
    }
    assert!(journal.contains("<6>result 0 main frame 0"), "{journal}");
    // The error that ends the program is at error priority, where
    // `journalctl -p err` finds it.
    let (code, err) = run(Some(true), &["check-config".as_ref(), dir.path().join("absent.toml").as_os_str()]);
    assert_eq!(code, Some(78), "{err}");
    assert!(err.starts_with("<3>lookout: error: "), "{err}");

    // Outside journald env_logger's own format, with timestamps, remains,
    // also when JOURNAL_STREAM names another stream.
    for journal in [None, Some(false)] {
        let (code, plain) = run(journal, &daemon);
        assert_eq!(code, Some(0), "{plain}");
        assert!(plain.lines().all(|l| l.starts_with("[20")), "{journal:?}: {plain}");
        let (_, err) = run(journal, &["check-config".as_ref(), dir.path().join("absent.toml").as_os_str()]);
        assert!(err.starts_with("lookout: error: "), "{err}");
    }
}
