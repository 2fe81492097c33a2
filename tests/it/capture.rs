//! Live sources against real things: child processes writing MJPEG, an HTTP
//! server on 127.0.0.1, the built binary listing cameras, and nokhwa's
//! buffers built from fixture bytes (no camera exists on these machines).

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lookout::capture::SourceConfig;
use lookout::capture::{self, CaptureError, FrameSource};
use lookout::frame::PixelFormat;

fn sample(name: &str) -> PathBuf {
    crate::common::root().join("models/digits/samples").join(name)
}

#[derive(Debug, Clone, PartialEq)]
enum Event {
    /// A frame, named by the sample it equals.
    Frame(String),
    Error(String),
}

/// Drives a source as the daemon's capture loop does (waiting out
/// `NotYet`) until `n` events or `limit`.
fn events(src: &mut dyn FrameSource, n: usize, limit: Duration) -> (Vec<Event>, Vec<u64>) {
    let names = ["0-zero.jpg", "1-one.jpg", "7-seven.jpg"];
    let files: Vec<Vec<u8>> = names.iter().map(|n| std::fs::read(sample(n)).unwrap()).collect();
    let deadline = Instant::now() + limit;
    let (mut out, mut seqs) = (vec![], vec![]);
    while out.len() < n && Instant::now() < deadline {
        match src.next_frame() {
            Ok(Some(f)) => {
                assert_eq!(f.format, PixelFormat::Encoded);
                let i = files.iter().position(|d| *d == f.data).expect("a frame equal to a sample");
                seqs.push(f.seq);
                out.push(Event::Frame(names[i].into()));
            }
            Ok(None) => panic!("a live source never ends"),
            Err(CaptureError::NotYet { wait }) => std::thread::sleep(wait),
            Err(e) => out.push(Event::Error(e.to_string())),
        }
    }
    (out, seqs)
}

fn command(script: &str) -> Box<dyn FrameSource> {
    let cfg = SourceConfig::Command {
        base: PathBuf::from("/"),
        command: vec!["sh".into(), "-c".into(), script.into(), "sh".into(), sample("").display().to_string()],
        frame_timeout: Duration::from_secs(5),
        reconnect_min: Duration::from_millis(50),
        reconnect_max: Duration::from_millis(200),
    };
    capture::open(&cfg).unwrap()
}

