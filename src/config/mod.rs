//! The configuration file: strict TOML in, the stages' own config types out.
//!
//! Strict because a typo in an unattended daemon's config must stop it at
//! start with the file, line and key named, not be silently ignored. Paths
//! are resolved against the config file's folder (systemd starts services in
//! `/`), and model parameters come from the model's manifest unless the
//! config overrides them.
//!
//! `raw.rs` is the file as written, `locate.rs` turns TOML errors into one
//! line with the key, `resolve.rs` builds each stage's type (the source's
//! [`SourceConfig`], the model's [`ModelConfig`], the publisher's
//! [`MqttConfig`], the views' [`ViewConfig`]...). Arrows run from here to
//! the stages, never back.

mod locate;
mod raw;
mod resolve;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::capture::health::HealthParams;
use crate::capture::SourceConfig;
use crate::daemon::ViewConfig;
use crate::model::manifest::{Manifest, ManifestError};
use crate::model::ModelConfig;
use crate::publish::MqttConfig;
use crate::thermal::ThermalConfig;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read the config file: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error("{path}:{line}: {message}")]
    Parse { path: PathBuf, line: usize, message: String },
    #[error("{path}: `{key}` {message}")]
    Invalid { path: PathBuf, key: String, message: String },
    #[error("{0}")]
    Manifest(#[from] ManifestError),
}

/// A validated configuration with absolute paths and model defaults filled in.
#[derive(Debug, Clone, Serialize)]
pub struct Config {
    #[serde(skip)]
    pub file: PathBuf,
    pub device: Device,
    pub sources: BTreeMap<String, SourceConfig>,
    #[serde(serialize_with = "views_by_name")]
    pub views: Vec<ViewConfig>,
    pub model: ModelConfig,
    pub mqtt: MqttConfig,
    pub thermal: ThermalConfig,
    pub health: HealthParams,
}

fn views_by_name<S: serde::Serializer>(views: &[ViewConfig], s: S) -> Result<S::Ok, S::Error> {
    s.collect_map(views.iter().map(|v| (&v.name, v)))
}

#[derive(Debug, Clone, Serialize)]
pub struct Device {
    /// Goes into MQTT topics and client ids, so restricted to `[A-Za-z0-9_-]`.
    pub id: String,
    pub name: String,
    /// Where the MQTT outbox, the saved command overrides and the custom
    /// classes live.
    pub state_dir: PathBuf,
}

impl Config {
    /// Reads, parses, validates and resolves a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::Read { path: path.to_owned(), reason: io_reason(&e) })?;
        Config::parse(&text, path)
    }

    /// Parses `text` as if read from `path` (relative paths resolve against
    /// `path`'s folder).
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let raw: raw::FileConfig = toml::from_str(text).map_err(|e| locate::parse_error(path, text, &e))?;
        let base = path.parent().map(Path::to_owned).unwrap_or_default();
        resolve::resolve(raw, path, &base)
    }

    /// The resolved configuration as TOML, for `lookout check-config`.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }

    /// Replaces the model (for `classify --model`): the manifest beside the
    /// new file supplies its defaults; the config's explicit overrides stay.
    pub fn with_model(mut self, model: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(&self.file).unwrap_or_default();
        let raw: Option<raw::FileConfig> = toml::from_str(&text).ok();
        let mut section = match raw {
            Some(raw) => raw.model,
            None => raw::ModelSection::bare(PathBuf::new()),
        };
        section.path = std::path::absolute(model).unwrap_or_else(|_| model.to_owned());
        section.manifest = None;
        // The new model's own manifest names its labels; without one, the
        // config's labels are the best guess (and are checked against the
        // model's output width at load).
        if Manifest::path_beside(&section.path).is_file() {
            section.labels = None;
        }
        let base = self.file.parent().map(Path::to_owned).unwrap_or_default();
        self.model = resolve::resolve_model(section, &self.file, &base)?;
        Ok(self)
    }

    /// Whether the file holds a secret (a camera password) that users
    /// other than root and lookout's could read; `check-config` warns.
    pub fn exposed_secret(&self) -> Option<String> {
        use std::os::unix::fs::PermissionsExt;
        let (name, _) = self.sources.iter().find(|(_, s)| s.holds_secret())?;
        let mode = std::fs::metadata(&self.file).ok()?.permissions().mode();
        (mode & 0o004 != 0).then(|| {
            format!(
                "{}: source `{name}` has a password in the file, which every user can read (mode {:o}): \
                 chmod 640 it, or move the password to a credential (${{credential:NAME}}, password_credential)",
                self.file.display(),
                mode & 0o777
            )
        })
    }
}

