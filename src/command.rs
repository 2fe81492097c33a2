//! Commands from outside (MQTT's command topic): what they may say, how a
//! payload is checked, the replies, and the inbox that carries them from the
//! publisher's thread to the daemon's loop.
//!
//! Checking happens in two places on purpose: [`Request::parse`] rejects
//! what no daemon could accept (not JSON, unknown command, a field that
//! does not belong to the command, a value out of range) on the MQTT thread;
//! the loop then checks what only it knows (does the view exist, does it
//! have triggers) and applies a command whole or not at all. Every
//! rejection is a [`Reply`] with `ok: false` and a one-line error.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::shutdown::Bell;

/// Payloads above this are refused unread: no command needs more.
pub const MAX_PAYLOAD: usize = 4096;

/// Interval limits for `set`, the same as the config's.
pub const INTERVAL_RANGE: (f64, f64) = (0.01, 1e7);

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Classify the newest frame now (the doorbell rang).
    Classify,
    Pause,
    Resume,
    /// Change a view's interval and/or trigger threshold.
    Set {
        interval: Option<f64>,
        threshold: Option<f32>,
    },
    /// Publish the picture the model sees now.
    Snapshot,
    /// Reply with every view's settings and health.
    Status,
    /// Add the view's current picture to a custom class.
    Teach {
        class: String,
    },
    /// Remove a custom class, or one of its examples.
    Forget {
        class: String,
        example: Option<u64>,
    },
    /// List the custom classes.
    Classes,
}

impl Action {
    pub fn name(&self) -> &'static str {
        match self {
            Action::Classify => "classify",
            Action::Pause => "pause",
            Action::Resume => "resume",
            Action::Set { .. } => "set",
            Action::Snapshot => "snapshot",
            Action::Status => "status",
            Action::Teach { .. } => "teach",
            Action::Forget { .. } => "forget",
            Action::Classes => "classes",
        }
    }
}

/// A checked command.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// Echoed in the reply so a caller can match them (string or number).
    pub id: Option<Value>,
    /// `None`: every view (for the commands where that means something).
    pub view: Option<String>,
    pub action: Action,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum CommandError {
    #[error("the payload is {0} bytes; commands are at most 4096")]
    TooLarge(usize),
    #[error("not a JSON object: {0} (send e.g. {{\"cmd\":\"classify\",\"view\":\"door\"}})")]
    NotJson(String),
    #[error("unknown command {0:?}; use classify, pause, resume, set, snapshot, status, teach, forget or classes")]
    Unknown(String),
    #[error("`{cmd}` does not take `{field}`")]
    Field { cmd: &'static str, field: &'static str },
    #[error("`{cmd}` needs `{field}`")]
    Missing { cmd: &'static str, field: &'static str },
    #[error("`{field}` is {value}; {hint}")]
    Range { field: &'static str, value: String, hint: &'static str },
}

/// The wire format: every field a command may carry; which ones a command
/// accepts is checked after.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Wire {
    cmd: String,
    #[serde(default)]
    id: Option<Value>,
    #[serde(default)]
    view: Option<String>,
    #[serde(default)]
    interval: Option<f64>,
    #[serde(default)]
    threshold: Option<f64>,
    #[serde(default)]
    class: Option<String>,
    #[serde(default)]
    example: Option<u64>,
}

impl Request {
    /// The `id` of a payload that failed to parse, when one can be read, so
    /// even an error reply can be matched to its command.
    pub fn salvage_id(payload: &[u8]) -> Option<Value> {
        let v: Value = serde_json::from_slice(&payload[..payload.len().min(MAX_PAYLOAD)]).ok()?;
        v.get("id").filter(|id| id.is_string() || id.is_number()).cloned()
    }

