//! Test harness: a real Mosquitto on a free loopback port, an MQTT
//! subscriber, and helpers to run the built binary.

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use rumqttc::{Client, Event, MqttOptions, Packet, QoS};

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The binary under test; `LOOKOUT_BIN` points the tests at another build
/// (the soak runs the release binary from a debug test harness).
pub fn lookout() -> Command {
    let bin = std::env::var_os("LOOKOUT_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_lookout").into());
    let mut c = Command::new(bin);
    c.env("RUST_LOG", "info");
    c
}

/// Runs the binary to completion with a time limit.
pub fn run_with_timeout(mut cmd: Command, limit: Duration) -> Output {
    let child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn lookout");
    let pid = child.id();
    let watchdog = std::thread::spawn(move || {
        std::thread::sleep(limit);
        let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
    });
    let out = child.wait_with_output().expect("wait for lookout");
    drop(watchdog);
    out
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

pub struct Broker {
    pub port: u16,
    child: Option<Child>,
    _dir: tempfile::TempDir,
    conf: PathBuf,
}

fn mosquitto_bin() -> PathBuf {
    for p in ["/usr/sbin/mosquitto", "/usr/bin/mosquitto", "/usr/local/sbin/mosquitto"] {
        if Path::new(p).exists() {
            return p.into();
        }
    }
    panic!("mosquitto is not installed: run tools/test.sh, which installs it")
}

impl Broker {
    pub fn start() -> Broker {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let conf = dir.path().join("mosquitto.conf");
        let mut f = std::fs::File::create(&conf).unwrap();
        writeln!(f, "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false").unwrap();
        let mut b = Broker { port, child: None, _dir: dir, conf };
        b.restart();
        b
    }

    /// Starts (again) on the same port.
    pub fn restart(&mut self) {
        let child = Command::new(mosquitto_bin())
            .arg("-c")
            .arg(&self.conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start mosquitto");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "mosquitto did not listen on {}", self.port);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stops Mosquitto with SIGTERM: it writes its persistence file (the
    /// sessions of persistent subscribers) before exiting, which its
    /// once-a-second autosave does not promise under load.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill").arg("-TERM").arg(c.id().to_string()).status();
            let _ = c.wait();
        }
    }
}

/// How often a `start_persistent` broker saves its state.
pub const AUTOSAVE: Duration = Duration::from_secs(1);

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// An MQTT subscriber that is subscribed when `new` returns. A thread polls
/// it meanwhile: unpolled, it sends no pings and the broker drops it after
/// 1.5 keep-alive periods, which a slow model load under load exceeds.
pub struct Subscriber {
    inner: Listener,
}

impl Subscriber {
    pub fn new(port: u16, topic: &str) -> Subscriber {
        Subscriber { inner: Listener::new(port, topic) }
    }

    /// Collects (topic, payload) pairs until `n` arrived or `limit` passed.
    pub fn collect(&mut self, n: usize, limit: Duration) -> Vec<(String, serde_json::Value)> {
        self.inner.until(limit, |m| m.len() >= n).into_iter().map(|(t, v, _)| (t, v)).collect()
    }
}

/// Writes a config file into `dir` and returns its path.
pub fn write_config(dir: &Path, text: &str) -> PathBuf {
    let p = dir.join("lookout.toml");
    std::fs::write(&p, text).unwrap();
    p
}

/// A config for the bundled digits model replaying `frames`.
pub fn digits_config(frames: &Path, model: &str, port: u16, extra: &str) -> String {
    let models = root().join("models/digits");
    format!(
        "[device]\nid = \"e2e\"\nstate_dir = \"state\"\n\n[source]\nkind = \"files\"\npath = \"{}\"\n\n[model]\npath = \"{}\"\n\n\
         [mqtt]\nhost = \"127.0.0.1\"\nport = {port}\nreconnect_min = 0.1\nreconnect_max = 0.5\n\n\
         [schedule]\ninterval = 0.05\n{extra}",
        frames.display(),
        models.join(model).display(),
    )
}

// ---- for the MQTT fault tests (tests/mqtt.rs) ------------------------------

impl Broker {
    /// A broker started from the given config (listeners, TLS, passwords),
    /// in its own folder; `port` is the plain listener's. Started as root,
    /// Mosquitto would switch to the `mosquitto` user and then fail to read
    /// the test's keys and write its persistence file: `user root` keeps it
    /// (and has no effect for other users).
    pub fn start_with(extra: impl FnOnce(&Path, u16) -> String) -> Broker {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let conf = dir.path().join("mosquitto.conf");
        let text = format!("user root\n{}", extra(dir.path(), port));
        std::fs::write(&conf, text).unwrap();
        let mut b = Broker { port, child: None, _dir: dir, conf };
        b.restart();
        b
    }

    /// Persistence on, saved every second ([`AUTOSAVE`]), so a subscriber's
    /// session survives a SIGKILL of the broker that comes later than that
    /// ([`Listener::persistent_saved`]); no queue limit for offline
    /// persistent subscribers. (Saving after every change instead made the
    /// broker write its whole database per message: a few hundred results
    /// a second then outran it.)
    pub fn start_persistent() -> Broker {
        const _: () = assert!(AUTOSAVE.as_secs() == 1, "the config below says 1");
        Broker::start_with(|dir, port| {
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\npersistence_location {}/\n\
                 autosave_interval 1\nmax_queued_messages 0\nmax_inflight_messages 0\n",
                dir.display()
            )
        })
    }

    /// SIGSTOP: the process stays, its sockets stay open, nothing answers.
    pub fn freeze(&self) {
        self.signal("-STOP");
    }

    pub fn thaw(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().expect("broker running").id();
        assert!(Command::new("kill").arg(sig).arg(pid.to_string()).status().unwrap().success());
    }
}