fn io_reason(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "no such file (check the path)".into(),
        std::io::ErrorKind::PermissionDenied => "permission denied (check the file's owner and mode)".into(),
        _ => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::camera::FormatPref;
    use crate::preprocess::ColorRange;
    use crate::secret::SecretSource;
    use std::time::Duration;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    fn fixture() -> (tempfile::TempDir, PathBuf) {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), "m.onnx", "not really onnx");
        write(d.path(), "labels.txt", "a\nb\n");
        std::fs::create_dir(d.path().join("frames")).unwrap();
        let cfg = d.path().join("lookout.toml");
        (d, cfg)
    }

    const BASE: &str =
        "[source]\nkind = \"files\"\npath = \"frames\"\n\n[model]\npath = \"m.onnx\"\nlabels = \"labels.txt\"\n";

    #[test]
    fn relative_paths_resolve_against_the_config_folder() {
        let (d, cfg) = fixture();
        let c = Config::parse(BASE, &cfg).unwrap();
        assert_eq!(c.model.path, d.path().join("m.onnx"));
        assert_eq!(c.model.labels, Some(d.path().join("labels.txt")));
        assert_eq!(c.views[0].interval, Duration::from_secs(1));
        assert_eq!((c.views[0].name.as_str(), c.views[0].source.as_str()), ("main", "main"));
        assert_eq!(c.mqtt.client_id, format!("lookout-{}", c.device.id));
    }

    #[test]
    fn the_default_id_is_the_kernel_host_name() {
        let (_d, cfg) = fixture();
        let mut uts: libc::utsname = unsafe { std::mem::zeroed() };
        assert_eq!(unsafe { libc::uname(&mut uts) }, 0);
        let node = unsafe { std::ffi::CStr::from_ptr(uts.nodename.as_ptr()) }.to_string_lossy().into_owned();
        let c = Config::parse(BASE, &cfg).unwrap();
        assert_eq!(c.device.id, resolve::device_id_from_host(&node));
        assert_eq!(resolve::device_id_from_host("cam.lan\n"), "cam_lan");
    }

    #[test]
    fn unknown_key_is_named_with_its_line() {
        let (_d, cfg) = fixture();
        let text = format!("{BASE}\n[schedule]\nintervall = 2.0\n");
        let e = Config::parse(&text, &cfg).unwrap_err().to_string();
        assert!(e.contains("lookout.toml:10:"), "{e}");
        assert!(e.contains("unknown field `intervall`"), "{e}");
        assert!(!e.contains('\n'), "one line: {e}");
    }

    #[test]
    fn region_of_interest_is_read_and_checked() {
        let (_d, cfg) = fixture();
        let with = |roi: &str| BASE.replace("labels.txt\"\n", &format!("labels.txt\"\nroi = {roi}\n"));
        let c = Config::parse(&with("[0.25, 0, 0.5, 1]"), &cfg).unwrap();
        assert_eq!(c.model.preprocess.roi, Some([0.25, 0.0, 0.5, 1.0]));
        assert_eq!(c.views[0].roi, Some([0.25, 0.0, 0.5, 1.0]), "the view takes the model's region");
        assert_eq!(Config::parse(BASE, &cfg).unwrap().model.preprocess.roi, None);
        for (roi, expect) in [
            ("[0.5, 0, 0.6, 1]", "outside the frame"),
            ("[0, 0, 0, 1]", "zero width"),
            ("[0, 0, 2, 1]", "outside 0..1"),
        ] {
            let e = Config::parse(&with(roi), &cfg).unwrap_err().to_string();
            assert!(e.contains("`model.roi`") && e.contains(expect), "{roi}: {e}");
        }
    }

    #[test]
    fn unknown_key_in_the_tagged_source_table_points_at_the_key() {
        let (_d, cfg) = fixture();
        let text = BASE.replace("path = \"frames\"\n", "path = \"frames\"\nfsp = 3\n");
        let e = Config::parse(&text, &cfg).unwrap_err().to_string();
        assert!(e.contains("lookout.toml:4:") && e.contains("`fsp`"), "{e}");
    }

    #[test]
    fn wrong_type_and_out_of_range_values_are_rejected() {
        let (_d, cfg) = fixture();
        let cases = [
            ("[schedule]\ninterval = \"fast\"\n", "lookout.toml:10:"),
            ("[schedule]\ninterval = 0\n", "schedule.interval"),
            ("[mqtt]\nqos = 3\n", "mqtt.qos"),
            ("[mqtt]\ntopic_prefix = \"a/#\"\n", "mqtt.topic_prefix"),
            ("[device]\nid = \"a b\"\n", "device.id"),
        ];
        for (extra, expect) in cases {
            let e = Config::parse(&format!("{BASE}\n{extra}"), &cfg).unwrap_err().to_string();
            assert!(e.contains(expect), "{extra:?} gave {e}");
        }
        let e = Config::parse(&BASE.replace("top_k", "x").replace("labels.txt\"\n", "labels.txt\"\ntop_k = 0\n"), &cfg)
            .unwrap_err();
        assert!(e.to_string().contains("model.top_k"), "{e}");
    }

    #[test]
    fn mqtt_security_and_outbox_keys_are_checked() {
        let (d, cfg) = fixture();
        let cases = [
            ("[mqtt]\nusername = \"u\"\npassword_file = \"pw\"\npassword_env = \"PW\"\n", "exclude each other"),
            ("[mqtt]\npassword_env = \"PW\"\n", "mqtt.username"),
            ("[mqtt]\ntls = true\n", "mqtt.ca_file"),
            ("[mqtt]\nca_file = \"ca.pem\"\n", "mqtt.tls"),
            ("[mqtt]\ntls = true\nca_file = \"ca.pem\"\nclient_cert = \"c.pem\"\n", "client_key"),
            ("[mqtt]\ndiscovery_prefix = \"ha/\"\n", "mqtt.discovery_prefix"),
            ("[mqtt]\noutbox_max_rows = 0\n", "mqtt.outbox_max_rows"),
            ("[mqtt]\npassword = \"in-the-config\"\n", "unknown field `password`"),
        ];
        for (extra, expect) in cases {
            let e = Config::parse(&format!("{BASE}\n{extra}"), &cfg).unwrap_err().to_string();
            assert!(e.contains(expect), "{extra:?} gave {e}");
        }
        let text = format!(
            "{BASE}\n[device]\nstate_dir = \"state\"\n\n[mqtt]\nusername = \"cam\"\npassword_file = \"pw\"\n\
             tls = true\nca_file = \"ca.pem\"\ndiscovery = false\n"
        );
        let c = Config::parse(&text, &cfg).unwrap();
        assert_eq!(c.device.state_dir, d.path().join("state"));
        assert_eq!(c.mqtt.password, Some(SecretSource::File(d.path().join("pw"))));
        assert_eq!(c.mqtt.tls.unwrap().ca_file, d.path().join("ca.pem"));
        assert_eq!(c.mqtt.discovery_prefix, None);
        assert_eq!(Config::parse(BASE, &cfg).unwrap().mqtt.discovery_prefix.as_deref(), Some("homeassistant"));
    }

    #[test]
    fn missing_model_names_the_path() {
        let (_d, cfg) = fixture();
        let e = Config::parse(&BASE.replace("m.onnx", "gone.onnx"), &cfg).unwrap_err().to_string();
        assert!(e.contains("model.path") && e.contains("gone.onnx") && e.contains("does not exist"), "{e}");
    }

    #[test]
    fn missing_config_file_says_so() {
        let e = Config::load(Path::new("/nonexistent/lookout.toml")).unwrap_err().to_string();
        assert!(e.contains("/nonexistent/lookout.toml") && e.contains("no such file"), "{e}");
    }

    #[test]
    fn live_sources_parse_with_defaults_and_reject_bad_values() {
        let (_d, cfg) = fixture();
        let model = "\n[model]\npath = \"m.onnx\"\nlabels = \"labels.txt\"\n";
        let parse = |source: &str| Config::parse(&format!("[source]\n{source}{model}"), &cfg);
        let c = parse("kind = \"camera\"\n").unwrap();
        match &c.sources["main"] {
            SourceConfig::Camera { device, width, height, fps, format, frame_timeout, .. } => {
                assert_eq!((device.as_str(), *width, *height, *fps, *format), ("0", 640, 480, 15, FormatPref::Auto));
                assert_eq!(*frame_timeout, Duration::from_secs(5));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(c.sources["main"].color_range(), ColorRange::Limited);
        let full = parse("kind = \"camera\"\ncolor_range = \"full\"\n").unwrap();
        assert_eq!(full.sources["main"].color_range(), ColorRange::Full);
        assert!(full.to_toml().contains("color_range = \"full\""), "{}", full.to_toml());
        let e = parse("kind = \"camera\"\ncolor_range = \"pc\"\n").unwrap_err().to_string();
        assert!(e.contains(":3: `color_range`: unknown variant `pc`") && e.contains("limited"), "{e}");
        let e = parse("kind = \"camera\"\nwidth = \"wide\"\n").unwrap_err().to_string();
        assert!(e.contains(":3: `width`: invalid type: string \"wide\""), "{e}");
        let e = parse("kind = \"camera\"\nformat = 7\n").unwrap_err().to_string();
        assert!(e.contains(":3: `format`: invalid type: integer `7`"), "{e}");
        let c = parse("kind = \"snapshot\"\nurl = \"http://cam/snap.jpg\"\nusername = \"u\"\npassword = \"hunter2\"\n")
            .unwrap();
        assert!(
            matches!(&c.sources["main"], SourceConfig::Snapshot { interval, .. } if *interval == Duration::from_secs(1))
        );
        assert!(!c.to_toml().contains("hunter2"), "check-config must not print the password");
        let c = parse("kind = \"command\"\ncommand = [\"rpicam-vid\", \"-o\", \"-\"]\n").unwrap();
        assert!(matches!(&c.sources["main"], SourceConfig::Command { command, .. } if command.len() == 3));
        assert_eq!(c.health, HealthParams::default());

        let cases = [
            ("kind = \"camera\"\nformat = \"h264\"\n", "unknown variant `h264`"),
            ("kind = \"camera\"\nfps = 0\n", "source.fps"),
            ("kind = \"camera\"\nreconnect_min = 10.0\nreconnect_max = 1.0\n", "source.reconnect_max"),
            ("kind = \"camera\"\ndevise = \"0\"\n", "unknown field `devise`"),
            ("kind = \"command\"\ncommand = []\n", "source.command"),
            ("kind = \"snapshot\"\nurl = \"cam/snap.jpg\"\n", "source.url"),
            ("kind = \"snapshot\"\nurl = \"http://c/s\"\npassword = \"p\"\n", "source.password"),
            ("kind = \"webcam\"\n", "unknown variant `webcam`"),
        ];
        for (source, expect) in cases {
            let e = parse(source).unwrap_err().to_string();
            assert!(e.contains(expect), "{source:?} gave {e}");
        }
        let e = Config::parse(&format!("{BASE}\n[health]\ndark_below = 300\n"), &cfg).unwrap_err().to_string();
        assert!(e.contains("health.dark_below"), "{e}");
    }

    #[test]
    fn several_sources_and_views_resolve_with_defaults_from_the_top() {
        let (_d, cfg) = fixture();
        std::fs::create_dir(_d.path().join("more")).unwrap();
        let model = "[model]\npath = \"m.onnx\"\nlabels = \"labels.txt\"\nroi = [0.0, 0.0, 1.0, 0.5]\n";
        let text = format!(
            "[sources.a]\nkind = \"files\"\npath = \"frames\"\n[sources.b]\nkind = \"files\"\npath = \"more\"\n\
             [views.door]\nsource = \"a\"\nroi = [0.5, 0.0, 0.5, 1.0]\ninterval = 5\n\
             [views.door.triggers]\nenabled = true\nthreshold = 0.7\n\
             [views.bins]\nsource = \"a\"\nsnapshots = true\n\
             [views.porch]\nsource = \"b\"\n{model}[schedule]\ninterval = 2\n"
        );
        let c = Config::parse(&text, &cfg).unwrap();
        assert_eq!(c.sources.keys().collect::<Vec<_>>(), ["a", "b"]);
        type Row<'a> = (&'a str, &'a str, Option<[f32; 4]>, f64, bool, bool);
        let v: Vec<Row> = c
            .views
            .iter()
            .map(|v| {
                (
                    v.name.as_str(),
                    v.source.as_str(),
                    v.roi,
                    v.interval.as_secs_f64(),
                    v.triggers.enabled,
                    v.snapshots.is_some(),
                )
            })
            .collect();
        assert_eq!(
            v,
            [
                ("bins", "a", Some([0.0, 0.0, 1.0, 0.5]), 2.0, false, true),
                ("door", "a", Some([0.5, 0.0, 0.5, 1.0]), 5.0, true, false),
                ("porch", "b", Some([0.0, 0.0, 1.0, 0.5]), 2.0, false, false),
            ]
        );
        let toml = c.to_toml();
        assert!(toml.contains("[views.door.triggers]") && toml.contains("[sources.b]"), "{toml}");

        // A source no view names is one view of its whole picture, named after it.
        let porch_implicit = text.replace("[views.porch]\nsource = \"b\"\n", "");
        let c = Config::parse(&porch_implicit, &cfg).unwrap();
        let b = c.views.iter().find(|v| v.source == "b").unwrap();
        assert_eq!((b.name.as_str(), b.roi), ("b", Some([0.0, 0.0, 1.0, 0.5])));
        // Without views, each source is one view named after it.
        let sources_only = format!("{}{model}", text.split("[views.door]").next().unwrap());
        let names: Vec<String> =
            Config::parse(&sources_only, &cfg).unwrap().views.into_iter().map(|v| v.name).collect();
        assert_eq!(names, ["a", "b"]);
    }

    #[test]
    fn views_and_sources_name_what_is_wrong() {
        let (_d, cfg) = fixture();
        let model = "[model]\npath = \"m.onnx\"\nlabels = \"labels.txt\"\n";
        let two =
            "[sources.a]\nkind = \"files\"\npath = \"frames\"\n[sources.b]\nkind = \"files\"\npath = \"frames\"\n";
        let cases = [
            (
                format!("{BASE}[sources.a]\nkind = \"files\"\npath = \"frames\"\n"),
                "`sources` and [source] are both set",
            ),
            (model.to_owned(), "`source` is missing"),
            (format!("{two}[views.v]\n{model}"), "`views.v.source` is missing; name one of a, b"),
            (format!("{two}[views.v]\nsource = \"c\"\n{model}"), "`views.v.source` \"c\" is not a source"),
            (
                format!("{two}[views.command]\nsource = \"a\"\n[views.x]\nsource = \"b\"\n{model}"),
                "`views.command` view names",
            ),
            (
                format!("{two}[views.b]\nsource = \"a\"\n{model}"),
                "`sources.b` has no view, and the view it would get is taken",
            ),
            (
                format!("{two}[views.v]\nsource = \"a\"\nroi = [0.5, 0, 0.6, 1]\n[views.w]\nsource = \"b\"\n{model}"),
                "`views.v.roi`",
            ),
            (
                format!("{two}[views.v]\nsource = \"a\"\nintervall = 1\n[views.w]\nsource = \"b\"\n{model}"),
                "unknown field `intervall`",
            ),
            (format!("{BASE}[views.v.triggers]\nthreshold = 2\n"), "`views.v.triggers.threshold`"),
            (format!("{BASE}[snapshots]\nquality = 0\n"), "`snapshots.quality`"),
        ];
        for (text, expect) in cases {
            let e = Config::parse(&text, &cfg).unwrap_err().to_string();
            assert!(e.contains(expect), "{text:?} gave {e}");
            assert!(!e.contains('\n'), "{e}");
        }
    }

    #[test]
    fn a_password_in_a_world_readable_config_is_named() {
        use std::os::unix::fs::PermissionsExt;
        let (d, cfg) = fixture();
        let model = "[model]\npath = \"m.onnx\"\nlabels = \"labels.txt\"\n";
        let inline = format!(
            "[source]\nkind = \"snapshot\"\nurl = \"http://cam/s.jpg\"\nusername = \"u\"\npassword = \"hunter2\"\n{model}"
        );
        let in_url = format!(
            "[source]\nkind = \"command\"\ncommand = [\"ffmpeg\", \"-i\", \"rtsp://u:hunter2@cam/1\"]\n{model}"
        );
        let credential = format!(
            "[source]\nkind = \"command\"\ncommand = [\"ffmpeg\", \"-i\", \"rtsp://u:${{credential:cam}}@cam/1\"]\n{model}"
        );
        for (text, exposed) in [(inline, true), (in_url, true), (credential, false)] {
            std::fs::write(&cfg, &text).unwrap();
            std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o644)).unwrap();
            let c = Config::load(&cfg).unwrap();
            assert!(!c.to_toml().contains("hunter2"), "check-config prints no password: {}", c.to_toml());
            let warning = c.exposed_secret();
            assert_eq!(warning.is_some(), exposed, "{text}: {warning:?}");
            if let Some(w) = warning {
                assert!(w.contains("mode 644") && w.contains("chmod 640") && w.contains("source `main`"), "{w}");
            }
            std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o640)).unwrap();
            assert_eq!(Config::load(&cfg).unwrap().exposed_secret(), None);
        }
        let _ = d;
    }

    #[test]
    fn the_documented_example_parses() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        for name in ["config/lookout.toml", "config/demo.toml"] {
            let c = Config::load(&root.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(c.model.path.is_absolute() || c.model.path.starts_with(root), "{name}");
        }
    }
}
