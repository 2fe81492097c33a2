//! MQTT under faults, through the built binary and a real Mosquitto: the
//! broker killed, frozen, lookout killed during an outage; availability,
//! last will, retained state, Home Assistant discovery; wrong password and
//! an untrusted TLS certificate.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::common::*;
use serde_json::Value;

const DEVICE: &str = "fault";
const MIN: Duration = Duration::from_secs(60);

/// A looping replay of the digits samples, 10 classifications a second at
/// most, with fast reconnects and 1 s diagnostics.
fn config(dir: &Path, port: u16, mqtt_extra: &str) -> std::path::PathBuf {
    let models = root().join("models/digits");
    let text = format!(
        "[device]\nid = \"{DEVICE}\"\nname = \"Fault test\"\nstate_dir = \"state\"\n\n\
         [source]\nkind = \"files\"\npath = \"{}\"\nloop = true\n\n\
         [model]\npath = \"{}\"\n\n\
         [mqtt]\nhost = \"127.0.0.1\"\nport = {port}\nkeep_alive = 5\nconnect_timeout = 2\n\
         reconnect_min = 0.2\nreconnect_max = 1\ndiagnostics_interval = 1\n{mqtt_extra}\n\n\
         [schedule]\ninterval = 0.1\n",
        models.join("samples").display(),
        models.join("digits-int8.onnx").display(),
    );
    write_config(dir, &text)
}

fn result_topic() -> String {
    format!("lookout/{DEVICE}/main/result")
}

/// Received result seqs, duplicates dropped.
fn received(msgs: &[(String, Value, bool)]) -> BTreeSet<u64> {
    msgs.iter().filter(|(t, _, _)| *t == result_topic()).filter_map(|(_, v, _)| v["seq"].as_u64()).collect()
}

/// Every seq from 0 to `last` arrived (after dropping duplicates), and the
/// first copy of each arrived in seq order.
fn assert_complete(msgs: &[(String, Value, bool)], last: u64, log: &str) {
    let got = received(msgs);
    let missing: Vec<u64> = (0..=last).filter(|s| !got.contains(s)).collect();
    assert!(missing.is_empty(), "missing seqs {missing:?} of 0..={last}; log:\n{log}");
    let mut seen = BTreeSet::new();
    let firsts: Vec<u64> = msgs
        .iter()
        .filter(|(t, _, _)| *t == result_topic())
        .filter_map(|(_, v, _)| v["seq"].as_u64())
        .filter(|s| seen.insert(*s))
        .collect();
    let mut sorted = firsts.clone();
    sorted.sort();
    assert_eq!(firsts, sorted, "first copies out of order");
    let results = msgs.iter().filter(|(t, _, _)| *t == result_topic());
    let replayed = results.clone().filter(|(_, v, _)| v["replayed"] == true).count();
    eprintln!(
        "seq 0..={last}: {} messages, {replayed} replayed, {} duplicates",
        results.clone().count(),
        results.count() - got.len()
    );
}

/// Collects until `last` arrived, or a minute passed.
fn collect_through(sub: &Listener, mut msgs: Vec<(String, Value, bool)>, last: u64) -> Vec<(String, Value, bool)> {
    let more = sub.until(MIN, |m| {
        let mut all = received(&msgs);
        all.extend(received(m));
        (0..=last).all(|s| all.contains(&s))
    });
    msgs.extend(more);
    msgs
}

#[test]
fn a_broker_killed_and_restarted_loses_no_result() {
    let mut broker = Broker::start_persistent();
    let sub = Listener::persistent_saved(broker.port, &result_topic(), "test-killed-broker");
    let dir = tempfile::tempdir().unwrap();
    let lookout = Daemon::start(&config(dir.path(), broker.port, ""), &[]);
    let mut msgs = sub.until(MIN * 2, |m| received(m).len() >= 3);
    assert!(received(&msgs).len() >= 3, "no results before the outage:\n{}", lookout.log());

    broker.kill();
    let before = lookout.seqs().len();
    lookout.wait_results(before + 5, MIN);
    broker.restart();
    lookout.wait_for("after", MIN);
    let during = lookout.seqs().len();
    lookout.wait_results(during + 3, MIN);

    let mut lookout = lookout;
    assert_eq!(lookout.terminate(MIN), Some(0), "{}", lookout.log());
    let last = *lookout.seqs().last().unwrap();
    msgs = collect_through(&sub, msgs, last);
    assert_complete(&msgs, last, &lookout.log());
    assert!(msgs.iter().any(|(_, v, _)| v["replayed"] == true), "results from the outage are marked replayed");
}

