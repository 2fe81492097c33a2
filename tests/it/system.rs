//! lookout as its users run it (issue #22): the .deb installed with apt in a
//! clean Debian 12 booted with a real systemd (`nspawn.rs`), the model
//! installed and the service set up by the steps in
//! README.md's ten-minute section (read from there and run line by line), then
//! what systemd and the broker see: readiness, two boards at once, kill -9,
//! bad configs and models, long intervals and missing frames against the
//! watchdog, a hung inference, stop, the security exposure, secrets, the
//! devices and the Argus socket a CSI camera needs.
//!
//! The package is made from the binary this `cargo test` built
//! (`nspawn::package` says why that is faithful); `LOOKOUT_DEB=path` tests
//! another, such as the release package. A small drop-in per test shortens
//! `WatchdogSec`/`RestartSec` where waiting for the shipped values would only
//! cost time, and the `command` source replays the digits model's sample
//! JPEGs, so no camera is needed. The broker on the host requires a login
//! on the port the boards use; the test's own subscribers use a second,
//! anonymous listener of the same broker.
//!
//! Needs root, systemd-container and debootstrap (tools/test.sh installs
//! them); skipped with a message otherwise, a failure when
//! LOOKOUT_REQUIRE_SYSTEM_TEST is set (CI). LOOKOUT_KEEP_CONTAINERS keeps
//! each container's files (its journal is in upper/var/log/journal).

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::*;
use crate::nspawn::{host, Container, Host};

/// The topics and client id the test expects, in one place: the layout
/// of design.md (`<prefix>/<device>/<view>/...`; a legacy `[source]`
/// config is the source and view `main`).
mod topic {
    pub const PREFIX: &str = "lookout";
    pub const VIEW: &str = "main";

    pub fn result(id: &str) -> String {
        format!("{PREFIX}/{id}/{VIEW}/result")
    }

    pub fn health(id: &str) -> String {
        format!("{PREFIX}/{id}/{VIEW}/health")
    }

    pub fn availability(id: &str) -> String {
        format!("{PREFIX}/{id}/availability")
    }

    pub fn client_id(id: &str) -> String {
        format!("lookout-{id}")
    }
}

const MIN: Duration = Duration::from_secs(60);

/// A Mosquitto that needs a login on `port` (the boards') and takes the
/// test's subscribers without one on `open_port`.
struct LoginBroker {
    broker: Broker,
    open_port: u16,
    log: std::path::PathBuf,
    user: &'static str,
    password: String,
}

impl LoginBroker {
    fn start() -> LoginBroker {
        // Unique, so finding it anywhere can only mean it leaked.
        let password = format!("pw-{}-{}", std::process::id(), free_port());
        let open_port = free_port();
        let mut log = std::path::PathBuf::new();
        let broker = Broker::start_with(|dir, port| {
            let passwd = dir.join("passwd");
            let ok = std::process::Command::new("mosquitto_passwd")
                .arg("-b")
                .arg("-c")
                .arg(&passwd)
                .args(["lookout", &password])
                .status();
            assert!(ok.unwrap().success(), "mosquitto_passwd");
            log = dir.join("mosquitto.log");
            format!(
                "per_listener_settings true\nlistener {port} 127.0.0.1\nallow_anonymous false\npassword_file {}\n\
                 listener {open_port} 127.0.0.1\nallow_anonymous true\n\
                 log_dest file {}\nlog_type error\nlog_type warning\nlog_type notice\nlog_type information\n\
                 connection_messages true\npersistence false\n",
                passwd.display(),
                log.display()
            )
        });
        LoginBroker { broker, open_port, log, user: "lookout", password }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn feed(&self, topic: &str) -> Feed {
        Feed { listener: Listener::new(self.open_port, topic), got: vec![] }
    }
}

type Msg = (String, Value, bool);

/// Everything a subscription received so far.
struct Feed {
    listener: Listener,
    got: Vec<Msg>,
}

impl Feed {
    /// Collects until `done` holds for everything received; panics naming
    /// `what` otherwise.
    fn wait(&mut self, what: &str, limit: Duration, done: impl Fn(&[Msg]) -> bool) {
        let deadline = Instant::now() + limit;
        while !done(&self.got) {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "no {what} within {limit:?}; received:\n{}", self.dump());
            let more = self.listener.until(left.min(Duration::from_millis(500)), |m| !m.is_empty());
            self.got.extend(more);
        }
    }

