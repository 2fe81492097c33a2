//! Test harness: a real Mosquitto on a free loopback port, an MQTT
//! subscriber, and helpers to run the built binary.
#![allow(dead_code)]

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use rumqttc::{Client, Connection, Event, MqttOptions, Packet, QoS};

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn lookout() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_lookout"));
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
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// An MQTT subscriber that is subscribed when `new` returns.
pub struct Subscriber {
    _client: Client,
    conn: Connection,
}

impl Subscriber {
    pub fn new(port: u16, topic: &str) -> Subscriber {
        let mut opts = MqttOptions::new(format!("test-sub-{}", free_port()), "127.0.0.1", port);
        // Nobody polls the connection while a test waits for the binary (tens
        // of seconds on a loaded machine); a short keep-alive lets the broker
        // drop the silent subscriber and its messages with it.
        opts.set_keep_alive(Duration::from_secs(300));
        opts.set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut conn) = Client::new(opts, 100);
        client.subscribe(topic, QoS::AtLeastOnce).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            assert!(Instant::now() < deadline, "no SUBACK from the broker");
            if let Ok(Ok(Event::Incoming(Packet::SubAck(_)))) = conn.recv_timeout(Duration::from_millis(500)) {
                break;
            }
        }
        Subscriber { _client: client, conn }
    }

    /// Collects (topic, payload) pairs until `n` arrived or `limit` passed.
    pub fn collect(&mut self, n: usize, limit: Duration) -> Vec<(String, serde_json::Value)> {
        let deadline = Instant::now() + limit;
        let mut got = vec![];
        while got.len() < n && Instant::now() < deadline {
            if let Ok(Ok(Event::Incoming(Packet::Publish(p)))) = self.conn.recv_timeout(Duration::from_millis(200)) {
                let v = serde_json::from_slice(&p.payload)
                    .unwrap_or(serde_json::Value::String(String::from_utf8_lossy(&p.payload).into()));
                got.push((p.topic.clone(), v));
            }
        }
        got
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
        "[device]\nid = \"e2e\"\n\n[source]\nkind = \"files\"\npath = \"{}\"\n\n[model]\npath = \"{}\"\n\n\
         [mqtt]\nhost = \"127.0.0.1\"\nport = {port}\nreconnect_min = 0.1\nreconnect_max = 0.5\n\n\
         [schedule]\ninterval = 0.05\n{extra}",
        frames.display(),
        models.join(model).display(),
    )
}