    pub fn parse(payload: &[u8]) -> Result<Request, CommandError> {
        if payload.len() > MAX_PAYLOAD {
            return Err(CommandError::TooLarge(payload.len()));
        }
        let w: Wire =
            serde_json::from_slice(payload).map_err(|e| CommandError::NotJson(e.to_string().replace('\n', " ")))?;
        if w.id.as_ref().is_some_and(|id| !(id.is_string() || id.is_number())) {
            return Err(CommandError::Range {
                field: "id",
                value: w.id.unwrap().to_string(),
                hint: "use a string or a number",
            });
        }
        if let Some(v) = &w.view {
            if !valid_name(v) {
                return Err(CommandError::Range {
                    field: "view",
                    value: format!("{v:?}"),
                    hint: "view names use letters, digits, '-' and '_'",
                });
            }
        }
        let given: [(&'static str, bool); 4] = [
            ("interval", w.interval.is_some()),
            ("threshold", w.threshold.is_some()),
            ("class", w.class.is_some()),
            ("example", w.example.is_some()),
        ];
        let only = |cmd: &'static str, allowed: &[&str]| -> Result<(), CommandError> {
            match given.iter().find(|(f, set)| *set && !allowed.contains(f)) {
                Some((field, _)) => Err(CommandError::Field { cmd, field }),
                None => Ok(()),
            }
        };
        let class = |cmd: &'static str| -> Result<String, CommandError> {
            let c = w.class.clone().ok_or(CommandError::Missing { cmd, field: "class" })?;
            if !valid_class(&c) {
                return Err(CommandError::Range {
                    field: "class",
                    value: format!("{c:?}"),
                    hint: "class names are 1-64 letters, digits, spaces, '-' or '_'",
                });
            }
            Ok(c)
        };
        let action = match w.cmd.as_str() {
            "classify" => only("classify", &[]).map(|_| Action::Classify)?,
            "pause" => only("pause", &[]).map(|_| Action::Pause)?,
            "resume" => only("resume", &[]).map(|_| Action::Resume)?,
            "snapshot" => only("snapshot", &[]).map(|_| Action::Snapshot)?,
            "status" => only("status", &[]).map(|_| Action::Status)?,
            "classes" => only("classes", &[]).map(|_| Action::Classes)?,
            "set" => {
                only("set", &["interval", "threshold"])?;
                if w.interval.is_none() && w.threshold.is_none() {
                    return Err(CommandError::Missing { cmd: "set", field: "interval` or `threshold" });
                }
                if let Some(i) = w.interval {
                    if !(i.is_finite() && (INTERVAL_RANGE.0..=INTERVAL_RANGE.1).contains(&i)) {
                        return Err(CommandError::Range {
                            field: "interval",
                            value: i.to_string(),
                            hint: "give seconds between 0.01 and 10000000",
                        });
                    }
                }
                if let Some(t) = w.threshold {
                    if !(0.0..=1.0).contains(&t) {
                        return Err(CommandError::Range {
                            field: "threshold",
                            value: t.to_string(),
                            hint: "give a probability between 0 and 1",
                        });
                    }
                }
                Action::Set { interval: w.interval, threshold: w.threshold.map(|t| t as f32) }
            }
            "teach" => {
                only("teach", &["class"])?;
                Action::Teach { class: class("teach")? }
            }
            "forget" => {
                only("forget", &["class", "example"])?;
                Action::Forget { class: class("forget")?, example: w.example }
            }
            other => return Err(CommandError::Unknown(other.chars().take(40).collect())),
        };
        Ok(Request { id: w.id, view: w.view, action })
    }
}

/// View and device names: MQTT topic segments.
pub fn valid_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

fn valid_class(s: &str) -> bool {
    let t = s.trim();
    !t.is_empty() && t == s && s.len() <= 64 && s.chars().all(|c| c.is_alphanumeric() || " -_".contains(c))
}

/// The settings commands change, published on the view's control topic and
/// kept across restarts.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Control {
    pub paused: bool,
    pub interval: f64,
    /// The trigger threshold; `None` when the view has no triggers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub threshold: Option<f32>,
}

/// The answer to one command, published on the reply topic.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Reply {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cmd: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub view: Option<String>,
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// What the command reports (status, the result's seq, ...).
    #[serde(flatten)]
    pub data: serde_json::Map<String, Value>,
}

impl Reply {
    pub fn ok(req: &Request) -> Reply {
        Reply {
            id: req.id.clone(),
            cmd: Some(req.action.name()),
            view: req.view.clone(),
            ok: true,
            error: None,
            data: Default::default(),
        }
    }

    pub fn error(req: &Request, error: impl Into<String>) -> Reply {
        Reply { ok: false, error: Some(error.into()), ..Reply::ok(req) }
    }

    /// For a payload that did not parse.
    pub fn rejected(id: Option<Value>, e: &CommandError) -> Reply {
        Reply { id, cmd: None, view: None, ok: false, error: Some(e.to_string()), data: Default::default() }
    }

    pub fn with(mut self, key: &str, value: impl Serialize) -> Reply {
        self.data.insert(key.into(), serde_json::to_value(value).unwrap_or(Value::Null));
        self
    }
}

/// Commands on their way to the loop; pushing rings the loop's bell.
#[derive(Clone, Default)]
pub struct Inbox {
    queue: Arc<Mutex<VecDeque<Request>>>,
    bell: Bell,
}

