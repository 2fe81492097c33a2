//! A view: a named region of one source that the model classifies on its
//! own schedule, with its own triggers. One camera may hold several (the
//! garage door and the bins); several cameras share the one loaded model.

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::preprocess::{PreprocessParams, Preprocessor};
use crate::snapshot::{Ring, SnapshotConfig};
use crate::triggers::{Triggers, TriggersConfig};

/// A view as the config describes it.
#[derive(Debug, Clone, Serialize)]
pub struct ViewConfig {
    /// Part of the view's MQTT topics.
    pub name: String,
    /// The source's name.
    pub source: String,
    /// Region of interest `[x, y, w, h]`, fractions of the frame.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub roi: Option<[f32; 4]>,
    /// Side of the centre square, as a fraction of the region's short side.
    pub crop_fraction: f32,
    #[serde(serialize_with = "secs")]
    pub interval: Duration,
    pub triggers: TriggersConfig,
    /// What the model saw, published and kept; `None`: off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapshots: Option<SnapshotConfig>,
}

pub fn secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

/// What the daemon gets per view: its config, the model's preprocessing
/// with the view's region, and its trigger stage (checked against the
/// model's labels by the caller).
pub struct View {
    pub config: ViewConfig,
    pub preprocess: PreprocessParams,
    pub triggers: Option<Triggers>,
}

impl View {
    /// A view of `source` with `model`'s preprocessing and no triggers.
    pub fn plain(name: &str, source: &str, model: &PreprocessParams, interval: Duration) -> View {
        View {
            config: ViewConfig {
                name: name.into(),
                source: source.into(),
                roi: model.roi,
                crop_fraction: model.crop_fraction,
                interval,
                triggers: TriggersConfig::default(),
                snapshots: None,
            },
            preprocess: model.clone(),
            triggers: None,
        }
    }
}

/// A view while the daemon runs.
pub(super) struct Running {
    pub name: String,
    /// Index into the daemon's sources.
    pub source: usize,
    pub pre: Preprocessor,
    /// The model input's normalization, to read luma back from it.
    pub mean: [f32; 3],
    pub std: [f32; 3],
    pub triggers: Option<Triggers>,
    pub interval: Duration,
    pub paused: bool,
    pub next_due: Instant,
    /// The generation of the last frame this view classified (or skipped).
    pub last_gen: u64,
    /// `classify` commands waiting for this view's next result.
    pub forced: Vec<crate::command::Request>,
    pub roi: Option<[f32; 4]>,
    pub crop_fraction: f32,
    pub snapshots: Option<SnapshotConfig>,
    /// Snapshots kept on disk, when `keep` > 0 and there is a state dir.
    pub ring: Option<Ring>,
    pub last_snapshot: Option<Instant>,
    /// A command asked for a snapshot with the next result.
    pub snapshot_asked: bool,
    /// The last result's label, to see a change without triggers.
    pub last_label: Option<String>,
}

impl Running {
    pub fn control(&self) -> crate::command::Control {
        use crate::command::Control;
        Control {
            paused: self.paused,
            interval: self.interval.as_secs_f64(),
            threshold: self.triggers.as_ref().map(|t| t.threshold()),
        }
    }
}