#[test]
fn a_broker_frozen_for_20_s_loses_no_result() {
    let broker = Broker::start_with(|_, port| {
        format!("listener {port} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 0\nmax_inflight_messages 0\n")
    });
    let sub = Listener::persistent(broker.port, &result_topic(), "test-frozen-broker");
    let dir = tempfile::tempdir().unwrap();
    let mut lookout = Daemon::start(&config(dir.path(), broker.port, ""), &[]);
    let msgs = sub.until(MIN * 2, |m| received(m).len() >= 3);
    assert!(received(&msgs).len() >= 3, "no results before the freeze:\n{}", lookout.log());

    broker.freeze();
    std::thread::sleep(Duration::from_secs(20));
    broker.thaw();
    lookout.wait_for("connection lost", MIN);
    lookout.wait_for("after", MIN);
    let n = lookout.seqs().len();
    lookout.wait_results(n + 3, MIN);

    assert_eq!(lookout.terminate(MIN), Some(0), "{}", lookout.log());
    let last = *lookout.seqs().last().unwrap();
    let msgs = collect_through(&sub, msgs, last);
    assert_complete(&msgs, last, &lookout.log());
    assert!(msgs.iter().any(|(_, v, _)| v["replayed"] == true), "results from the freeze are marked replayed");
}

#[test]
fn lookout_killed_during_an_outage_resumes_from_its_outbox() {
    let mut broker = Broker::start_persistent();
    let sub = Listener::persistent_saved(broker.port, &result_topic(), "test-killed-lookout");
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), broker.port, "");
    let mut first = Daemon::start(&cfg, &[]);
    let msgs = sub.until(MIN * 2, |m| received(m).len() >= 2);
    assert!(received(&msgs).len() >= 2, "{}", first.log());

    broker.kill();
    let n = first.seqs().len();
    // Long enough for the results of the outage to be committed (1 s batches).
    first.wait_results(n + 5, MIN);
    std::thread::sleep(Duration::from_millis(1500));
    first.kill9();
    let first_seqs = first.seqs();

    let mut second = Daemon::start(&cfg, &[]);
    second.wait_results(3, MIN * 2);
    let resumed_at = second.seqs()[0];
    assert!(resumed_at > 0, "the second run continues the counter");
    assert!(
        resumed_at <= first_seqs.last().unwrap() + 1,
        "no gap: the second run starts at or before the first's next seq"
    );
    assert!(second.log().contains("from earlier runs wait for the broker"), "{}", second.log());
    broker.restart();
    second.wait_for("connected to", MIN);
    let n = second.seqs().len();
    second.wait_results(n + 3, MIN);
    assert_eq!(second.terminate(MIN), Some(0), "{}", second.log());
    let last = *second.seqs().last().unwrap();
    let msgs = collect_through(&sub, msgs, last);
    assert_complete(&msgs, last, &format!("{}\n---- second run ----\n{}", first.log(), second.log()));
}