#[test]
fn command_source_splits_the_stream_and_restarts_the_program() {
    // Two frames, a pause so neither overwrites the other, then exit 3.
    let mut src = command(r#"cat "$1/0-zero.jpg"; sleep 0.2; cat "$1/1-one.jpg"; echo "bye" >&2; exit 3"#);
    assert!(src.is_live());
    let (got, seqs) = events(src.as_mut(), 6, Duration::from_secs(20));
    let exited =
        |e: &Event| matches!(e, Event::Error(m) if m.contains("the program exited (exit status: 3); it said: bye"));
    assert_eq!(got[0], Event::Frame("0-zero.jpg".into()));
    assert_eq!(got[1], Event::Frame("1-one.jpg".into()));
    assert!(exited(&got[2]), "{:?}", got[2]);
    assert_eq!(got[3], Event::Frame("0-zero.jpg".into()), "restarted: {got:?}");
    assert_eq!(got[4], Event::Frame("1-one.jpg".into()));
    assert!(exited(&got[5]), "{:?}", got[5]);
    assert_eq!(seqs, vec![0, 1, 2, 3], "sequence numbers continue across restarts");
}

#[test]
fn a_truncated_jpeg_in_the_stream_is_dropped_and_the_next_one_kept() {
    // Cut inside a Huffman table (header), then inside the entropy data:
    // the writer died mid-frame twice. The frames after each survive.
    let mut src = command(
        r#"head -c 300 "$1/7-seven.jpg"; cat "$1/1-one.jpg"; sleep 0.3; head -c 1500 "$1/7-seven.jpg"; cat "$1/0-zero.jpg"; sleep 5"#,
    );
    let (got, _) = events(src.as_mut(), 2, Duration::from_secs(10));
    assert_eq!(got, vec![Event::Frame("1-one.jpg".into()), Event::Frame("0-zero.jpg".into())]);
}

#[test]
fn a_missing_program_or_one_that_exits_at_once_backs_off() {
    for (argv, expect) in [
        (vec!["lookout-no-such-program".to_string()], "lookout-no-such-program: command not found"),
        (vec!["sh".into(), "-c".into(), "echo 'no camera' >&2; exit 1".into()], "without sending a JPEG frame"),
    ] {
        let cfg = SourceConfig::Command {
            base: PathBuf::from("/"),
            command: argv,
            frame_timeout: Duration::from_secs(5),
            reconnect_min: Duration::from_millis(100),
            reconnect_max: Duration::from_millis(400),
        };
        let mut src = capture::open(&cfg).unwrap();
        // 1.5 s of failures: 100 + 200 + 400 + 400 ms ... is at most 6 tries.
        let (got, _) = events(src.as_mut(), usize::MAX, Duration::from_millis(1500));
        assert!(!got.is_empty() && got.len() <= 6, "{} attempts: {got:?}", got.len());
        for e in &got {
            assert!(matches!(e, Event::Error(m) if m.contains(expect)), "{e:?}");
        }
    }
}

#[test]
fn a_program_that_stops_sending_is_restarted_after_the_frame_timeout() {
    let cfg = SourceConfig::Command {
        base: PathBuf::from("/"),
        command: vec![
            "sh".into(),
            "-c".into(),
            r#"cat "$1/0-zero.jpg"; exec sleep 60"#.into(),
            "sh".into(),
            sample("").display().to_string(),
        ],
        frame_timeout: Duration::from_millis(300),
        reconnect_min: Duration::from_millis(50),
        reconnect_max: Duration::from_millis(50),
    };
    let mut src = capture::open(&cfg).unwrap();
    let (got, _) = events(src.as_mut(), 3, Duration::from_secs(20));
    assert_eq!(got[0], Event::Frame("0-zero.jpg".into()));
    assert!(matches!(&got[1], Event::Error(m) if m.contains("no frame for 0.3 s")), "{got:?}");
    assert_eq!(got[2], Event::Frame("0-zero.jpg".into()), "a new child, not the hung one");
}

/// A one-thread HTTP server: `/ok` a JPEG, `/auth` a JPEG for admin:s3cret
/// and 401 otherwise, `/hang` never answers, anything else 404.
fn http_server() -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let hits = Arc::new(AtomicUsize::new(0));
    let jpeg = std::fs::read(sample("7-seven.jpg")).unwrap();
    let counter = hits.clone();
    std::thread::spawn(move || {
        let mut hung: Vec<TcpStream> = vec![];
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            counter.fetch_add(1, Ordering::SeqCst);
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request = vec![];
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                request.push(line.trim().to_string());
            }
            let path = request.first().and_then(|l| l.split(' ').nth(1)).unwrap_or("").to_string();
            let authorized = request.iter().any(|l| l.eq_ignore_ascii_case("authorization: Basic YWRtaW46czNjcmV0"));
            let (status, body): (&str, &[u8]) = match path.as_str() {
                "/hang" => {
                    hung.push(stream);
                    continue;
                }
                "/ok" => ("200 OK", &jpeg),
                "/auth" if authorized => ("200 OK", &jpeg),
                "/auth" => ("401 Unauthorized", b"no"),
                "/html" => ("200 OK", b"<html>login</html>"),
                _ => ("404 Not Found", b"not here"),
            };
            let head = format!("HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
            let _ = stream.write_all(head.as_bytes()).and_then(|()| stream.write_all(body));
        }
    });
    (port, hits)
}

fn snapshot(port: u16, path: &str, user: Option<&str>, password: Option<&str>) -> Box<dyn FrameSource> {
    capture::open(&SourceConfig::Snapshot {
        url: format!("http://127.0.0.1:{port}{path}"),
        interval: Duration::from_millis(100),
        timeout: Duration::from_millis(500),
        username: user.map(String::from),
        password: password.map(|p| lookout::secret::SecretSource::Inline(p.into())),
        reconnect_max: Duration::from_millis(400),
    })
    .unwrap()
}

#[test]
fn snapshot_source_fetches_jpegs_at_its_interval() {
    let (port, hits) = http_server();
    let mut src = snapshot(port, "/ok", None, None);
    let t = Instant::now();
    let (got, seqs) = events(src.as_mut(), 3, Duration::from_secs(10));
    assert_eq!(got, vec![Event::Frame("7-seven.jpg".into()); 3]);
    assert_eq!(seqs, vec![0, 1, 2]);
    assert!(t.elapsed() >= Duration::from_millis(200), "paced by the interval, not as fast as possible");
    assert_eq!(hits.load(Ordering::SeqCst), 3);

    let mut src = snapshot(port, "/auth", Some("admin"), Some("s3cret"));
    assert_eq!(events(src.as_mut(), 1, Duration::from_secs(10)).0, vec![Event::Frame("7-seven.jpg".into())]);
}

