//! The retained `diagnostics` payload: what someone debugging a camera in
//! the field asks first. Also written to `<state_dir>/diagnostics.json`,
//! because the broker is exactly what is missing when it matters most.

use std::path::Path;
use std::time::Instant;

use serde_json::{json, Value};

use crate::stats::Stats;

/// What the MQTT thread knows beyond the daemon's counters.
pub struct Health {
    pub started: Instant,
    pub stats: Stats,
    pub inference_ms: Option<f64>,
    pub total_ms: Option<f64>,
    pub connected: bool,
    pub connects: u64,
    pub failed_attempts: u64,
    pub last_error: Option<String>,
}

impl Health {
    pub fn new() -> Health {
        Health {
            started: Instant::now(),
            stats: Stats::default(),
            inference_ms: None,
            total_ms: None,
            connected: false,
            connects: 0,
            failed_attempts: 0,
            last_error: None,
        }
    }

    pub fn payload(&self, outbox_depth: u64, outbox_bytes: u64, outbox_dropped: u64) -> Value {
        let s = &self.stats;
        let throttled = throttled();
        json!({
            "version": env!("CARGO_PKG_VERSION"),
            "uptime_s": self.started.elapsed().as_secs(),
            "frames": {
                "captured": s.captured,
                "dropped": s.dropped,
                "classified": s.classified,
                "bad": s.bad_frames,
                "capture_errors": s.capture_errors,
                "inference_errors": s.inference_errors,
            },
            "latency_ms": { "inference": self.inference_ms.map(round1), "total": self.total_ms.map(round1) },
            "skipped_periods": s.skipped_periods,
            "outbox": { "depth": outbox_depth, "bytes": outbox_bytes, "dropped": outbox_dropped },
            "camera_health": s.worst_health(),
            "sources": s.health,
            "cpu_temperature_c": cpu_temperature(Path::new("/sys/class/thermal")),
            "throttled": throttled.map(|v| format!("{v:#x}")),
            // The "currently" bits: under-voltage, capped, throttled, soft limit.
            "throttled_now": throttled.map(|v| v & 0xf != 0),
            "mqtt": {
                "connected": self.connected,
                "connects": self.connects,
                "failed_attempts": self.failed_attempts,
                "last_error": self.last_error,
            },
        })
    }
}

/// The CPU's thermal zone (Raspberry Pi: `cpu-thermal`; Jetson:
/// `CPU-therm`), else the first zone; `None` where the board has none.
fn cpu_temperature(root: &Path) -> Option<f64> {
    let mut zones: Vec<_> = std::fs::read_dir(root).ok()?.flatten().map(|e| e.path()).collect();
    zones.retain(|z| z.file_name().is_some_and(|n| n.to_string_lossy().starts_with("thermal_zone")));
    zones.sort();
    let kind = |z: &Path| std::fs::read_to_string(z.join("type")).unwrap_or_default().to_lowercase();
    let zone = zones.iter().find(|z| kind(z).contains("cpu")).or(zones.first())?;
    let milli: f64 = std::fs::read_to_string(zone.join("temp")).ok()?.trim().parse().ok()?;
    Some((milli / 100.0).round() / 10.0)
}

/// The Raspberry Pi firmware's throttling flags (`vcgencmd get_throttled`),
/// e.g. 0x50005 for under-voltage now and before; `None` elsewhere.
fn throttled() -> Option<u64> {
    let text = std::fs::read_to_string("/sys/devices/platform/soc/soc:firmware/get_throttled").ok()?;
    u64::from_str_radix(text.trim().trim_start_matches("0x"), 16).ok()
}

/// Milliseconds to one decimal: more is noise, and every digit that
/// changes makes Home Assistant record a new value.
fn round1(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}

/// Replaces `path` atomically, so a reader never sees half a file.
pub fn write_file(path: &Path, payload: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, payload)?;
    std::fs::rename(tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cpu_zone_wins_over_the_first_one() {
        let d = tempfile::tempdir().unwrap();
        for (zone, kind, temp) in [("thermal_zone0", "gpu-thermal", "30000"), ("thermal_zone1", "cpu-thermal", "48312")]
        {
            std::fs::create_dir(d.path().join(zone)).unwrap();
            std::fs::write(d.path().join(zone).join("type"), format!("{kind}\n")).unwrap();
            std::fs::write(d.path().join(zone).join("temp"), format!("{temp}\n")).unwrap();
        }
        assert_eq!(cpu_temperature(d.path()), Some(48.3));
        assert_eq!(cpu_temperature(&d.path().join("missing")), None);
    }
}
