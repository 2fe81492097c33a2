//! Raw sections -> the stages' own config types: validation with the key
//! named, paths against the config file's folder, the model manifest's
//! defaults under the config's overrides, views defaulted from the
//! top-level sections.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::raw::{FileConfig, ModelSection, MqttSection, SourceSection, ViewSection};
use super::{Config, ConfigError, Device};
use crate::capture::health::HealthParams;
use crate::capture::SourceConfig;
use crate::command::valid_name;
use crate::daemon::ViewConfig;
use crate::model::manifest::Manifest;
use crate::model::ModelConfig;
use crate::preprocess::PreprocessParams;
use crate::publish::{MqttConfig, TlsFiles, RESERVED};
use crate::secret::SecretSource;
use crate::snapshot::SnapshotConfig;
use crate::triggers::{TriggerError, TriggersConfig};

pub fn invalid(path: &Path, key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { path: path.to_owned(), key: key.into(), message: message.into() }
}

pub fn seconds(file: &Path, key: &str, v: f64, min: f64) -> Result<Duration, ConfigError> {
    if !v.is_finite() || v < min || v > 1e7 {
        return Err(invalid(file, key, format!("is {v}; give seconds between {min} and 10000000")));
    }
    Ok(Duration::from_secs_f64(v))
}

/// `base/../x` -> `x`, without touching the file system (symlinks such as
/// `/dev/v4l/by-id` links must stay as written).
pub fn join(base: &Path, p: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in base.join(p).components() {
        match c {
            Component::ParentDir if matches!(out.components().next_back(), Some(Component::Normal(_))) => {
                out.pop();
            }
            c => out.push(c),
        }
    }
    out
}

pub fn resolve(raw: FileConfig, file: &Path, base: &Path) -> Result<Config, ConfigError> {
    let device = resolve_device(raw.device, file, base)?;
    let model = resolve_model(raw.model, file, base)?;

    let sources: BTreeMap<String, SourceSection> = match (raw.source, raw.sources.is_empty()) {
        (Some(s), true) => BTreeMap::from([("main".to_owned(), s)]),
        (None, false) => raw.sources,
        (Some(_), false) => {
            return Err(invalid(
                file,
                "sources",
                "and [source] are both set; use [source] for one camera or [sources.NAME] tables for several",
            ))
        }
        (None, true) => {
            return Err(invalid(
                file,
                "source",
                "is missing; add a [source] table (config/lookout.toml shows every kind) or [sources.NAME] tables",
            ))
        }
    };
    let mut resolved_sources = BTreeMap::new();
    for (name, section) in sources {
        if !valid_name(&name) {
            return Err(invalid(file, format!("sources.{name}"), "names use letters, digits, '-' and '_' (1-64)"));
        }
        resolved_sources.insert(name.clone(), resolve_source(section, &name, file, base)?);
    }

    let interval = seconds(file, "schedule.interval", raw.schedule.interval, 0.0)?;
    if interval.is_zero() {
        return Err(invalid(file, "schedule.interval", "is 0; give the seconds between classifications, e.g. 1.0"));
    }
    check_triggers(&raw.triggers, file, "triggers")?;
    let snapshots = resolve_snapshots(&raw.snapshots, file)?;
    let defaults = ViewDefaults { model: &model.preprocess, interval, triggers: &raw.triggers, snapshots: &snapshots };
    let mut views = vec![];
    for (name, v) in raw.views {
        views.push(resolve_view(name, v, &resolved_sources, &defaults, file)?);
    }
    // A source no view names is one view of its whole picture, named after it.
    for s in resolved_sources.keys() {
        if views.iter().any(|v| &v.source == s) {
            continue;
        }
        if views.iter().any(|v| &v.name == s) {
            return Err(invalid(
                file,
                format!("sources.{s}"),
                format!("has no view, and the view it would get is taken by `views.{s}`; give it a [views.NAME] table"),
            ));
        }
        let implicit = ViewSection { source: Some(s.clone()), ..ViewSection::default() };
        views.push(resolve_view(s.clone(), implicit, &resolved_sources, &defaults, file)?);
    }

    let mqtt = resolve_mqtt(raw.mqtt, &device.id, file, base)?;
    let h = raw.health;
    let health = HealthParams {
        stale_after: seconds(file, "health.stale_after", h.stale_after, 0.01)?,
        frozen_frames: h.frozen_frames,
        dark_below: luma(file, "health.dark_below", h.dark_below)?,
        uniform_below: luma(file, "health.uniform_below", h.uniform_below)?,
        skip_unhealthy: h.skip_unhealthy,
    };
    raw.thermal.validate().map_err(|(key, message)| invalid(file, key, message))?;

    Ok(Config {
        file: file.to_owned(),
        device,
        sources: resolved_sources,
        views,
        model,
        mqtt,
        thermal: raw.thermal,
        health,
    })
}

