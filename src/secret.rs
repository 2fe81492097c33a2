//! Secrets kept out of the config file: the MQTT password, a snapshot
//! camera's password, a password inside a camera command's arguments. Each
//! comes from a file, an environment variable or a systemd credential, so
//! the config stays world-readable and `check-config` can print it; the
//! value is read when needed and never logged. [`redact`] takes secrets out
//! of anything that is logged (URLs with `user:password@`).

use std::path::{Path, PathBuf};

use serde::Serialize;

/// Where a secret comes from. Serialized (by `check-config`) as where it
/// comes from, never as the secret.
#[derive(Clone, PartialEq, Eq)]
pub enum SecretSource {
    File(PathBuf),
    Env(String),
    /// A systemd credential: `$CREDENTIALS_DIRECTORY/<name>`
    /// (`LoadCredential=NAME:/path` in the unit).
    Credential(String),
    /// Written in the config file itself (a snapshot camera's `password`):
    /// allowed, but `check-config` warns when others can read the file.
    Inline(String),
}

impl std::fmt::Debug for SecretSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SecretSource::File(p) => write!(f, "File({p:?})"),
            SecretSource::Env(v) => write!(f, "Env({v:?})"),
            SecretSource::Credential(c) => write!(f, "Credential({c:?})"),
            SecretSource::Inline(_) => f.write_str("Inline(***)"),
        }
    }
}

impl Serialize for SecretSource {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(1))?;
        match self {
            SecretSource::File(p) => m.serialize_entry("file", p)?,
            SecretSource::Env(v) => m.serialize_entry("env", v)?,
            SecretSource::Credential(c) => m.serialize_entry("credential", c)?,
            SecretSource::Inline(_) => m.serialize_entry("inline", "***")?,
        }
        m.end()
    }
}

#[derive(Debug, Clone, thiserror::Error, PartialEq)]
#[error("{what}: {reason}")]
pub struct SecretError {
    /// Which secret, as the config names it (`mqtt.password_file`).
    pub what: String,
    pub reason: String,
}

impl SecretSource {
    /// Reads the secret; `what` names it in errors (the config key). A
    /// trailing newline (files written with `echo`) is not part of it.
    pub fn read(&self, what: &str) -> Result<String, SecretError> {
        let err = |reason: String| SecretError { what: what.into(), reason };
        let from_file = |path: &Path| -> Result<String, SecretError> {
            let text =
                std::fs::read_to_string(path).map_err(|e| err(format!("{}: cannot read it ({e})", path.display())))?;
            warn_if_world_readable(path);
            Ok(text)
        };
        let text = match self {
            SecretSource::Inline(s) => s.clone(),
            SecretSource::File(p) => from_file(p)?,
            SecretSource::Env(var) => std::env::var(var)
                .map_err(|_| err(format!("the environment variable {var} is not set or not UTF-8")))?,
            SecretSource::Credential(name) => {
                let dir = std::env::var_os("CREDENTIALS_DIRECTORY").ok_or_else(|| {
                    err(format!(
                        "the credential {name:?} needs CREDENTIALS_DIRECTORY, which is not set; give the unit \
                         LoadCredential={name}:/path/to/secret (or run lookout under systemd)"
                    ))
                })?;
                from_file(&PathBuf::from(dir).join(name))?
            }
        };
        let secret = text.trim_end_matches(['\n', '\r']).to_owned();
        if secret.is_empty() {
            return Err(err("it is empty".into()));
        }
        Ok(secret)
    }

    /// The config key that set this source: `mqtt.password` ->
    /// `mqtt.password_file`.
    pub fn key(&self, prefix: &str) -> String {
        let kind = match self {
            SecretSource::Inline(_) => return prefix.to_owned(),
            SecretSource::File(_) => "file",
            SecretSource::Env(_) => "env",
            SecretSource::Credential(_) => "credential",
        };
        format!("{prefix}_{kind}")
    }

    /// `file:PATH`, `env:VAR` or `credential:NAME`, as written inside a
    /// `${...}` reference in a command's argument.
    pub fn parse_reference(s: &str, base: &Path) -> Option<SecretSource> {
        let (kind, rest) = s.split_once(':')?;
        if rest.is_empty() {
            return None;
        }
        match kind {
            "file" => Some(SecretSource::File(base.join(rest))),
            "env" => Some(SecretSource::Env(rest.into())),
            "credential" => Some(SecretSource::Credential(rest.into())),
            _ => None,
        }
    }
}

fn warn_if_world_readable(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if std::fs::metadata(path).is_ok_and(|m| m.permissions().mode() & 0o004 != 0) {
        log::warn!("{}: this secret is readable by every user; chmod 600 it", path.display());
    }
}

