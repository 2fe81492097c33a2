//! The retained `diagnostics` payload: what someone debugging a camera in
//! the field asks first. Also written to `<state_dir>/diagnostics.json`,
//! because the broker is exactly what is missing when it matters most.

use std::path::Path;
use std::time::Instant;

use serde_json::{json, Value};

use crate::daemon::Stats;

/// What the MQTT thread knows beyond the daemon's counters.
pub struct Health {
    pub started: Instant,
    pub stats: Stats,
    pub inference_ms: Option<f64>,
    pub total_ms: Option<f64>,
    pub camera: String,
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
            camera: "unknown".into(),
            connected: false,
            connects: 0,
            failed_attempts: 0,
            last_error: None,
        }
    }

    pub fn payload(&self, outbox_depth: u64, outbox_bytes: u64, outbox_dropped: u64) -> Value {
        let s = &self.stats;
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
            "latency_ms": { "inference": self.inference_ms, "total": self.total_ms },
            "outbox": { "depth": outbox_depth, "bytes": outbox_bytes, "dropped": outbox_dropped },
            "camera_health": self.camera,
            "cpu_temperature_c": cpu_temperature(Path::new("/sys/class/thermal")),
            "throttled": throttled(),
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
/// e.g. "0x50005" for under-voltage now and before; `None` elsewhere.
fn throttled() -> Option<String> {
    let text = std::fs::read_to_string("/sys/devices/platform/soc/soc:firmware/get_throttled").ok()?;
    let v = u64::from_str_radix(text.trim().trim_start_matches("0x"), 16).ok()?;
    Some(format!("{v:#x}"))
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