/// What can be checked without the model's labels (those are checked when
/// the model is loaded, and by `check-config`).
fn check_triggers(t: &TriggersConfig, file: &Path, section: &str) -> Result<(), ConfigError> {
    t.validate().map_err(|e| match e {
        TriggerError::Invalid { key, message } => invalid(file, key.replacen("triggers", section, 1), message),
    })
}

/// What a view takes from the top-level sections unless it says otherwise.
struct ViewDefaults<'a> {
    model: &'a PreprocessParams,
    interval: Duration,
    triggers: &'a TriggersConfig,
    snapshots: &'a SnapshotConfig,
}

fn resolve_snapshots(s: &super::raw::SnapshotSection, file: &Path) -> Result<SnapshotConfig, ConfigError> {
    if !(64..=4096).contains(&s.max_side) {
        return Err(invalid(file, "snapshots.max_side", format!("is {}; give pixels between 64 and 4096", s.max_side)));
    }
    if !(1..=100).contains(&s.quality) {
        return Err(invalid(
            file,
            "snapshots.quality",
            format!("is {}; give a JPEG quality between 1 and 100", s.quality),
        ));
    }
    if s.keep > 10_000 {
        return Err(invalid(file, "snapshots.keep", format!("is {}; keep at most 10000 per view", s.keep)));
    }
    Ok(SnapshotConfig {
        enabled: s.enabled,
        max_side: s.max_side,
        quality: s.quality,
        min_interval: seconds(file, "snapshots.min_interval", s.min_interval, 0.0)?,
        keep: s.keep,
    })
}

fn resolve_view(
    name: String,
    v: ViewSection,
    sources: &BTreeMap<String, SourceConfig>,
    defaults: &ViewDefaults,
    file: &Path,
) -> Result<ViewConfig, ConfigError> {
    let (model, interval, triggers) = (defaults.model, defaults.interval, defaults.triggers);
    let key = |k: &str| format!("views.{name}.{k}");
    if !valid_name(&name) || RESERVED.contains(&name.as_str()) {
        return Err(invalid(
            file,
            format!("views.{name}"),
            format!("view names use letters, digits, '-' and '_' (1-64) and are not one of {}", RESERVED.join(", ")),
        ));
    }
    let names: Vec<&str> = sources.keys().map(String::as_str).collect();
    let source = match v.source {
        Some(s) if sources.contains_key(&s) => s,
        Some(s) => {
            return Err(invalid(
                file,
                key("source"),
                format!("{s:?} is not a source; the sources are {}", names.join(", ")),
            ))
        }
        None if sources.len() == 1 => names[0].to_owned(),
        None => return Err(invalid(file, key("source"), format!("is missing; name one of {}", names.join(", ")))),
    };
    let roi = v.roi.or(model.roi);
    if let Some(problem) = v.roi.and_then(crate::preprocess::roi_problem) {
        return Err(invalid(file, key("roi"), problem));
    }
    let crop_fraction = v.crop_fraction.unwrap_or(model.crop_fraction);
    if !(crop_fraction > 0.0 && crop_fraction <= 1.0) {
        return Err(invalid(file, key("crop_fraction"), format!("is {crop_fraction}; use a fraction in (0, 1]")));
    }
    let interval = match v.interval {
        Some(i) if i > 0.0 => seconds(file, &key("interval"), i, 0.0)?,
        Some(i) => {
            return Err(invalid(file, key("interval"), format!("is {i}; give the seconds between classifications")))
        }
        None => interval,
    };
    let triggers = match v.triggers {
        Some(t) => {
            check_triggers(&t, file, &format!("views.{name}.triggers"))?;
            t
        }
        None => triggers.clone(),
    };
    let snapshots = v.snapshots.unwrap_or(defaults.snapshots.enabled).then(|| defaults.snapshots.clone());
    Ok(ViewConfig {
        name,
        source,
        roi,
        crop_fraction,
        interval,
        triggers,
        snapshots,
        labels: v.labels.unwrap_or_default(),
    })
}