    fn on<'a>(got: &'a [Msg], topic: &str) -> impl Iterator<Item = &'a Value> + 'a {
        let topic = topic.to_owned();
        got.iter().filter(move |m| m.0 == topic).map(|m| &m.1)
    }

    fn seqs(got: &[Msg], id: &str) -> Vec<u64> {
        Feed::on(got, &topic::result(id)).filter_map(|v| v["seq"].as_u64()).collect()
    }

    fn texts(got: &[Msg], topic: &str) -> Vec<String> {
        Feed::on(got, topic).map(|v| v.as_str().map(String::from).unwrap_or_else(|| v.to_string())).collect()
    }

    fn dump(&self) -> String {
        let lines: Vec<String> = self.got.iter().map(|(t, v, r)| format!("{t} {v} retained={r}")).collect();
        let n = lines.len();
        lines.into_iter().skip(n.saturating_sub(40)).collect::<Vec<_>>().join("\n")
    }
}

/// How the test's board differs from the user's: its camera and broker
/// (what the user sets in the editor), and an optional unit drop-in.
struct Setup<'a> {
    /// The `command` source's shell script (MJPEG on stdout).
    frames: &'a str,
    interval: f64,
    /// More TOML appended to the config.
    extra: &'a str,
    /// /etc/systemd/system/lookout.service.d/test.conf
    dropin: &'a str,
    /// The digits model as torch's legacy exporter writes it, quantized
    /// the plain way (tests/fixtures/export-forms), instead of
    /// tools/export_model.py's form: `model install` writes it in
    /// lookout's canonical form.
    legacy: bool,
}

/// Sample JPEGs back to back, twice a second, forever; nothing while
/// /srv/pause exists.
const FRAMES_FOREVER: &str =
    "while :; do if [ -e /srv/pause ]; then sleep 0.2; else cat /srv/frames/*.jpg; sleep 0.5; fi; done";

/// The commands of the README's "A Pi, a camera and Home Assistant in ten
/// minutes" (its first ```sh block), comments left out.
fn documented_steps() -> Vec<String> {
    let doc = std::fs::read_to_string(root().join("README.md")).unwrap();
    let section =
        doc.split("## A Pi, a camera and Home Assistant in ten minutes").nth(1).expect("the README's section");
    let block = section.split("```sh\n").nth(1).and_then(|b| b.split("```").next()).expect("a ```sh block");
    block.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(String::from).collect()
}

