//! Thermal awareness. A Pi without a heatsink throttles within minutes of
//! continuous inference; classifying less often keeps it responsive instead
//! of cooking it. The sysfs paths are configurable (other boards, tests).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// `[thermal]` as written in the config file.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ThermalConfig {
    pub enabled: bool,
    /// Millidegrees Celsius, as the kernel's thermal zones report them.
    pub temp_path: PathBuf,
    /// The Pi firmware's throttle flags (hex, e.g. `0x50005`); absent on
    /// other boards, which is fine.
    pub throttle_path: PathBuf,
    /// Stretch the interval above this temperature (°C).
    pub limit_c: f32,
    /// The interval is multiplied by this while hot or throttled.
    pub stretch: f64,
}

impl Default for ThermalConfig {
    fn default() -> Self {
        ThermalConfig {
            enabled: true,
            temp_path: "/sys/class/thermal/thermal_zone0/temp".into(),
            throttle_path: "/sys/devices/platform/soc/soc:firmware/get_throttled".into(),
            limit_c: 80.0,
            stretch: 2.0,
        }
    }
}

impl ThermalConfig {
    /// The key and message of the first invalid value.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if !(self.limit_c.is_finite() && (20.0..=150.0).contains(&self.limit_c)) {
            return Err(("thermal.limit_c", format!("is {}; give degrees Celsius between 20 and 150", self.limit_c)));
        }
        if !(self.stretch.is_finite() && (1.0..=100.0).contains(&self.stretch)) {
            return Err(("thermal.stretch", format!("is {}; give a factor between 1 and 100", self.stretch)));
        }
        Ok(())
    }
}

/// One look at the board. `None` where the board does not report it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Reading {
    pub temp_c: Option<f32>,
    /// The Pi's "currently" flags: bit 0 under-voltage, 1 frequency capped,
    /// 2 throttled, 3 soft temperature limit.
    pub throttle_flags: Option<u32>,
}

impl Reading {
    /// Frequency capped, throttled or at the soft limit right now.
    /// Under-voltage alone is reported but does not slow lookout down.
    pub fn throttled(&self) -> bool {
        self.throttle_flags.is_some_and(|f| f & 0b1110 != 0)
    }

    pub fn hot(&self, cfg: &ThermalConfig) -> bool {
        self.throttled() || self.temp_c.is_some_and(|t| t > cfg.limit_c)
    }
}

fn read_trimmed(p: &Path) -> Option<String> {
    std::fs::read_to_string(p).ok().map(|s| s.trim().to_owned())
}

/// Reads the board's temperature and throttle flags; unreadable files give
/// `None`. Cheap enough to call once per classification (two small reads).
pub fn read(cfg: &ThermalConfig) -> Reading {
    let temp_c = read_trimmed(&cfg.temp_path).and_then(|s| s.parse::<f32>().ok()).map(|m| m / 1000.0);
    let throttle_flags = read_trimmed(&cfg.throttle_path).and_then(|s| {
        let hex = s.strip_prefix("throttled=").unwrap_or(&s);
        u32::from_str_radix(hex.trim_start_matches("0x"), 16).ok()
    });
    Reading { temp_c, throttle_flags }
}

/// The interval to use given a reading.
pub fn interval(base: Duration, reading: &Reading, cfg: &ThermalConfig) -> Duration {
    if cfg.enabled && reading.hot(cfg) {
        base.mul_f64(cfg.stretch)
    } else {
        base
    }
}

impl std::fmt::Display for Reading {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.temp_c {
            Some(t) => write!(f, "{t:.1} °C")?,
            None => write!(f, "temperature unknown")?,
        }
        if let Some(flags) = self.throttle_flags {
            write!(f, ", throttle flags {flags:#x}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(dir: &Path) -> ThermalConfig {
        ThermalConfig {
            temp_path: dir.join("temp"),
            throttle_path: dir.join("get_throttled"),
            limit_c: 70.0,
            stretch: 3.0,
            ..Default::default()
        }
    }

    #[test]
    fn readings_from_sysfs_files_stretch_the_interval() {
        let d = tempfile::tempdir().unwrap();
        let c = cfg(d.path());
        let base = Duration::from_secs(1);
        // (temp file, throttle file, expected reading, expected interval)
        let table: [(Option<&str>, Option<&str>, Reading, u64); 6] = [
            (None, None, Reading::default(), 1),
            (Some("65432\n"), None, Reading { temp_c: Some(65.432), throttle_flags: None }, 1),
            (Some("70001\n"), None, Reading { temp_c: Some(70.001), throttle_flags: None }, 3),
            (Some("50000"), Some("0x0\n"), Reading { temp_c: Some(50.0), throttle_flags: Some(0) }, 1),
            // Under-voltage now (bit 0) and in the past (bit 16): reported only.
            (Some("50000"), Some("0x10001\n"), Reading { temp_c: Some(50.0), throttle_flags: Some(0x10001) }, 1),
            // vcgencmd's format, throttled now.
            (
                Some("50000"),
                Some("throttled=0x50005\n"),
                Reading { temp_c: Some(50.0), throttle_flags: Some(0x50005) },
                3,
            ),
        ];
        for (temp, thr, want, secs) in table {
            for (p, v) in [(&c.temp_path, temp), (&c.throttle_path, thr)] {
                match v {
                    Some(v) => std::fs::write(p, v).unwrap(),
                    None => {
                        let _ = std::fs::remove_file(p);
                    }
                }
            }
            let r = read(&c);
            assert_eq!(r.temp_c.map(|t| (t * 1000.0).round()), want.temp_c.map(|t| (t * 1000.0).round()));
            assert_eq!(r.throttle_flags, want.throttle_flags);
            assert_eq!(interval(base, &r, &c), Duration::from_secs(secs), "{temp:?} {thr:?}");
        }
        let off = ThermalConfig { enabled: false, ..c.clone() };
        assert_eq!(interval(base, &Reading { temp_c: Some(99.0), throttle_flags: None }, &off), base);
        assert!(ThermalConfig { stretch: 0.5, ..c }.validate().unwrap_err().0 == "thermal.stretch");
    }
}