fn resolve_device(d: super::raw::DeviceSection, file: &Path, base: &Path) -> Result<Device, ConfigError> {
    let id = match d.id {
        Some(id) => id,
        None => default_device_id().map_err(|why| {
            invalid(
                file,
                "device.id",
                format!("is not set and {why}; set a host name (hostnamectl hostname NAME) or device.id"),
            )
        })?,
    };
    if !valid_name(&id) {
        return Err(invalid(
            file,
            "device.id",
            format!("{id:?} must be 1-64 letters, digits, '-' and '_' (it is part of MQTT topics)"),
        ));
    }
    let name = d.name.unwrap_or_else(|| format!("lookout {id}"));
    // systemd's StateDirectory= sets STATE_DIRECTORY; outside systemd the FHS place.
    let state_dir = match d.state_dir {
        Some(p) => join(base, &p),
        None => {
            std::env::var_os("STATE_DIRECTORY").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/var/lib/lookout"))
        }
    };
    Ok(Device { id, name, state_dir })
}

/// The host name, from the kernel (gethostname(2)): never from /proc, which
/// a unit with `ProcSubset=pid` hides (lookout's had it once: every packaged
/// board then shared one id and knocked the others off the broker with the
/// same client id). Names that say nothing are refused rather than shared
/// by every such board.
fn default_device_id() -> Result<String, String> {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; the kernel writes at most
    // that many bytes and we stop at the first NUL (or the end).
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error().to_string());
    }
    let host = String::from_utf8_lossy(&buf[..buf.iter().position(|&b| b == 0).unwrap_or(buf.len())]).into_owned();
    // "(none)" is the kernel's name before anyone set one.
    match host.trim() {
        "" | "(none)" | "localhost" => Err(format!("the host name is {host:?}")),
        _ => Ok(device_id_from_host(&host)),
    }
}

/// A host name as an MQTT topic segment: `cam.lan` -> `cam_lan`.
pub fn device_id_from_host(host: &str) -> String {
    host.trim().chars().take(64).map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' }).collect()
}

fn supervision(
    file: &Path,
    key: &dyn Fn(&str) -> String,
    timeout: f64,
    min: f64,
    max: f64,
) -> Result<(Duration, Duration, Duration), ConfigError> {
    let timeout = seconds(file, &key("frame_timeout"), timeout, 0.1)?;
    let min = seconds(file, &key("reconnect_min"), min, 0.01)?;
    let max = seconds(file, &key("reconnect_max"), max, 0.01)?;
    if max < min {
        return Err(invalid(file, key("reconnect_max"), format!("is below {}", key("reconnect_min"))));
    }
    Ok((timeout, min, max))
}