/// Boots a container called `name` and sets lookout up in it by the
/// documented steps, `name` as its host name; returns once
/// `systemctl enable --now` has returned.
fn install(host: &Host, broker: &LoginBroker, name: &str, setup: &Setup) -> Container {
    let c = Container::boot(host, name);
    // What the user has in the current folder: the package and the export.
    let deb = host.deb.file_name().unwrap().to_str().unwrap();
    std::fs::copy(&host.deb, c.root.join("root").join(deb)).unwrap();
    let models = root().join("models/digits");
    let (dir, int8) = match setup.legacy {
        false => (models.clone(), "digits-int8"),
        true => (root().join("tests/fixtures/export-forms"), "digits-legacy-int8"),
    };
    let int8_files = [format!("{int8}.onnx"), format!("{int8}.manifest.json"), "labels.txt".into()];
    let fp32_files = ["digits-fp32.onnx".to_string(), "digits-fp32.manifest.json".into()];
    for (from, f) in int8_files.iter().map(|f| (&dir, f)).chain(fp32_files.iter().map(|f| (&models, f))) {
        c.write(&format!("/root/d2v-large/{f}"), std::fs::read(from.join(f)).unwrap());
    }
    for e in std::fs::read_dir(models.join("samples")).unwrap().flatten() {
        c.write(&format!("/srv/frames/{}", e.file_name().to_string_lossy()), std::fs::read(e.path()).unwrap());
    }
    if !setup.dropin.is_empty() {
        c.write("/etc/systemd/system/lookout.service.d/test.conf", setup.dropin);
    }
    let steps = documented_steps();
    assert!(steps.iter().any(|s| s.starts_with("sudoedit ")), "the steps edit the config: {steps:?}");
    assert!(steps.iter().any(|s| s.contains("hostnamectl hostname garage")), "the steps name the board: {steps:?}");
    assert!(steps.iter().any(|s| s.contains("enable --now lookout")), "the steps start lookout: {steps:?}");
    for step in &steps {
        if let Some(file) = step.strip_prefix("sudoedit ") {
            edit_config(&c, file.trim(), broker, setup);
            continue;
        }
        // Root already; the documented name is this board's.
        let cmd = step.replace("sudo ", "").replace("hostname garage", &format!("hostname {name}"));
        let out = c.sh_env_within(&cmd, &[("MQTT_PASSWORD", &broker.password)], Duration::from_secs(180));
        assert!(
            out.status.success(),
            "{name}: documented step `{step}` failed ({}):\n{}{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            c.journal("lookout")
        );
    }
    c
}

/// What the user does in the editor: the camera in `[source]`, the broker
/// and its login in `[mqtt]` (uncommenting the packaged lines). The rest of
/// the packaged file stays as installed.
fn edit_config(c: &Container, file: &str, broker: &LoginBroker, setup: &Setup) {
    let path = c.root.join(file.trim_start_matches('/'));
    let text = std::fs::read_to_string(&path).unwrap();
    for line in ["# username = \"lookout\"", "# password_credential = \"mqtt-password\""] {
        assert!(text.contains(line), "the packaged config no longer offers `{line}`:\n{text}");
    }
    let text = text
        .replace("# username = \"lookout\"", &format!("username = \"{}\"", broker.user))
        .replace("# password_credential = ", "password_credential = ");
    let mut doc: toml_edit::DocumentMut = text.parse().unwrap();
    let mut source = toml_edit::Table::new();
    source["kind"] = toml_edit::value("command");
    source["command"] = toml_edit::value(toml_edit::Array::from_iter(["/bin/sh", "-c", setup.frames]));
    doc["source"] = toml_edit::Item::Table(source);
    doc["mqtt"]["host"] = toml_edit::value("127.0.0.1");
    doc["mqtt"]["port"] = toml_edit::value(i64::from(broker.broker.port));
    doc["schedule"]["interval"] = toml_edit::value(setup.interval);
    std::fs::write(&path, format!("{doc}{}", setup.extra)).unwrap();
}

/// The seqs a board published, sorted without repeats, and whether they
/// run without a gap.
fn contiguous(mut seqs: Vec<u64>) -> (Vec<u64>, bool) {
    seqs.sort_unstable();
    seqs.dedup();
    let ok = seqs.windows(2).all(|w| w[1] == w[0] + 1);
    (seqs, ok)
}

