//! Frames from a program's stdout: an MJPEG stream (concatenated JPEGs).
//!
//! This is how lookout reads cameras that plain V4L2 cannot: Raspberry Pi
//! CSI cameras (`rpicam-vid --codec mjpeg -o -`), Jetson CSI cameras
//! (`gst-launch-1.0 nvarguscamerasrc ! ... ! jpegenc ! fdsink`) and RTSP
//! cameras (`ffmpeg ... -f mjpeg -`). The supervisor restarts the program
//! with backoff when it exits or stops sending frames.

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

use log::{debug, warn};

use super::mjpeg::Splitter;
use super::supervisor::{Connector, Feed};
use super::CaptureError;
use crate::frame::Frame;

pub struct CommandConnector {
    /// Program and arguments, run without a shell; `${credential:..}` and
    /// the like are expanded at each start ([`crate::secret::expand`]).
    argv: Vec<String>,
    /// Where relative `${file:..}` references start.
    base: PathBuf,
    /// The current connection's child, killed when the next one starts or on
    /// drop. One slot per connection, so the reader of an old connection
    /// can never reap or kill a newer child.
    child: Option<Arc<Mutex<Option<Child>>>>,
    name: String,
}

impl CommandConnector {
    pub fn new(argv: Vec<String>, base: PathBuf) -> CommandConnector {
        let name = format!("command:{}", argv.first().map_or("", String::as_str));
        CommandConnector { argv, base, child: None, name }
    }
}

fn kill(child: &Mutex<Option<Child>>) {
    if let Some(mut c) = child.lock().unwrap_or_else(|e| e.into_inner()).take() {
        let _ = c.kill();
        let _ = c.wait();
    }
}

impl Connector for CommandConnector {
    fn connect(&mut self, feed: Feed) -> Result<(), CaptureError> {
        if let Some(old) = self.child.take() {
            kill(&old);
        }
        let mut secrets = vec![];
        let mut argv = Vec::with_capacity(self.argv.len());
        for a in &self.argv {
            let (arg, found) = crate::secret::expand(a, &self.base, "source.command")
                .map_err(|e| CaptureError::Open { source_name: self.name.clone(), reason: e.to_string() })?;
            argv.push(arg);
            secrets.extend(found);
        }
        let (program, args) = argv.split_first().expect("config validation: command is non-empty");
        let mut command = Command::new(program);
        command.args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        // A lookout killed outside systemd (SIGKILL, the OOM killer) would
        // leave the program running, holding the camera the next lookout
        // opens ("camera in use"). The kernel sends the signal when the
        // thread that spawned it ends: the source's own thread, which
        // lives as long as this connector.
        // SAFETY: prctl is async-signal-safe and touches no memory.
        unsafe {
            use std::os::unix::process::CommandExt;
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut child = command.spawn().map_err(|e| CaptureError::Open {
            source_name: self.name.clone(),
            reason: match e.kind() {
                std::io::ErrorKind::NotFound => {
                    format!("{program}: command not found (install it or give its full path)")
                }
                std::io::ErrorKind::PermissionDenied => format!("{program}: permission denied (not executable?)"),
                _ => format!("{program}: {e}"),
            },
        })?;
        let stdout = child.stdout.take().expect("piped");
        let stderr = child.stderr.take().expect("piped");
        let child = Arc::new(Mutex::new(Some(child)));
        self.child = Some(child.clone());

        // The child's own complaints are the best explanation of an exit:
        // log them, and keep the last line for the error.
        let last_err = Arc::new(Mutex::new(String::new()));
        let stderr_reader = {
            let (name, last_err) = (self.name.clone(), last_err.clone());
            std::thread::Builder::new()
                .name("command-stderr".into())
                .spawn(move || {
                    for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                        // Programs quote their URLs in errors: not the passwords.
                        let line = crate::secret::scrub(&line, &secrets);
                        debug!("{name}: {line}");
                        if !line.trim().is_empty() {
                            *last_err.lock().unwrap_or_else(|e| e.into_inner()) = line;
                        }
                    }
                })
                .map_err(|e| CaptureError::Open { source_name: self.name.clone(), reason: e.to_string() })?
        };
        let name = self.name.clone();
        std::thread::Builder::new()
            .name("command-stdout".into())
            .spawn(move || read_stream(stdout, &name, &feed, &child, &last_err, Some(stderr_reader)))
            .map_err(|e| CaptureError::Open { source_name: self.name.clone(), reason: e.to_string() })?;
        Ok(())
    }

    fn name(&self) -> String {
        self.name.clone()
    }
}

impl Drop for CommandConnector {
    fn drop(&mut self) {
        if let Some(c) = self.child.take() {
            kill(&c);
        }
    }
}

fn read_stream(
    mut stdout: impl Read,
    name: &str,
    feed: &Feed,
    child: &Mutex<Option<Child>>,
    last_err: &Mutex<String>,
    stderr_reader: Option<std::thread::JoinHandle<()>>,
) {
    let mut splitter = Splitter::default();
    let mut buf = vec![0u8; 64 << 10];
    let mut frames = 0u64;
    loop {
        if feed.is_closed() {
            return;
        }
        let n = match stdout.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                feed.fail(CaptureError::Read { origin: name.into(), reason: e.to_string() });
                return;
            }
        };
        splitter.push(&buf[..n]);
        while let Some(r) = splitter.next_frame() {
            match r {
                Ok(data) => {
                    frames += 1;
                    feed.push(Frame::encoded(0, data, name));
                }
                Err(reason) => warn!("{name}: corrupt JPEG in the stream dropped: {reason}"),
            }
        }
    }
    // EOF: the program exited or closed its stdout. Reap it for its status;
    // one that lingers without output is killed so the next start is clean.
    let status = child.lock().unwrap_or_else(|e| e.into_inner()).take().map(|mut c| {
        for _ in 0..20 {
            if let Ok(Some(s)) = c.try_wait() {
                return s.to_string();
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let _ = c.kill();
        let _ = c.wait();
        "killed: it closed its output but kept running".to_string()
    });
    let status = status.unwrap_or_else(|| "stopped".into());
    if let Some(t) = stderr_reader {
        let _ = t.join();
    }
    let last = last_err.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let said = if last.is_empty() { String::new() } else { format!("; it said: {last}") };
    let hint = if frames == 0 {
        " without sending a JPEG frame (check the command and that it writes MJPEG to stdout)"
    } else {
        ""
    };
    feed.fail(CaptureError::Read { origin: name.into(), reason: format!("the program exited ({status}){hint}{said}") });
}