fn resolve_source(s: SourceSection, name: &str, file: &Path, base: &Path) -> Result<SourceConfig, ConfigError> {
    // `[source]` keys are named as before there were several sources.
    let key = |k: &str| if name == "main" { format!("source.{k}") } else { format!("sources.{name}.{k}") };
    Ok(match s {
        SourceSection::Files { path, looping, fps } => {
            let path = join(base, &path);
            if !path.exists() {
                return Err(invalid(file, key("path"), format!("{} does not exist", path.display())));
            }
            if !(fps.is_finite() && fps >= 0.0) {
                return Err(invalid(
                    file,
                    key("fps"),
                    format!("is {fps}; use 0 (as fast as classified) or a positive rate"),
                ));
            }
            SourceConfig::Files { path, looping, fps }
        }
        SourceSection::Camera {
            device,
            width,
            height,
            fps,
            format,
            color_range,
            frame_timeout,
            reconnect_min,
            reconnect_max,
        } => {
            if device.trim().is_empty() {
                return Err(invalid(file, key("device"), "is empty; give an index (0), /dev/videoN, a /dev/v4l/by-id link or part of the camera's name (`lookout cameras` lists them)"));
            }
            if !(16..=8192).contains(&width) || !(16..=8192).contains(&height) {
                return Err(invalid(
                    file,
                    key("width"),
                    format!("{width}x{height} is not a camera size; use e.g. 640 x 480"),
                ));
            }
            if !(1..=1000).contains(&fps) {
                return Err(invalid(file, key("fps"), format!("is {fps}; give frames per second between 1 and 1000")));
            }
            let (frame_timeout, reconnect_min, reconnect_max) =
                supervision(file, &key, frame_timeout, reconnect_min, reconnect_max)?;
            SourceConfig::Camera {
                device,
                width,
                height,
                fps,
                format,
                color_range,
                frame_timeout,
                reconnect_min,
                reconnect_max,
            }
        }
        SourceSection::Command { command, frame_timeout, reconnect_min, reconnect_max } => {
            if command.first().is_none_or(|p| p.trim().is_empty()) {
                return Err(invalid(file, key("command"), "is empty; give the program and its arguments, e.g. [\"rpicam-vid\", \"--codec\", \"mjpeg\", \"-t\", \"0\", \"-o\", \"-\"]"));
            }
            for arg in &command {
                let mut rest = arg.as_str();
                while let Some(start) = rest.find("${") {
                    let Some(len) = rest[start..].find('}') else { break };
                    let inner = &rest[start + 2..start + len];
                    if SecretSource::parse_reference(inner, base).is_none() {
                        return Err(invalid(
                            file,
                            key("command"),
                            format!("${{{inner}}} is not ${{file:PATH}}, ${{env:VAR}} or ${{credential:NAME}}"),
                        ));
                    }
                    rest = &rest[start + len + 1..];
                }
            }
            let (frame_timeout, reconnect_min, reconnect_max) =
                supervision(file, &key, frame_timeout, reconnect_min, reconnect_max)?;
            SourceConfig::Command { command, base: base.to_owned(), frame_timeout, reconnect_min, reconnect_max }
        }
        SourceSection::Snapshot {
            url,
            interval,
            timeout,
            username,
            password,
            password_file,
            password_env,
            password_credential,
            reconnect_max,
        } => {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(invalid(
                    file,
                    key("url"),
                    format!("{:?} must start with http:// or https://", crate::secret::redact(&url)),
                ));
            }
            let password = one_secret(
                file,
                &key("password"),
                [
                    password.map(SecretSource::Inline),
                    password_file.map(|p| SecretSource::File(join(base, &p))),
                    password_env.map(SecretSource::Env),
                    password_credential.map(SecretSource::Credential),
                ],
            )?;
            if password.is_some() && username.is_none() {
                return Err(invalid(
                    file,
                    key("password"),
                    format!("is set without {}; basic auth needs both", key("username")),
                ));
            }
            let interval = seconds(file, &key("interval"), interval, 0.01)?;
            let timeout = seconds(file, &key("timeout"), timeout, 0.01)?;
            let reconnect_max = seconds(file, &key("reconnect_max"), reconnect_max, 0.01)?;
            SourceConfig::Snapshot { url, interval, timeout, username, password, reconnect_max }
        }
    })
}

/// At most one of a secret's sources (`password`, `password_file`,
/// `password_env`, `password_credential`).
fn one_secret(file: &Path, key: &str, sources: [Option<SecretSource>; 4]) -> Result<Option<SecretSource>, ConfigError> {
    let mut set = sources.into_iter().flatten();
    let first = set.next();
    if set.next().is_some() {
        return Err(invalid(
            file,
            key,
            format!("{key}, {key}_file, {key}_env and {key}_credential exclude each other; keep one"),
        ));
    }
    Ok(first)
}

