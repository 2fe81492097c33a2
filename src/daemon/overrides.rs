//! What commands changed (pause, interval, threshold), kept in the state
//! directory so a restart or a power cut does not undo them. The config
//! file stays the user's: `check-config` prints these as overrides.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub const FILE: &str = "overrides.json";

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ViewOverride {
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub paused: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<f32>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Overrides {
    #[serde(default)]
    pub views: BTreeMap<String, ViewOverride>,
}

#[derive(Debug, thiserror::Error)]
pub enum OverridesError {
    #[error(
        "{path}: cannot read the saved command overrides: {reason} (delete the file to start from the config alone)"
    )]
    Read { path: PathBuf, reason: String },
    #[error("{path}: cannot save the command overrides: {reason}")]
    Write { path: PathBuf, reason: String },
}

impl Overrides {
    pub fn path(state_dir: &Path) -> PathBuf {
        state_dir.join(FILE)
    }

    /// The saved overrides; none when the file does not exist.
    pub fn load(path: &Path) -> Result<Overrides, OverridesError> {
        let err = |reason: String| OverridesError::Read { path: path.to_owned(), reason };
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| err(e.to_string())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Overrides::default()),
            Err(e) => Err(err(e.to_string())),
        }
    }

    /// Writes the file whole (a temporary file renamed over it), so a power
    /// cut leaves the old or the new overrides, never half of them.
    pub fn save(&self, path: &Path) -> Result<(), OverridesError> {
        let err = |e: std::io::Error| OverridesError::Write { path: path.to_owned(), reason: e.to_string() };
        let tmp = path.with_extension("json.tmp");
        let bytes = serde_json::to_vec_pretty(self).unwrap_or_default();
        {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp).map_err(err)?;
            f.write_all(&bytes).map_err(err)?;
            f.sync_all().map_err(err)?;
        }
        std::fs::rename(&tmp, path).map_err(err)
    }

    pub fn is_empty(&self) -> bool {
        self.views.values().all(|v| *v == ViewOverride::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_round_trip_and_a_damaged_file_is_named() {
        let d = tempfile::tempdir().unwrap();
        let path = Overrides::path(d.path());
        assert_eq!(Overrides::load(&path).unwrap(), Overrides::default());
        let mut o = Overrides::default();
        o.views.insert("door".into(), ViewOverride { paused: true, interval: Some(5.0), threshold: None });
        o.save(&path).unwrap();
        assert_eq!(Overrides::load(&path).unwrap(), o);
        assert!(!o.is_empty());
        std::fs::write(&path, "{\"views\": 3").unwrap();
        let e = Overrides::load(&path).unwrap_err().to_string();
        assert!(e.contains("overrides.json") && e.contains("delete the file"), "{e}");
    }
}