/// An MQTT subscriber polled by a thread of its own, so the broker never
/// drops it for missing pings while the test waits. `persistent` keeps its
/// session (clean_session = false) across broker outages and subscribes
/// again when the broker forgot it.
pub struct Listener {
    rx: std::sync::mpsc::Receiver<(String, serde_json::Value, bool)>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Listener {
    pub fn new(port: u16, topic: &str) -> Listener {
        Listener::start(port, topic, &format!("test-sub-{}", free_port()), false)
    }

    pub fn persistent(port: u16, topic: &str, client_id: &str) -> Listener {
        Listener::start(port, topic, client_id, true)
    }

    /// A persistent subscriber whose session a `start_persistent` broker
    /// has written to disk by the time this returns, so that it survives
    /// `Broker::kill`.
    pub fn persistent_saved(port: u16, topic: &str, client_id: &str) -> Listener {
        let l = Listener::persistent(port, topic, client_id);
        std::thread::sleep(AUTOSAVE * 2);
        l
    }

    fn start(port: u16, topic: &str, client_id: &str, persistent: bool) -> Listener {
        use std::sync::atomic::{AtomicBool, Ordering};
        let mut opts = MqttOptions::new(client_id, "127.0.0.1", port);
        opts.set_keep_alive(Duration::from_secs(5));
        opts.set_max_packet_size(1 << 20, 1 << 20);
        opts.set_clean_session(!persistent);
        let (client, mut conn) = Client::new(opts, 100);
        let (tx, rx) = std::sync::mpsc::channel();
        let (subscribed_tx, subscribed_rx) = std::sync::mpsc::channel();
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let (topic, halt) = (topic.to_owned(), stop.clone());
        std::thread::spawn(move || {
            while !halt.load(Ordering::SeqCst) {
                match conn.recv_timeout(Duration::from_millis(200)) {
                    Ok(Ok(Event::Incoming(Packet::ConnAck(a)))) if !a.session_present => {
                        client.subscribe(&topic, QoS::AtLeastOnce).unwrap();
                    }
                    Ok(Ok(Event::Incoming(Packet::SubAck(_)))) => {
                        let _ = subscribed_tx.send(());
                    }
                    Ok(Ok(Event::Incoming(Packet::Publish(p)))) => {
                        let v = serde_json::from_slice(&p.payload)
                            .unwrap_or(serde_json::Value::String(String::from_utf8_lossy(&p.payload).into()));
                        if tx.send((p.topic.clone(), v, p.retain)).is_err() {
                            return;
                        }
                    }
                    Ok(Err(_)) => std::thread::sleep(Duration::from_millis(200)),
                    _ => {}
                }
            }
        });
        subscribed_rx.recv_timeout(Duration::from_secs(30)).expect("no SUBACK from the broker");
        Listener { rx, stop }
    }

    /// Messages until `done` says so or `limit` passes: (topic, payload, retain).
    pub fn until(
        &self,
        limit: Duration,
        mut done: impl FnMut(&[(String, serde_json::Value, bool)]) -> bool,
    ) -> Vec<(String, serde_json::Value, bool)> {
        let deadline = Instant::now() + limit;
        let mut got = vec![];
        while !done(&got) && Instant::now() < deadline {
            if let Ok(m) = self.rx.recv_timeout(Duration::from_millis(100)) {
                got.push(m);
            }
        }
        got
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Publishes one message and waits until it was written.
pub fn publish_once(port: u16, topic: &str, payload: &str, retain: bool) {
    let opts = MqttOptions::new(format!("test-pub-{}", free_port()), "127.0.0.1", port);
    let (client, mut conn) = Client::new(opts, 10);
    client.publish(topic, QoS::AtLeastOnce, retain, payload.as_bytes().to_vec()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Ok(Event::Incoming(Packet::PubAck(_)))) = conn.recv_timeout(Duration::from_millis(200)) {
            return;
        }
    }
    panic!("no PUBACK for the test publish on {topic}");
}

/// `lookout run` in the background, its log in a file.
pub struct Daemon {
    child: Child,
    log: PathBuf,
}

impl Daemon {
    pub fn start(config: &Path, env: &[(&str, &str)]) -> Daemon {
        let log = config.with_extension(format!("{}.log", free_port()));
        let mut cmd = lookout();
        cmd.arg("run").arg("--config").arg(config).envs(env.iter().copied());
        let child =
            cmd.stdout(Stdio::null()).stderr(std::fs::File::create(&log).unwrap()).spawn().expect("spawn lookout");
        Daemon { child, log }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The `seq` of every result the daemon logged.
    pub fn seqs(&self) -> Vec<u64> {
        self.log()
            .lines()
            .filter_map(|l| l.split("lookout::daemon] result ").nth(1))
            .filter_map(|r| r.split(' ').next()?.parse().ok())
            .collect()
    }

    /// Waits until the log contains `text`; panics with the log otherwise.
    pub fn wait_for(&self, text: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        while !self.log().contains(text) {
            assert!(Instant::now() < deadline, "no {text:?} within {limit:?} in:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until the daemon logged at least `n` results.
    pub fn wait_results(&self, n: usize, limit: Duration) {
        let deadline = Instant::now() + limit;
        while self.seqs().len() < n {
            assert!(Instant::now() < deadline, "fewer than {n} results within {limit:?}:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then the exit code (None: killed by a signal or too slow).
    pub fn terminate(&mut self, limit: Duration) -> Option<i32> {
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        let deadline = Instant::now() + limit;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s.code();
            }
            if Instant::now() > deadline {
                self.kill9();
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.is_running() {
            self.kill9();
        }
    }
}

/// The model's logits for one image file, through the real decode and
/// preprocessing path.
pub fn logits_of(
    c: &mut dyn lookout::model::Classifier,
    pre: &mut lookout::preprocess::Preprocessor,
    file: &str,
) -> Vec<f32> {
    let data = std::fs::read(Path::new(file)).unwrap();
    let frame = lookout::frame::Frame::encoded(0, data, file);
    pre.run(&frame, c.input_mut()).unwrap();
    c.infer().unwrap()
}

pub fn argmax(v: &[f32]) -> usize {
    (0..v.len()).fold(0, |best, i| if v[i] > v[best] { i } else { best })
}