#[test]
fn availability_state_last_will_and_discovery() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), broker.port, "");
    let results = Listener::new(broker.port, &result_topic());
    let mut lookout = Daemon::start(&cfg, &[]);
    let got = results.until(MIN * 2, |m| received(m).len() >= 3);
    assert!(received(&got).len() >= 3, "{}", lookout.log());
    std::thread::sleep(Duration::from_millis(1500));

    // A subscriber that starts late sees the retained topics at once.
    let late = Listener::new(broker.port, &format!("lookout/{DEVICE}/#"));
    let retained = late.until(Duration::from_secs(5), |m| m.iter().filter(|(_, _, r)| *r).count() >= 5);
    let get = |suffix: &str| {
        retained
            .iter()
            .find(|(t, _, r)| *r && t.ends_with(suffix))
            .map(|(_, v, _)| v.clone())
            .unwrap_or_else(|| panic!("no retained {suffix} in {retained:?}"))
    };
    assert_eq!(get("/availability"), Value::String("online".into()));
    let state = get("/main/state");
    assert!(state["seq"].as_u64().is_some() && state["label"].is_string() && state["health"] == "ok", "{state}");
    assert_eq!(state["view"], "main");
    assert_eq!(state["top_k"].as_array().unwrap().len(), 5);
    assert_eq!(get("/main/health"), Value::String("ok".into()));
    assert_eq!(get("/main/control"), serde_json::json!({"paused": false, "interval": 0.1}));
    let diag = get("/diagnostics");
    assert_eq!(diag["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(diag["mqtt"]["connected"], true);
    assert!(diag["frames"]["classified"].as_u64().unwrap() >= 1, "{diag}");
    assert!(diag["outbox"]["depth"].is_u64() && diag["outbox"]["dropped"] == 0, "{diag}");
    assert!(diag["latency_ms"]["inference"].as_f64().unwrap() > 0.0, "{diag}");
    assert_eq!(diag["sources"], serde_json::json!({"main": "ok"}));

    // Discovery, field by field: one camera, one device.
    let disc_topic = format!("homeassistant/device/{DEVICE}/config");
    let ha = Listener::new(broker.port, &disc_topic);
    let disc = ha.until(Duration::from_secs(5), |m| !m.is_empty());
    assert_eq!(disc.len(), 1, "one retained discovery config");
    let d = &disc[0].1;
    assert!(disc[0].2, "retained");
    assert_eq!(d["dev"]["identifiers"], serde_json::json!([format!("lookout_{DEVICE}")]));
    assert_eq!(d["dev"]["name"], "Fault test");
    assert_eq!(d["dev"]["model"], "digits-int8");
    assert_eq!(d["o"]["name"], "lookout");
    assert_eq!(d["o"]["sw"], env!("CARGO_PKG_VERSION"));
    let cmps = d["cmps"].as_object().unwrap();
    let keys: BTreeSet<&str> = cmps.keys().map(String::as_str).collect();
    let expected = [
        ("main_label", "sensor", "main_label"),
        ("main_confidence", "sensor", "main_confidence"),
        ("main_health", "sensor", "main_health"),
        ("main_camera", "binary_sensor", "main_camera"),
        ("main_classify", "button", "main_classify"),
        ("main_running", "switch", "main_running"),
        ("main_interval", "number", "main_interval"),
        ("latency", "sensor", "latency"),
        ("outbox", "sensor", "outbox"),
        ("temperature", "sensor", "temperature"),
        ("mqtt_error", "sensor", "mqtt_error"),
        ("throttled", "binary_sensor", "throttled"),
    ];
    assert_eq!(keys, expected.iter().map(|(k, _, _)| *k).collect());
    let avail = format!("lookout/{DEVICE}/availability");
    for (key, platform, unique) in expected {
        let c = &cmps[key];
        assert_eq!(c["p"], platform, "{key}");
        assert_eq!(c["unique_id"], format!("lookout_{DEVICE}_{unique}"), "{key}");
        assert_eq!(c["availability"][0]["topic"], avail.as_str(), "{key}");
        assert_eq!(c["qos"], 1, "{key}");
    }
    let state_topic = format!("lookout/{DEVICE}/main/state");
    let diag_topic = format!("lookout/{DEVICE}/diagnostics");
    assert_eq!(cmps["main_label"]["state_topic"], state_topic.as_str());
    assert!(cmps["main_label"]["expire_after"].as_u64().unwrap() >= 60);
    assert!(cmps["main_label"]["json_attributes_template"].as_str().unwrap().contains("top_k"));
    assert_eq!(cmps["main_confidence"]["unit_of_measurement"], "%");
    assert_eq!(cmps["main_camera"]["device_class"], "problem");
    assert_eq!(cmps["main_camera"]["state_topic"], format!("lookout/{DEVICE}/main/health").as_str());
    assert!(cmps["main_camera"].get("expire_after").is_none(), "health is retained: it does not expire");
    assert_eq!(cmps["main_classify"]["command_topic"], format!("lookout/{DEVICE}/command").as_str());
    for key in ["latency", "outbox", "temperature"] {
        assert_eq!(cmps[key]["entity_category"], "diagnostic");
        assert_eq!(cmps[key]["state_topic"], diag_topic.as_str());
    }
    assert_eq!(cmps["temperature"]["device_class"], "temperature");

    // Home Assistant restarting: discovery is sent again.
    publish_once(broker.port, "homeassistant/status", "online", false);
    let again = ha.until(Duration::from_secs(10), |m| !m.is_empty());
    assert_eq!(again.len(), 1, "discovery again after homeassistant/status = online:\n{}", lookout.log());
    assert_eq!(again[0].1, *d);

    // SIGKILL: the broker publishes the last will.
    let availability = Listener::new(broker.port, &avail);
    let first = availability.until(Duration::from_secs(5), |m| !m.is_empty());
    assert_eq!(first[0].1, "online");
    lookout.kill9();
    let will = availability.until(Duration::from_secs(10), |m| !m.is_empty());
    assert_eq!(will.first().map(|m| &m.1), Some(&Value::String("offline".into())), "last will");

    // Back online; SIGTERM publishes offline itself and exits 0.
    let mut lookout = Daemon::start(&cfg, &[]);
    let online = availability.until(MIN * 2, |m| !m.is_empty());
    assert_eq!(online.first().map(|m| &m.1), Some(&Value::String("online".into())), "{}", lookout.log());
    lookout.wait_results(1, MIN);
    assert_eq!(lookout.terminate(MIN), Some(0), "{}", lookout.log());
    let offline = availability.until(Duration::from_secs(10), |m| !m.is_empty());
    assert_eq!(offline.first().map(|m| &m.1), Some(&Value::String("offline".into())), "{}", lookout.log());
    let late = Listener::new(broker.port, &avail);
    let retained = late.until(Duration::from_secs(5), |m| !m.is_empty());
    assert_eq!(retained.first().map(|m| (&m.1, m.2)), Some((&Value::String("offline".into()), true)));
}

fn diagnostics_file(dir: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("state/diagnostics.json")).unwrap_or_default())
        .unwrap_or(Value::Null)
}