fn luma(file: &Path, key: &str, v: f32) -> Result<f32, ConfigError> {
    if !(v.is_finite() && (0.0..=255.0).contains(&v)) {
        return Err(invalid(file, key, format!("is {v}; give a luma level between 0 (off) and 255")));
    }
    Ok(v)
}

pub fn resolve_model(m: ModelSection, file: &Path, base: &Path) -> Result<ModelConfig, ConfigError> {
    let path = join(base, &m.path);
    if !path.is_file() {
        return Err(invalid(
            file,
            "model.path",
            format!(
                "{} does not exist; install a model (`lookout model install`, docs/models.md) or fix the path",
                path.display()
            ),
        ));
    }
    let manifest_path = match m.manifest {
        Some(p) => {
            let p = join(base, &p);
            if !p.is_file() {
                return Err(invalid(file, "model.manifest", format!("{} does not exist", p.display())));
            }
            Some(p)
        }
        None => Some(Manifest::path_beside(&path)).filter(|p| p.is_file()),
    };
    let manifest = manifest_path.as_deref().map(Manifest::load).transpose()?;
    let manifest_dir = manifest_path.as_deref().and_then(Path::parent).unwrap_or(Path::new(""));

    let labels = match (m.labels, &manifest) {
        (Some(l), _) => join(base, &l),
        (None, Some(man)) => join(manifest_dir, &man.labels),
        (None, None) => {
            return Err(invalid(
                file,
                "model.labels",
                "is not set and the model has no manifest beside it; give the labels file (one label per line)",
            ));
        }
    };
    if !labels.is_file() {
        return Err(invalid(file, "model.labels", format!("{} does not exist", labels.display())));
    }

    let defaults = manifest.as_ref().map(|m| m.preprocess.clone()).unwrap_or_default();
    let preprocess = PreprocessParams {
        resize: m.resize.unwrap_or(defaults.resize),
        crop_fraction: m.crop_fraction.unwrap_or(defaults.crop_fraction),
        mean: m.mean.unwrap_or(defaults.mean),
        std: m.std.unwrap_or(defaults.std),
        roi: m.roi,
    };
    if let Some(problem) = m.roi.and_then(crate::preprocess::roi_problem) {
        return Err(invalid(file, "model.roi", problem));
    }
    if !(preprocess.crop_fraction > 0.0 && preprocess.crop_fraction <= 1.0) {
        return Err(invalid(
            file,
            "model.crop_fraction",
            format!("is {}; use a fraction of the short side in (0, 1]", preprocess.crop_fraction),
        ));
    }
    if preprocess.std.iter().any(|s| !(s.is_finite() && *s > 0.0)) || preprocess.mean.iter().any(|v| !v.is_finite()) {
        return Err(invalid(file, "model.std", "every std must be a positive number and every mean finite"));
    }
    let input_size = m.input_size.or(manifest.as_ref().map(|m| m.input_size()));
    if let Some(s) = input_size {
        if !(8..=4096).contains(&s) {
            return Err(invalid(
                file,
                "model.input_size",
                format!("is {s}; use the model's input side, between 8 and 4096"),
            ));
        }
    }
    if m.top_k == 0 {
        return Err(invalid(file, "model.top_k", "is 0; give how many ranked labels to report (at least 1)"));
    }
    if m.threads > 256 {
        return Err(invalid(
            file,
            "model.threads",
            format!("is {}; use 0 for one per core, or the thread count", m.threads),
        ));
    }
    Ok(ModelConfig {
        path,
        manifest_path,
        manifest,
        labels: Some(labels),
        input_size,
        preprocess,
        top_k: m.top_k,
        threads: m.threads,
        verify_sha256: m.verify_sha256,
    })
}