#[test]
fn snapshot_errors_name_the_cause_and_back_off() {
    let (port, hits) = http_server();
    let cases = [
        ("/auth", Some("admin"), "HTTP 401 Unauthorized: the camera refused the credentials"),
        ("/missing", None, "HTTP 404 Not Found: no snapshot at this URL (check source.url)"),
        ("/html", None, "the answer is not a JPEG"),
        ("/hang", None, "no answer within 0.5 s (source.timeout)"),
    ];
    for (path, user, expect) in cases {
        let before = hits.load(Ordering::SeqCst);
        let mut src = snapshot(port, path, user, Some("wrong"));
        // Backoff 100, 200, 400, 400 ms (plus 0.5 s timeouts): few tries.
        let (got, _) = events(src.as_mut(), usize::MAX, Duration::from_millis(1500));
        assert!(!got.is_empty() && got.len() <= 6, "{path}: {} tries", got.len());
        for e in &got {
            assert!(matches!(e, Event::Error(m) if m.contains(expect) && m.contains("next try in")), "{path}: {e:?}");
        }
        assert_eq!(hits.load(Ordering::SeqCst) - before, got.len(), "{path}: one request per try");
    }
}

#[test]
fn lookout_cameras_says_when_there_are_none() {
    let out = crate::common::run_with_timeout(
        {
            let mut c = crate::common::lookout();
            c.arg("cameras");
            c
        },
        Duration::from_secs(60),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout} {}", String::from_utf8_lossy(&out.stderr));
    let has_nodes =
        std::fs::read_dir("/dev").unwrap().any(|e| e.unwrap().file_name().to_string_lossy().starts_with("video"));
    if has_nodes {
        assert!(stdout.contains("/dev/video"), "{stdout}");
    } else {
        assert_eq!(stdout.lines().count(), 1, "{stdout}");
        assert!(stdout.starts_with("no cameras found: there is no /dev/video* device"), "{stdout}");
        assert!(stdout.contains("`command` source"), "{stdout}");
    }
}

#[cfg(feature = "camera")]
mod nokhwa_buffers {
    use super::*;
    use lookout::capture::camera::frame_from_buffer;
    use lookout::capture::health::luma_of_raw;
    use nokhwa::pixel_format::RgbFormat;
    use nokhwa::utils::{FrameFormat, Resolution};
    use nokhwa::Buffer;

    /// BT.601 limited range, the convention nokhwa decodes with.
    fn yuv(r: u8, g: u8, b: u8) -> (u8, u8, u8) {
        let (r, g, b) = (i32::from(r), i32::from(g), i32::from(b));
        let y = ((66 * r + 129 * g + 25 * b + 128) >> 8) + 16;
        let u = ((-38 * r - 74 * g + 112 * b + 128) >> 8) + 128;
        let v = ((112 * r - 94 * g - 18 * b + 128) >> 8) + 128;
        (y as u8, u as u8, v as u8)
    }

    /// A sample digit, with a colour ramp added so chroma matters.
    fn rgb_fixture() -> image::RgbImage {
        let mut img = image::open(sample("3-three.jpg")).unwrap().to_rgb8();
        let w = img.width();
        for (x, _, p) in img.enumerate_pixels_mut() {
            p.0[0] = p.0[0].saturating_add((x * 120 / w) as u8);
        }
        img
    }

    fn to_yuyv(img: &image::RgbImage) -> Vec<u8> {
        let mut out = vec![];
        for y in 0..img.height() {
            for x in (0..img.width()).step_by(2) {
                let a = yuv(img.get_pixel(x, y).0[0], img.get_pixel(x, y).0[1], img.get_pixel(x, y).0[2]);
                let b = yuv(img.get_pixel(x + 1, y).0[0], img.get_pixel(x + 1, y).0[1], img.get_pixel(x + 1, y).0[2]);
                out.extend([
                    a.0,
                    ((u16::from(a.1) + u16::from(b.1)) / 2) as u8,
                    b.0,
                    ((u16::from(a.2) + u16::from(b.2)) / 2) as u8,
                ]);
            }
        }
        out
    }

    fn to_nv12(img: &image::RgbImage) -> Vec<u8> {
        let (w, h) = img.dimensions();
        let px = |x, y| {
            let p = img.get_pixel(x, y).0;
            yuv(p[0], p[1], p[2])
        };
        let mut out: Vec<u8> = (0..h).flat_map(|y| (0..w).map(move |x| (x, y))).map(|(x, y)| px(x, y).0).collect();
        for y in (0..h).step_by(2) {
            for x in (0..w).step_by(2) {
                let c = [px(x, y), px(x + 1, y), px(x, y + 1), px(x + 1, y + 1)];
                out.push((c.iter().map(|c| u32::from(c.1)).sum::<u32>() / 4) as u8);
                out.push((c.iter().map(|c| u32::from(c.2)).sum::<u32>() / 4) as u8);
            }
        }
        out
    }