/// `${file:...}`, `${env:...}` and `${credential:...}` in `arg` replaced by
/// the secrets they name (the argument unchanged when it has none), and the
/// secrets themselves, to scrub from what the program prints.
pub fn expand(arg: &str, base: &Path, what: &str) -> Result<(String, Vec<String>), SecretError> {
    let mut secrets = vec![];
    let mut out = String::new();
    let mut rest = arg;
    while let Some(start) = rest.find("${") {
        let Some(len) = rest[start..].find('}') else { break };
        let inner = &rest[start + 2..start + len];
        let source = SecretSource::parse_reference(inner, base).ok_or_else(|| SecretError {
            what: what.into(),
            reason: format!("${{{inner}}} is not ${{file:PATH}}, ${{env:VAR}} or ${{credential:NAME}}"),
        })?;
        let secret = source.read(what)?;
        out.push_str(&rest[..start]);
        out.push_str(&secret);
        secrets.push(secret);
        rest = &rest[start + len + 1..];
    }
    out.push_str(rest);
    Ok((out, secrets))
}

/// [`redact`], and every one of `secrets` replaced by `***`.
pub fn scrub(text: &str, secrets: &[String]) -> String {
    secrets.iter().filter(|s| !s.is_empty()).fold(redact(text), |t, s| t.replace(s.as_str(), "***"))
}

/// `scheme://user:password@host` -> `scheme://user:***@host`, wherever it
/// appears in `text`: for log lines and errors that quote a URL.
pub fn redact(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        out.push_str(head);
        let end = tail.find(|c: char| c.is_whitespace() || c == '"' || c == '\'').unwrap_or(tail.len());
        let authority_end = tail[..end].find('/').unwrap_or(end);
        match tail[..authority_end].rfind('@') {
            Some(at) => {
                let userinfo = &tail[..at];
                match userinfo.split_once(':') {
                    // A reference names where the secret is: not a secret.
                    Some((_, pw)) if pw.starts_with("${") && pw.ends_with('}') => out.push_str(userinfo),
                    Some((user, _)) => out.push_str(&format!("{user}:***")),
                    None => out.push_str(userinfo),
                }
                out.push_str(&tail[at..end]);
            }
            None => out.push_str(&tail[..end]),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_their_passwords_wherever_they_appear() {
        assert_eq!(
            redact("ffmpeg -i rtsp://admin:hunter2@192.168.1.30:554/s1 -f mjpeg"),
            "ffmpeg -i rtsp://admin:***@192.168.1.30:554/s1 -f mjpeg"
        );
        assert_eq!(redact("\"http://u:p@cam/x\" and https://h/p@q"), "\"http://u:***@cam/x\" and https://h/p@q");
        assert_eq!(redact("http://user@cam/"), "http://user@cam/");
        assert_eq!(redact("rtsp://u:${credential:cam}@h/1"), "rtsp://u:${credential:cam}@h/1");
        assert_eq!(redact("no url: a:b@c"), "no url: a:b@c");
    }

    #[test]
    fn references_expand_from_files_env_and_credentials() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("pw"), "s3cret\n").unwrap();
        std::env::set_var("LOOKOUT_TEST_SECRET", "envpw");
        let (got, secrets) =
            expand("rtsp://cam:${file:pw}@h/${env:LOOKOUT_TEST_SECRET}", d.path(), "source.command").unwrap();
        assert_eq!(got, "rtsp://cam:s3cret@h/envpw");
        assert_eq!(secrets, vec!["s3cret", "envpw"]);
        assert_eq!(scrub("could not open rtsp://cam:s3cret@h/envpw", &secrets), "could not open rtsp://cam:***@h/***");
        assert_eq!(expand("plain ${not closed", d.path(), "x").unwrap().0, "plain ${not closed");
        let e = expand("${vault:x}", d.path(), "source.command").unwrap_err().to_string();
        assert!(e.starts_with("source.command: ${vault:x} is not"), "{e}");
        let e = expand("${file:missing}", d.path(), "source.command").unwrap_err().to_string();
        assert!(e.contains("missing: cannot read it"), "{e}");
        std::env::remove_var("CREDENTIALS_DIRECTORY");
        let e = SecretSource::Credential("cam".into()).read("source.password_credential").unwrap_err().to_string();
        assert!(e.contains("LoadCredential=cam:"), "{e}");
        std::fs::write(d.path().join("empty"), "\n").unwrap();
        let e = SecretSource::File(d.path().join("empty")).read("k").unwrap_err().to_string();
        assert_eq!(e, "k: it is empty");
    }
}