fn resolve_mqtt(m: MqttSection, device_id: &str, file: &Path, base: &Path) -> Result<MqttConfig, ConfigError> {
    if m.host.is_empty() {
        return Err(invalid(file, "mqtt.host", "is empty; name the broker's host"));
    }
    if m.port == 0 {
        return Err(invalid(file, "mqtt.port", "is 0; use the broker's port (1883 is the default)"));
    }
    if m.qos > 2 {
        return Err(invalid(file, "mqtt.qos", format!("is {}; MQTT knows QoS 0, 1 and 2", m.qos)));
    }
    let topic_ok = |t: &str| !t.is_empty() && !t.contains(['+', '#']) && !t.ends_with('/');
    if !topic_ok(&m.topic_prefix) {
        return Err(invalid(
            file,
            "mqtt.topic_prefix",
            format!("{:?} must be non-empty, without '+', '#' or a trailing '/'", m.topic_prefix),
        ));
    }
    let keep_alive = seconds(file, "mqtt.keep_alive", m.keep_alive, 5.0)?;
    let reconnect_min = seconds(file, "mqtt.reconnect_min", m.reconnect_min, 0.01)?;
    let reconnect_max = seconds(file, "mqtt.reconnect_max", m.reconnect_max, 0.01)?;
    if reconnect_max < reconnect_min {
        return Err(invalid(file, "mqtt.reconnect_max", "is below mqtt.reconnect_min"));
    }
    let connect_timeout = seconds(file, "mqtt.connect_timeout", m.connect_timeout, 1.0)?;
    let password = one_secret(
        file,
        "mqtt.password",
        [
            None,
            m.password_file.map(|p| SecretSource::File(join(base, &p))),
            m.password_env.map(SecretSource::Env),
            m.password_credential.map(SecretSource::Credential),
        ],
    )
    .map_err(|_| {
        invalid(
            file,
            "mqtt.password_file",
            "password_file, password_env and password_credential exclude each other; keep one",
        )
    })?;
    if password.is_some() && m.username.is_none() {
        return Err(invalid(
            file,
            "mqtt.username",
            "is not set but a password source is; MQTT sends a password only with a user name",
        ));
    }
    let tls = match (m.tls, m.ca_file) {
        (false, None) => None,
        (false, Some(_)) => {
            return Err(invalid(file, "mqtt.tls", "is false but mqtt.ca_file is set; set tls = true to use it"))
        }
        (true, None) => {
            return Err(invalid(
                file,
                "mqtt.ca_file",
                "is not set; TLS needs the CA certificate (PEM) that signed the broker's",
            ))
        }
        (true, Some(ca)) => {
            if m.client_cert.is_some() != m.client_key.is_some() {
                return Err(invalid(
                    file,
                    "mqtt.client_key",
                    "client_cert and client_key go together; set both or neither",
                ));
            }
            Some(TlsFiles {
                ca_file: join(base, &ca),
                client_cert: m.client_cert.map(|p| join(base, &p)),
                client_key: m.client_key.map(|p| join(base, &p)),
            })
        }
    };
    if !topic_ok(&m.discovery_prefix) {
        return Err(invalid(
            file,
            "mqtt.discovery_prefix",
            format!("{:?} must be non-empty, without '+', '#' or a trailing '/'", m.discovery_prefix),
        ));
    }
    let diagnostics_interval = seconds(file, "mqtt.diagnostics_interval", m.diagnostics_interval, 1.0)?;
    let outbox_commit_interval = seconds(file, "mqtt.outbox_commit_interval", m.outbox_commit_interval, 0.0)?;
    if m.outbox_max_rows == 0 || m.outbox_max_bytes < 4096 {
        return Err(invalid(
            file,
            "mqtt.outbox_max_rows",
            "outbox_max_rows must be at least 1 and outbox_max_bytes at least 4096",
        ));
    }
    Ok(MqttConfig {
        enabled: m.enabled,
        client_id: m.client_id.unwrap_or_else(|| format!("lookout-{device_id}")),
        host: m.host,
        port: m.port,
        topic_prefix: m.topic_prefix,
        qos: m.qos,
        keep_alive,
        reconnect_min,
        reconnect_max,
        connect_timeout,
        username: m.username,
        password,
        tls,
        discovery_prefix: m.discovery.then_some(m.discovery_prefix),
        commands: m.commands,
        diagnostics_interval,
        outbox_max_rows: m.outbox_max_rows,
        outbox_max_bytes: m.outbox_max_bytes,
        outbox_commit_interval,
    })
}
