//! A JPEG fetched over HTTP(S) every interval: the snapshot endpoint most
//! IP cameras offer (`/cgi-bin/snapshot.cgi`, `/ISAPI/Streaming/channels/1/picture`).
//! Failures back off from the interval up to `reconnect_max`, so a camera
//! that is down or refuses the password is not hammered.

use std::time::{Duration, Instant};

use super::supervisor::Backoff;
use super::{CaptureError, FrameSource};
use crate::frame::Frame;

/// A snapshot larger than this is not a snapshot.
const MAX_BYTES: u64 = 32 << 20;

pub struct SnapshotSource {
    agent: ureq::Agent,
    url: String,
    /// `Basic ...`, built once.
    authorization: Option<String>,
    interval: Duration,
    timeout: Duration,
    /// When the next fetch may start; `None` before the first.
    due: Option<Instant>,
    backoff: Backoff,
    seq: u64,
    name: String,
}

impl SnapshotSource {
    pub fn new(
        url: &str,
        interval: Duration,
        timeout: Duration,
        username: Option<String>,
        password: Option<String>,
        reconnect_max: Duration,
    ) -> SnapshotSource {
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            // Status codes are ours to explain, not ureq's.
            .http_status_as_error(false)
            .build()
            .into();
        let authorization = username.map(|u| {
            let pair = format!("{u}:{}", password.unwrap_or_default());
            format!("Basic {}", base64(pair.as_bytes()))
        });
        SnapshotSource {
            agent,
            url: url.to_string(),
            authorization,
            interval,
            timeout,
            due: None,
            backoff: Backoff::new(interval.max(Duration::from_millis(100)), reconnect_max),
            seq: 0,
            name: format!("snapshot:{}", crate::secret::redact(url)),
        }
    }

    fn fetch(&self) -> Result<Vec<u8>, String> {
        let mut req = self.agent.get(&self.url);
        if let Some(a) = &self.authorization {
            req = req.header("Authorization", a);
        }
        let mut resp = req.call().map_err(|e| match e {
            ureq::Error::Timeout(_) => {
                format!("no answer within {:.1} s (source.timeout); is the camera up?", self.timeout.as_secs_f64())
            }
            e => e.to_string(),
        })?;
        let status = resp.status();
        match status.as_u16() {
            200 => {}
            401 | 403 => {
                return Err(format!(
                    "HTTP {status}: the camera refused the credentials (check source.username and source.password)"
                ))
            }
            404 => return Err(format!("HTTP {status}: no snapshot at this URL (check source.url)")),
            _ => return Err(format!("HTTP {status}")),
        }
        let body = resp.body_mut().with_config().limit(MAX_BYTES).read_to_vec().map_err(|e| match e {
            ureq::Error::Timeout(_) => format!("the image did not arrive within {:.1} s", self.timeout.as_secs_f64()),
            e => e.to_string(),
        })?;
        if !body.starts_with(&[0xFF, 0xD8]) {
            let kind = resp.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("unknown").to_owned();
            return Err(format!("the answer is not a JPEG (content type {kind}, {} bytes)", body.len()));
        }
        Ok(body)
    }
}

impl FrameSource for SnapshotSource {
    fn next_frame(&mut self) -> Result<Option<Frame>, CaptureError> {
        let start = Instant::now();
        if let Some(due) = self.due {
            if start < due {
                return Err(CaptureError::NotYet { wait: due - start });
            }
        }
        match self.fetch() {
            Ok(data) => {
                self.backoff.reset();
                self.due = Some(start + self.interval);
                let seq = self.seq;
                self.seq += 1;
                Ok(Some(Frame::encoded(seq, data, self.name.clone())))
            }
            Err(reason) => {
                let wait = self.backoff.fail();
                self.due = Some(Instant::now() + wait);
                Err(CaptureError::Read {
                    origin: self.name.clone(),
                    reason: format!("{reason}; next try in {:.1} s", wait.as_secs_f64()),
                })
            }
        }
    }

    fn is_live(&self) -> bool {
        true
    }

    fn name(&self) -> String {
        self.name.clone()
    }
}

/// Standard base64 with padding, for the Basic auth header.
fn base64(data: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for c in data.chunks(3) {
        let n = u32::from(c[0]) << 16 | u32::from(*c.get(1).unwrap_or(&0)) << 8 | u32::from(*c.get(2).unwrap_or(&0));
        for (i, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            out.push(if i <= c.len() { ABC[(n >> shift & 63) as usize] as char } else { '=' });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc_4648_vectors() {
        let cases =
            [("", ""), ("f", "Zg=="), ("fo", "Zm8="), ("foo", "Zm9v"), ("foob", "Zm9vYg=="), ("fooba", "Zm9vYmE=")];
        for (plain, enc) in cases {
            assert_eq!(base64(plain.as_bytes()), enc);
        }
        assert_eq!(base64(b"admin:s3cret"), "YWRtaW46czNjcmV0");
    }
}