/// Waits until the daemon's diagnostics file shows `failed` attempts.
fn wait_failures(dir: &Path, lookout: &Daemon, failed: u64) -> Value {
    let deadline = std::time::Instant::now() + MIN;
    loop {
        let d = diagnostics_file(dir);
        let attempts = d["mqtt"]["failed_attempts"].as_u64().unwrap_or(0);
        if attempts >= failed {
            // Backoff: reconnect_min = 0.2 s allows at most 5 attempts a
            // second (rumqttc alone made 126,300 in 3 s; FACTS.md).
            let uptime = d["uptime_s"].as_u64().unwrap();
            assert!(attempts <= 5 * (uptime + 1), "{attempts} attempts in {uptime} s: no backoff? {d}");
            return d;
        }
        assert!(std::time::Instant::now() < deadline, "diagnostics {d}; log:\n{}", lookout.log());
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_wrong_password_is_reported_and_retried_and_the_right_one_from_a_credential_works() {
    let broker = Broker::start_with(|dir, port| {
        let passwd = dir.join("passwd");
        let ok = Command::new("mosquitto_passwd").arg("-b").arg("-c").arg(&passwd).args(["cam", "right-one"]).status();
        assert!(ok.unwrap().success(), "mosquitto_passwd");
        format!("listener {port} 127.0.0.1\nallow_anonymous false\npassword_file {}\n", passwd.display())
    });
    let wrong_dir = tempfile::tempdir().unwrap();
    let creds = tempfile::tempdir().unwrap();
    std::fs::write(creds.path().join("mqtt-password"), "wrong-one\n").unwrap();
    let extra = "username = \"cam\"\npassword_credential = \"mqtt-password\"";
    let env_creds =
        [("CREDENTIALS_DIRECTORY", creds.path().to_str().unwrap()), ("RUST_LOG", "info,lookout=debug,rumqttc=debug")];
    let mut wrong = Daemon::start(&config(wrong_dir.path(), broker.port, extra), &env_creds);
    let d = wait_failures(wrong_dir.path(), &wrong, 3);
    let err = d["mqtt"]["last_error"].as_str().unwrap();
    assert!(err.contains("not authorized") && err.contains("mqtt.username"), "{err}");
    assert!(wrong.log().contains("refused the connection: not authorized"), "{}", wrong.log());
    assert!(wrong.is_running(), "a refused login is retried, not fatal");
    wrong.wait_results(2, MIN);
    assert_eq!(wrong.terminate(MIN), Some(0));
    assert!(!wrong.log().contains("wrong-one"), "the password is never logged");

    // The same config with the right credential connects and publishes.
    std::fs::write(creds.path().join("mqtt-password"), "right-one\n").unwrap();
    let mut right = Daemon::start(&config(wrong_dir.path(), broker.port, extra), &env_creds);
    right.wait_for("MQTT: connected to", MIN * 2);
    right.wait_results(2, MIN);
    assert_eq!(right.terminate(MIN), Some(0), "{}", right.log());
    assert!(!right.log().contains("right-one"), "the password is never logged");
    let d = diagnostics_file(wrong_dir.path());
    assert_eq!(d["mqtt"]["last_error"], Value::Null, "{d}");
    assert!(d["mqtt"]["connects"].as_u64().unwrap() >= 1, "{d}");
}

fn openssl(dir: &Path, args: &str) {
    let out = Command::new("openssl").current_dir(dir).args(args.split_whitespace()).output().expect("openssl CLI");
    assert!(out.status.success(), "openssl {args}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A CA, a server and a client certificate it signed, and an unrelated CA.
fn certificates(dir: &Path) {
    let ec = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
    openssl(dir, &format!("req -x509 {ec} -keyout ca.key -out ca.pem -days 2 -subj /CN=lookout-test-ca"));
    openssl(dir, &format!("req -x509 {ec} -keyout other.key -out other-ca.pem -days 2 -subj /CN=someone-else"));
    openssl(dir, &format!("req {ec} -keyout server.key -out server.csr -subj /CN=localhost"));
    std::fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1,DNS:localhost\n").unwrap();
    openssl(
        dir,
        "x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem -days 2 -extfile san.ext",
    );
    openssl(dir, &format!("req {ec} -keyout client.key -out client.csr -subj /CN=lookout-camera"));
    // An extension makes it X.509 v3; webpki refuses v1 certificates.
    std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
    openssl(
        dir,
        "x509 -req -in client.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out client.pem -days 2 -extfile client.ext",
    );
}

#[test]
fn tls_with_the_right_ca_or_a_client_certificate_publishes_and_an_unknown_ca_is_reported_and_retried() {
    let certs = tempfile::tempdir().unwrap();
    certificates(certs.path());
    let (mut tls_port, mut mtls_port) = (0, 0);
    let broker = Broker::start_with(|_, port| {
        (tls_port, mtls_port) = (free_port(), free_port());
        let c = certs.path();
        let files = format!(
            "cafile {}\ncertfile {}\nkeyfile {}\n",
            c.join("ca.pem").display(),
            c.join("server.pem").display(),
            c.join("server.key").display()
        );
        format!(
            "per_listener_settings false\nallow_anonymous true\nlistener {port} 127.0.0.1\n\
             listener {tls_port} 127.0.0.1\n{files}\
             listener {mtls_port} 127.0.0.1\n{files}require_certificate true\n"
        )
    });
    let sub = Listener::new(broker.port, &result_topic());
    let good_dir = tempfile::tempdir().unwrap();
    let good_extra = format!("tls = true\nca_file = \"{}\"", certs.path().join("ca.pem").display());
    let mut good = Daemon::start(&config(good_dir.path(), tls_port, &good_extra), &[]);
    let bad_dir = tempfile::tempdir().unwrap();
    let bad_extra = format!(
        "client_id = \"lookout-bad-ca\"\ntls = true\nca_file = \"{}\"",
        certs.path().join("other-ca.pem").display()
    );
    let mut bad = Daemon::start(&config(bad_dir.path(), tls_port, &bad_extra), &[]);
    // A listener that wants client certificates.
    let mtls_dir = tempfile::tempdir().unwrap();
    let c = certs.path();
    let mtls_extra = format!(
        "client_id = \"lookout-mtls\"\ntls = true\nca_file = \"{}\"\nclient_cert = \"{}\"\nclient_key = \"{}\"",
        c.join("ca.pem").display(),
        c.join("client.pem").display(),
        c.join("client.key").display()
    );
    let mut mtls = Daemon::start(&config(mtls_dir.path(), mtls_port, &mtls_extra), &[]);

    let got = sub.until(MIN * 2, |m| received(m).len() >= 3);
    assert!(received(&got).len() >= 3, "results over TLS:\n{}", good.log());

    let d = wait_failures(bad_dir.path(), &bad, 3);
    let err = d["mqtt"]["last_error"].as_str().unwrap();
    assert!(err.contains("TLS handshake failed") && err.contains("mqtt.ca_file"), "{err}");
    assert!(bad.log().contains("TLS handshake failed"), "{}", bad.log());
    assert!(bad.is_running(), "an untrusted broker is retried, not fatal");
    assert_eq!(bad.terminate(MIN), Some(0), "{}", bad.log());
    assert_eq!(good.terminate(MIN), Some(0), "{}", good.log());
    mtls.wait_for("MQTT: connected to", MIN);
    mtls.wait_results(2, MIN);
    assert_eq!(mtls.terminate(MIN), Some(0), "{}", mtls.log());
    let d = diagnostics_file(mtls_dir.path());
    assert!(d["mqtt"]["connects"].as_u64().unwrap() >= 1 && d["mqtt"]["last_error"].is_null(), "{d}");
}

#[test]
fn an_unusable_state_dir_is_a_config_error() {
    let broker_port = free_port();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a-file"), "").unwrap();
    let cfg = config(dir.path(), broker_port, "");
    let text = std::fs::read_to_string(&cfg).unwrap().replace("state_dir = \"state\"", "state_dir = \"a-file/state\"");
    std::fs::write(&cfg, text).unwrap();
    let mut cmd = lookout();
    cmd.arg("run").arg("--config").arg(&cfg);
    let out = run_with_timeout(cmd, MIN * 2);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{err}");
    let line = err.lines().find(|l| l.starts_with("lookout: error:")).unwrap_or_default();
    assert!(line.contains("a-file/state") && line.contains("cannot use the state directory"), "{line}");
}