#[test]
fn two_boards_publish_under_their_names_survive_kill_9_and_stop_cleanly() {
    let Some(host) = host() else { return };
    let broker = LoginBroker::start();
    let mut feed = broker.feed(&format!("{}/#", topic::PREFIX));
    // The porch's model is a plain export, which `model install` writes in
    // lookout's canonical form for the service to run.
    let garage = Setup { frames: FRAMES_FOREVER, interval: 0.5, extra: "", dropin: "", legacy: false };
    let porch = Setup { legacy: true, ..garage };
    let names = ["garage", "porch"];
    let boards: Vec<Container> = std::thread::scope(|s| {
        let broker = &broker;
        let started = [(names[0], &garage), (names[1], &porch)]
            .map(|(n, setup)| s.spawn(move || install(host, broker, n, setup)));
        started.into_iter().map(|h| h.join().unwrap()).collect()
    });

    for c in &boards {
        // Type=notify: active only once lookout sent READY=1.
        assert_eq!(c.show("lookout", "Type"), "notify");
        c.wait_state("lookout", "active", MIN);
        assert_eq!(c.show("lookout", "SubState"), "running");
    }
    feed.wait("results from both boards", MIN * 2, |got| names.iter().all(|n| Feed::seqs(got, n).len() >= 3));
    for n in names {
        let first = Feed::on(&feed.got, &topic::result(n)).next().unwrap();
        assert!(first["label"].is_string() && first["score"].is_number(), "{n}: {first}");
        assert!(Feed::texts(&feed.got, &topic::availability(n)).contains(&"online".to_string()), "{}", feed.dump());
    }
    // Both logged in, each with its own client id, and both still
    // connected: neither was thrown off for the other.
    let log = broker.log();
    for n in names {
        let id = topic::client_id(n);
        assert!(log.contains(&format!(" as {id} ")) && log.contains(&format!("u'{}'", broker.user)), "{id}:\n{log}");
        assert!(!log.contains(&format!("Client {id} disconnected")), "{id} disconnected:\n{log}");
        assert!(!log.contains(&format!("Client {id} closed its connection")), "{id} dropped:\n{log}");
    }
    assert!(!log.contains("already connected, closing old connection"), "{log}");
    let installed = boards[1].sh("cat /usr/local/share/lookout/models/digits-legacy/digits-legacy-int8.manifest.json");
    let installed: serde_json::Value = serde_json::from_str(&installed).unwrap();
    let export: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("tests/fixtures/export-forms/digits-legacy-int8.manifest.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(installed["canonical_of"]["sha256"], export["sha256"], "porch: {installed}");
    assert_ne!(installed["sha256"], export["sha256"], "porch: {installed}");
    let journal = boards[1].journal("lookout");
    assert!(journal.contains("model digits-legacy-int8 (32x32, 10 classes) loaded"), "porch:\n{journal}");

    let garage = &boards[0];
    secrets_stay_secret(garage, &broker.password);
    tract_sees_the_cpu(garage);
    let exposure = security_exposure(garage);
    println!("systemd-analyze security lookout, running in the container: {exposure}");
    assert!(exposure <= 2.0, "exposure {exposure} > 2.0");

    // kill -9: systemd starts it again (RestartSec=5 as shipped); the
    // outbox resends whatever the broker had not acknowledged, so no number
    // is missing up to the kill, and the seq goes on past the numbers the
    // killed run had reserved (at most 1000, never used, and logged): it
    // never repeats.
    let pid = garage.show("lookout", "MainPID");
    let before = *Feed::seqs(&feed.got, "garage").iter().max().unwrap();
    let since = feed.got.len();
    garage.sh(&format!("kill -9 {pid}"));
    let deadline = Instant::now() + MIN;
    while garage.show("lookout", "NRestarts") != "1" {
        assert!(Instant::now() < deadline, "not restarted after kill -9:\n{}", garage.journal("lookout"));
        std::thread::sleep(Duration::from_millis(200));
    }
    garage.wait_state("lookout", "active", MIN);
    assert_ne!(garage.show("lookout", "MainPID"), pid);
    feed.wait("results after the restart", MIN, |got| {
        Feed::on(&got[since..], &topic::result("garage")).filter(|r| r["replayed"] != true).count() >= 3
    });
    // The killed run may publish a result between `before` and the kill, so
    // the gap is found in the numbers, not at `before`: one run of numbers
    // up to the kill and past `before`, then one after the restart.
    let (all, _) = contiguous(Feed::seqs(&feed.got, "garage"));
    let gap = all.windows(2).position(|w| w[1] != w[0] + 1).map_or(all.len(), |i| i + 1);
    let (upto_kill, after) = all.split_at(gap);
    assert!(
        upto_kill.first() == Some(&0) && *upto_kill.last().unwrap() >= before,
        "a seq is missing before kill -9: {all:?} (had {before})"
    );
    // No gap: the restart took the next number (the killed run had used
    // its whole reservation). A gap: within the reservation, and logged.
    if let Some(&next) = after.first() {
        let last = *upto_kill.last().unwrap();
        assert!(
            contiguous(after.to_vec()).1 && next <= last + 1001,
            "after kill -9 the seq goes on, skipping at most 1000: {all:?} (had {before})"
        );
        let journal = garage.journal("lookout");
        assert!(
            journal.contains(&format!("results continue at seq {next}")),
            "an unlogged skip to {next} after {last}:\n{journal}"
        );
    }
    // New results number on from the old ones (the outbox keeps the count).
    for r in Feed::on(&feed.got[since..], &topic::result("garage")) {
        let replayed = r["replayed"].as_bool().unwrap_or(false);
        assert!(replayed || r["seq"].as_u64().unwrap() > before, "seq restarted after kill -9: {r} (had {before})");
    }

    // systemctl stop: `offline`, exit 0, well within TimeoutStopSec.
    let limit: u64 = garage.show("lookout", "TimeoutStopUSec").trim_end_matches('s').parse().unwrap_or(30);
    for c in &boards {
        let since = feed.got.len();
        let t = Instant::now();
        c.sh("systemctl stop lookout");
        let took = t.elapsed();
        println!("{}: systemctl stop took {:.2} s (TimeoutStopSec {limit} s)", c.name, took.as_secs_f64());
        assert!(took < Duration::from_secs(limit), "{}: stop took {took:?}", c.name);
        assert_eq!(c.show("lookout", "Result"), "success", "{}", c.journal("lookout"));
        assert_eq!(c.show("lookout", "ExecMainStatus"), "0");
        let avail = topic::availability(&c.name);
        feed.wait("offline", MIN, |got| Feed::texts(&got[since..], &avail).contains(&"offline".to_string()));
        // A clean DISCONNECT, not the last will of a dropped link.
        let id = topic::client_id(&c.name);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !broker.log().contains(&format!("Client {id} disconnected.")) {
            assert!(Instant::now() < deadline, "{id}: no clean disconnect:\n{}", broker.log());
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// The MQTT password never reaches the journal, and the config users edit
/// (world-readable as packaged) holds no secret; the credential is root's.
fn secrets_stay_secret(c: &Container, password: &str) {
    let journal = c.sh("journalctl -q --no-pager -o verbose");
    assert!(!journal.contains(password), "the MQTT password is in the journal");
    let config = c.sh("cat /etc/lookout/lookout.toml");
    let mode = c.sh("stat -c '%a %U' /etc/lookout/lookout.toml");
    if config.contains(password) || config.lines().any(|l| l.trim_start().starts_with("password =")) {
        let others = u32::from_str_radix(mode.split_whitespace().next().unwrap(), 8).unwrap() & 0o004;
        assert_eq!(others, 0, "the config holds a secret and is world-readable ({mode})");
    }
    assert!(!config.contains(password), "the password went into the config");
    assert_eq!(c.sh("stat -c '%a %U' /etc/credstore/mqtt-password").trim(), "600 root");
}

/// tract reads /proc/cpuinfo for the CPU's features on ARM: the unit must
/// leave it visible to lookout (in lookout's own mount namespace).
fn tract_sees_the_cpu(c: &Container) {
    let pid = c.show("lookout", "MainPID");
    let seen = c.sh(&format!("nsenter -t {pid} -m -- sh -c 'ls /proc | grep -v \"^[0-9]\" | tr \"\\n\" \" \"'"));
    println!("{}: lookout's /proc holds: {seen}", c.name);
    let cpuinfo = c.sh(&format!("nsenter -t {pid} -m -- head -c 200 /proc/cpuinfo"));
    assert!(cpuinfo.contains("processor"), "lookout cannot read /proc/cpuinfo: {cpuinfo:?} (/proc: {seen})");
}

/// `systemd-analyze security lookout` on the running unit.
fn security_exposure(c: &Container) -> f64 {
    let report = c.sh("systemd-analyze security --no-pager lookout");
    let line = report.lines().find(|l| l.contains("Overall exposure level")).unwrap_or_else(|| panic!("{report}"));
    line.split(':').nth(1).and_then(|s| s.split_whitespace().next()).unwrap().parse().unwrap()
}

/// Lines lookout wrote at error priority.
fn errors(c: &Container) -> Vec<String> {
    let text = c.sh("journalctl -q --no-pager -o cat -p err -u lookout");
    text.lines().filter(|l| l.starts_with("lookout: error:")).map(String::from).collect()
}

/// Waits for lookout to fail with `code`, then longer than RestartSec:
/// it must not have been started again.
fn fails_once_with(c: &Container, code: &str, restart_sec: Duration) {
    c.wait_state("lookout", "failed", MIN);
    assert_eq!(c.show("lookout", "ExecMainStatus"), code, "{}", c.journal("lookout"));
    let invocation = c.show("lookout", "InvocationID");
    std::thread::sleep(restart_sec * 3);
    assert_eq!(c.show("lookout", "ActiveState"), "failed", "restarted after exit {code}");
    assert_eq!(c.show("lookout", "NRestarts"), "0", "restarted after exit {code}");
    assert_eq!(c.show("lookout", "InvocationID"), invocation, "started again after exit {code}");
}

#[test]
fn a_bad_config_or_model_fails_once_with_the_reason_at_error_priority() {
    let Some(host) = host() else { return };
    let broker = LoginBroker::start();
    // RestartSec=1: a loop would show within seconds (shipped: 5 s).
    let setup =
        Setup { frames: FRAMES_FOREVER, interval: 0.5, extra: "", dropin: "[Service]\nRestartSec=1\n", legacy: false };
    let c = install(host, &broker, "shed", &setup);
    c.wait_state("lookout", "active", MIN);
    c.sh("systemctl stop lookout");
    assert!(errors(&c).is_empty(), "{:?}", errors(&c));

    // A typo in the config: exit 78, RestartPreventExitStatus.
    let config = c.sh("cat /etc/lookout/lookout.toml");
    c.write("/etc/lookout/lookout.toml", config.replace("[schedule]\n", "[schedule]\nintervall = 2\n"));
    let _ = c.sh_within("systemctl start lookout", MIN);
    fails_once_with(&c, "78", Duration::from_secs(1));
    let errs = errors(&c);
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(errs[0].contains("/etc/lookout/lookout.toml:") && errs[0].contains("intervall"), "{errs:?}");

    // A damaged model: exit 79, the same.
    c.write("/etc/lookout/lookout.toml", &config);
    c.sh("printf junk >> /usr/local/share/lookout/models/digits/digits-int8.onnx && systemctl reset-failed lookout");
    let _ = c.sh_within("systemctl start lookout", MIN);
    fails_once_with(&c, "79", Duration::from_secs(1));
    let errs = errors(&c);
    assert_eq!(errs.len(), 2, "{errs:?}");
    assert!(errs[1].contains("digits-int8.onnx: sha256 is"), "{errs:?}");
}

#[test]
fn long_intervals_exiting_programs_and_missing_frames_do_not_restart_the_service() {
    let Some(host) = host() else { return };
    let broker = LoginBroker::start();
    let mut feed = broker.feed(&format!("{}/attic/#", topic::PREFIX));
    // The camera program exits every 3 s (lookout restarts it) and sends
    // nothing while /srv/pause exists; results every 10 s, the watchdog's
    // period 4 s; the source is stale after 3 s without a frame.
    let frames = "i=0; while [ $i -lt 6 ]; do [ -e /srv/pause ] || cat /srv/frames/*.jpg; sleep 0.5; i=$((i+1)); done";
    let extra = "\n[health]\nstale_after = 3.0\n";
    let setup = Setup { frames, interval: 10.0, extra, dropin: "[Service]\nWatchdogSec=4\n", legacy: false };
    let c = install(host, &broker, "attic", &setup);
    c.wait_state("lookout", "active", MIN);
    assert_eq!(c.show("lookout", "WatchdogUSec"), "4s");
    let result = topic::result("attic");
    let health = topic::health("attic");

    // Two results, 10 s apart: a quarter of an hour in watchdog periods.
    feed.wait("two results", MIN, |got| Feed::on(got, &result).count() >= 2);
    assert_eq!(c.show("lookout", "NRestarts"), "0", "{}", c.journal("lookout"));

    // No frames for 16 s, four watchdog periods: a health problem,
    // published, and no restart.
    c.sh("touch /srv/pause");
    let since = feed.got.len();
    feed.wait("health stale", Duration::from_secs(20), |got| {
        Feed::texts(&got[since..], &health).contains(&"stale".to_string())
    });
    std::thread::sleep(Duration::from_secs(12));
    assert_eq!(c.show("lookout", "ActiveState"), "active");
    assert_eq!(c.show("lookout", "NRestarts"), "0", "{}", c.journal("lookout"));

    // Frames again: healthy again and classifying, by itself.
    c.sh("rm /srv/pause");
    let since = feed.got.len();
    feed.wait("health ok and a result", Duration::from_secs(30), |got| {
        Feed::texts(&got[since..], &health).contains(&"ok".to_string()) && Feed::on(&got[since..], &result).count() >= 1
    });
    assert_eq!(c.show("lookout", "NRestarts"), "0", "{}", c.journal("lookout"));
    let journal = c.journal("lookout");
    assert!(!journal.contains("Watchdog timeout"), "{journal}");
    assert!(
        journal.matches("the program exited (exit status: 0)").count() >= 3,
        "the camera program did not exit and restart: {journal}"
    );
}

#[test]
fn a_hung_inference_is_restarted_by_the_watchdog() {
    let Some(host) = host() else { return };
    let broker = LoginBroker::start();
    let mut feed = broker.feed(&topic::result("cellar"));
    let dropin = "[Service]\nWatchdogSec=4\nRestartSec=1\nEnvironment=LOOKOUT_FAULT=hang-inference-after:3\n";
    let setup = Setup { frames: FRAMES_FOREVER, interval: 0.5, extra: "", dropin, legacy: false };
    let c = install(host, &broker, "cellar", &setup);
    feed.wait("the results before the hang", MIN, |got| got.len() >= 2);
    let deadline = Instant::now() + MIN;
    while c.show("lookout", "NRestarts") == "0" {
        assert!(Instant::now() < deadline, "not restarted:\n{}", c.journal("lookout"));
        std::thread::sleep(Duration::from_millis(200));
    }
    let journal = c.journal("lookout");
    assert!(journal.contains("Watchdog timeout"), "{journal}");
    c.wait_state("lookout", "active", MIN);
    // The restarted daemon classifies again (and hangs again at its third).
    let n = feed.got.len();
    feed.wait("results after the restart", MIN, |got| got.len() > n);
}

/// The Jetson drop-in, as far as a machine without a Jetson can test it: a
/// unit made from the installed one with a probe as ExecStart opens device
/// nodes made with mknod (no driver behind them: "No such device" means the
/// device cgroup let it through, "Operation not permitted" that it did not)
/// and connects to a fake Argus socket that systemd serves in the
/// container's /tmp. (`char-media`/`char-dma_heap` cannot be tried here:
/// this kernel has no such drivers, so /proc/devices names no such majors.)
#[test]
fn the_jetson_drop_in_lets_the_service_reach_argus_and_nvmap_and_nothing_else() {
    let Some(host) = host() else { return };
    let c = Container::boot(host, "jetson");
    let deb = host.deb.file_name().unwrap().to_str().unwrap();
    std::fs::copy(&host.deb, c.root.join("root").join(deb)).unwrap();
    c.sh(&format!("apt-get install -y -q ./{deb} >/dev/null 2>&1"));
    c.sh("mknod /dev/nvmap c 10 250 && mknod /dev/nvhost-vic c 10 251 && mknod /dev/nvhost-other c 10 252 && chmod 666 /dev/nv*");
    c.write(
        "/etc/systemd/system/argus.socket",
        "[Socket]\nListenStream=/tmp/argus_socket\nSocketMode=0666\nAccept=yes\n",
    );
    c.write("/etc/systemd/system/argus@.service", "[Service]\nExecStart=/bin/echo argus here\nStandardOutput=socket\n");
    c.write(
        "/usr/local/bin/lookout-probe",
        r#"#!/usr/bin/perl
use IO::Socket::UNIX;
for my $d ("/dev/nvmap", "/dev/nvhost-vic", "/dev/nvhost-other") {
    print "$d: ", (open(my $f, "<", $d) ? "opened" : "$!"), "\n";
}
my $s = IO::Socket::UNIX->new(Peer => "/tmp/argus_socket");
print "argus: ", ($s ? scalar <$s> : "$!\n");
"#,
    );
    c.sh("chmod 755 /usr/local/bin/lookout-probe");
    // The installed unit with the probe for lookout; every hardening line kept.
    let unit = c.sh("cat /usr/lib/systemd/system/lookout.service");
    let unit: String = unit
        .lines()
        .map(|l| match l {
            l if l.starts_with("ExecStart=") => "ExecStart=/usr/local/bin/lookout-probe".to_string(),
            "Type=notify" => "Type=oneshot".to_string(),
            l if l.starts_with("WatchdogSec=") || l.starts_with("Restart") => String::new(),
            l => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n");
    c.write("/etc/systemd/system/lookout-probe.service", unit);
    c.sh("systemctl daemon-reload && systemctl start argus.socket");
    // What the last run printed (a finished oneshot has no InvocationID
    // left to select its lines by).
    let probe = |c: &Container| {
        c.sh("systemctl start lookout-probe");
        let log = c.journal("lookout-probe");
        log.rsplit("Starting lookout-probe.service").next().unwrap().to_string()
    };

    let plain = probe(&c);
    for want in
        ["/dev/nvmap: Operation not permitted", "/dev/nvhost-vic: Operation not permitted", "argus: No such file"]
    {
        assert!(plain.contains(want), "without the drop-in, {want:?} expected:\n{plain}");
    }
    c.sh("mkdir -p /etc/systemd/system/lookout-probe.service.d && \
          cp /usr/share/doc/lookout/jetson-argus.conf /etc/systemd/system/lookout-probe.service.d/ && \
          systemctl daemon-reload");
    let jetson = probe(&c);
    for want in [
        "/dev/nvmap: No such device",
        "/dev/nvhost-vic: No such device",
        "/dev/nvhost-other: Operation not permitted",
        "argus: argus here",
    ] {
        assert!(jetson.contains(want), "with the drop-in, {want:?} expected:\n{jetson}");
    }
    let unit_log = c.journal("lookout-probe");
    assert!(!unit_log.contains("Failed to set up mount"), "{unit_log}");
}