/// Commands waiting beyond this are refused: a flood must not grow memory.
const INBOX_MAX: usize = 64;

impl Inbox {
    pub fn new(bell: Bell) -> Inbox {
        Inbox { queue: Default::default(), bell }
    }

    /// Queues a command; false when the inbox is full.
    pub fn push(&self, req: Request) -> bool {
        let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        if q.len() >= INBOX_MAX {
            return false;
        }
        q.push_back(req);
        drop(q);
        self.bell.ring();
        true
    }

    /// The bell pushing rings: the daemon's loop sleeps on it.
    pub fn bell(&self) -> Bell {
        self.bell.clone()
    }

    pub fn drain(&self) -> Vec<Request> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner()).drain(..).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Request, CommandError> {
        Request::parse(s.as_bytes())
    }

    #[test]
    fn commands_parse_with_their_fields() {
        let r = parse(r#"{"cmd":"classify","view":"door","id":"a1"}"#).unwrap();
        assert_eq!((r.action, r.view.as_deref(), r.id), (Action::Classify, Some("door"), Some(Value::from("a1"))));
        assert_eq!(parse(r#"{"cmd":"pause"}"#).unwrap().view, None);
        let r = parse(r#"{"cmd":"set","view":"v","interval":5,"threshold":0.25,"id":7}"#).unwrap();
        assert_eq!(r.action, Action::Set { interval: Some(5.0), threshold: Some(0.25) });
        assert_eq!(
            parse(r#"{"cmd":"teach","class":"door open"}"#).unwrap().action,
            Action::Teach { class: "door open".into() }
        );
        assert_eq!(
            parse(r#"{"cmd":"forget","class":"bins","example":3}"#).unwrap().action,
            Action::Forget { class: "bins".into(), example: Some(3) }
        );
    }

    #[test]
    fn bad_payloads_are_one_line_errors_that_say_what_to_send() {
        let cases = [
            ("not json", "not a JSON object"),
            ("[1,2]", "not a JSON object"),
            (r#"{"cmd":"explode"}"#, "unknown command \"explode\""),
            (r#"{"cmd":"classify","interval":3}"#, "`classify` does not take `interval`"),
            (r#"{"cmd":"set","view":"v"}"#, "`set` needs `interval` or `threshold`"),
            (r#"{"cmd":"set","interval":0}"#, "`interval` is 0"),
            (r#"{"cmd":"set","interval":1e400}"#, "not a JSON object"),
            (r#"{"cmd":"set","threshold":1.5}"#, "between 0 and 1"),
            (r#"{"cmd":"teach"}"#, "`teach` needs `class`"),
            (r#"{"cmd":"teach","class":"a/b"}"#, "class names"),
            (r#"{"cmd":"pause","view":"a/#"}"#, "view names"),
            (r#"{"cmd":"pause","colour":"red"}"#, "unknown field `colour`"),
            (r#"{"cmd":"pause","id":{"x":1}}"#, "`id`"),
        ];
        for (payload, expect) in cases {
            let e = parse(payload).unwrap_err().to_string();
            assert!(e.contains(expect), "{payload}: {e}");
            assert!(!e.contains('\n'), "{payload}: {e}");
        }
        assert_eq!(Request::parse(&vec![b' '; 5000]), Err(CommandError::TooLarge(5000)));
        assert_eq!(Request::salvage_id(br#"{"cmd":"explode","id":"x9"}"#), Some(Value::from("x9")));
    }

    #[test]
    fn replies_echo_the_request_and_carry_data() {
        let req = parse(r#"{"cmd":"classify","view":"door","id":"a1"}"#).unwrap();
        let v = serde_json::to_value(Reply::ok(&req).with("seq", 12)).unwrap();
        assert_eq!(v, serde_json::json!({"id":"a1","cmd":"classify","view":"door","ok":true,"seq":12}));
        let v = serde_json::to_value(Reply::error(&req, "no view \"door\"")).unwrap();
        assert_eq!(v["ok"], false);
        assert_eq!(v["error"], "no view \"door\"");
    }

    #[test]
    fn the_inbox_rings_and_is_bounded() {
        let bell = Bell::default();
        let inbox = Inbox::new(bell.clone());
        let req = parse(r#"{"cmd":"status"}"#).unwrap();
        assert!(inbox.push(req.clone()));
        assert_eq!(bell.rings(), 1);
        for _ in 1..INBOX_MAX {
            assert!(inbox.push(req.clone()));
        }
        assert!(!inbox.push(req), "a flood is refused");
        assert_eq!(inbox.drain().len(), INBOX_MAX);
        assert!(inbox.drain().is_empty());
    }
}
