//! The daemon's counters, shared by the loop (which counts), the publisher
//! (which reports them as diagnostics) and `main` (which logs a summary).
//! A module of its own so that publishing does not depend on the loop.

use std::collections::BTreeMap;

use crate::capture::health::Health;

#[derive(Debug, Default, Clone, PartialEq)]
pub struct Stats {
    /// Frames the sources delivered, over all sources.
    pub captured: u64,
    /// Frames a live source overwrote before any view looked at them.
    pub dropped: u64,
    pub capture_errors: u64,
    /// Frames that could not be decoded or preprocessed.
    pub bad_frames: u64,
    pub inference_errors: u64,
    pub classified: u64,
    pub publish_errors: u64,
    /// Frames not classified because `health.skip_unhealthy` is set.
    pub unhealthy_skipped: u64,
    /// Whole classification periods the views fell behind (several views
    /// due at once on a slow model): the loop never catches up in a burst.
    pub skipped_periods: u64,
    /// Each source's health, by source name.
    pub health: BTreeMap<String, Health>,
}

impl Stats {
    /// The worst health over all sources: what "the camera" is when there
    /// is one.
    pub fn worst_health(&self) -> Health {
        self.health.values().copied().max_by_key(|h| *h != Health::Ok).unwrap_or_default()
    }
}