    fn mean_abs_diff(a: &[u8], b: &[u8]) -> f64 {
        assert_eq!(a.len(), b.len());
        a.iter().zip(b).map(|(&x, &y)| f64::from(x.abs_diff(y))).sum::<f64>() / a.len() as f64
    }

    #[test]
    fn yuyv_and_nv12_buffers_become_raw_frames_that_decode_back_to_the_image() {
        let img = rgb_fixture();
        let (w, h) = img.dimensions();
        for (format, bytes, pixel) in [
            (FrameFormat::YUYV, to_yuyv(&img), PixelFormat::Yuyv),
            (FrameFormat::NV12, to_nv12(&img), PixelFormat::Nv12),
        ] {
            let buf = Buffer::new(Resolution::new(w, h), &bytes, format);
            let frame = frame_from_buffer(&buf, "test");
            assert_eq!((frame.format, frame.width, frame.height), (pixel, w, h), "{format}");
            assert_eq!(frame.data, bytes, "{format}: raw bytes, not decoded in capture");
            let decoded = buf.decode_image::<RgbFormat>().unwrap();
            let err = mean_abs_diff(decoded.as_raw(), img.as_raw());
            assert!(err < 3.0, "{format}: nokhwa's decode is off by {err:.2} on average");
            // Health reads luma straight from the raw bytes.
            let luma = luma_of_raw(&frame).unwrap();
            let ys: Vec<f64> = img.pixels().map(|p| f64::from(yuv(p.0[0], p.0[1], p.0[2]).0)).collect();
            let expect = ys.iter().sum::<f64>() / ys.len() as f64;
            // A subsample (every third pixel here) of the Y the camera sent.
            assert!((f64::from(luma.mean) - expect).abs() < 2.0, "{format}: luma {luma:?}, expected about {expect:.1}");
            assert!(luma.std > 30.0, "{format}: a digit on black is not uniform: {luma:?}");
        }
    }

    #[test]
    fn mjpeg_buffers_pass_through_as_encoded_frames() {
        let jpeg = std::fs::read(sample("3-three.jpg")).unwrap();
        let buf = Buffer::new(Resolution::new(32, 32), &jpeg, FrameFormat::MJPEG);
        let frame = frame_from_buffer(&buf, "test");
        assert_eq!((frame.format, frame.width, frame.height), (PixelFormat::Encoded, 0, 0));
        let decoded = lookout::preprocess::decode(&frame.data).unwrap();
        assert_eq!(decoded, image::open(sample("3-three.jpg")).unwrap().to_rgb8());
        // lookout builds nokhwa without its mozjpeg decoder: JPEG decoding
        // is the preprocessor's job, so the camera path never calls this.
        assert!(buf.decode_image::<RgbFormat>().is_err());
    }
}

/// Processes whose command line contains `marker`.
fn processes_with(marker: &str) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| String::from_utf8_lossy(&c).contains(marker))
        })
        .collect()
}

#[test]
fn a_killed_daemon_takes_its_camera_program_with_it() {
    use crate::common::{write_config, Daemon};
    // Outside systemd nothing else would stop the program: a CSI camera
    // it holds would be "in use" for the next lookout.
    let dir = tempfile::tempdir().unwrap();
    let marker = format!("lookout-orphan-check-{}", std::process::id());
    let jpeg = sample("0-zero.jpg");
    let text = format!(
        "[device]\nid = \"orphan\"\nstate_dir = \"state\"\n\n\
         [source]\nkind = \"command\"\ncommand = [\"sh\", \"-c\", \"while true; do cat '{}'; sleep 0.1; done # {marker}\"]\n\n\
         [model]\npath = {:?}\nthreads = 1\n\n[mqtt]\nhost = \"127.0.0.1\"\nport = 1\n\n[schedule]\ninterval = 0.5\n",
        jpeg.display(),
        crate::common::root().join("models/digits/digits-int8.onnx"),
    );
    let mut d = Daemon::start(&write_config(dir.path(), &text), &[]);
    let t = Instant::now();
    while processes_with(&marker).is_empty() {
        assert!(t.elapsed() < Duration::from_secs(30), "the program never started:\n{}", d.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    d.kill9();
    let t = Instant::now();
    while !processes_with(&marker).is_empty() {
        assert!(t.elapsed() < Duration::from_secs(5), "the program outlived lookout: {:?}", processes_with(&marker));
        std::thread::sleep(Duration::from_millis(50));
    }
}
