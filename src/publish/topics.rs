//! The MQTT topics of one device, in one place (README's table is this).
//! Daemon-wide topics sit at `<prefix>/<device>/`, each view's at
//! `<prefix>/<device>/<view>/`; view names that would collide with a
//! daemon topic are refused by the config.

/// Names a view may not take: they are the daemon's own topics.
pub const RESERVED: [&str; 4] = ["availability", "diagnostics", "command", "reply"];

#[derive(Debug, Clone)]
pub struct Topics {
    base: String,
    pub availability: String,
    pub diagnostics: String,
    pub command: String,
    pub reply: String,
    /// `(discovery prefix, Home Assistant's status topic)` when discovery is on.
    discovery: Option<(String, String)>,
}

impl Topics {
    pub fn new(prefix: &str, device: &str, discovery_prefix: Option<&str>) -> Topics {
        let base = format!("{prefix}/{device}");
        Topics {
            availability: format!("{base}/availability"),
            diagnostics: format!("{base}/diagnostics"),
            command: format!("{base}/command"),
            reply: format!("{base}/reply"),
            discovery: discovery_prefix.map(|p| (p.to_owned(), format!("{p}/status"))),
            base,
        }
    }

    /// A view's topic: `result`, `state`, `health`, `control`, `snapshot`.
    pub fn view(&self, view: &str, what: &str) -> String {
        format!("{}/{view}/{what}", self.base)
    }

    /// Home Assistant's device config topic for `object` (a device id).
    pub fn discovery_config(&self, object: &str) -> Option<String> {
        self.discovery.as_ref().map(|(p, _)| format!("{p}/device/{object}/config"))
    }

    /// Where Home Assistant says `online` when it (re)starts.
    pub fn ha_status(&self) -> Option<&str> {
        self.discovery.as_ref().map(|(_, s)| s.as_str())
    }
}
