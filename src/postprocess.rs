//! Logits -> a ranked [`Classification`], the result type that publishing,
//! logging and the `classify` command all speak.

use std::time::SystemTime;

use serde::Serialize;

/// One ranked class.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Ranked {
    pub index: usize,
    pub label: String,
    /// Softmax probability.
    pub score: f32,
}

/// Milliseconds spent per stage, so users can see where a frame's time goes.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Latency {
    pub preprocess: f64,
    pub inference: f64,
    pub total: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ModelRef {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

/// One classified frame.
#[derive(Debug, Clone, Serialize)]
pub struct Classification {
    /// Result counter, so consumers can spot gaps and duplicates.
    pub seq: u64,
    /// The view (named region of a source) classified; part of the topic.
    pub view: String,
    /// The frame's own counter from its source.
    pub frame_seq: u64,
    #[serde(serialize_with = "rfc3339")]
    pub captured_at: SystemTime,
    /// Top-1, repeated at the top level for simple consumers (Home Assistant
    /// templates, `jq .label`).
    pub label: String,
    pub index: usize,
    pub score: f32,
    pub top_k: Vec<Ranked>,
    pub latency_ms: Latency,
    /// How long after its due time the classification started (another
    /// view was being classified, or the model is slower than the
    /// interval); 0 for a result a command asked for.
    pub late_ms: f64,
    pub model: ModelRef,
    /// Camera health when the frame was taken ("ok", "stale", "frozen",
    /// "dark"); Home Assistant's camera-problem sensor reads it.
    pub health: String,
    /// The smoothed trigger state, when `[triggers]` is enabled.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trigger: Option<crate::triggers::TriggerState>,
}

pub fn rfc3339<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    let t = time::OffsetDateTime::from(*t);
    let text = t.format(&time::format_description::well_known::Rfc3339).map_err(serde::ser::Error::custom)?;
    s.serialize_str(&text)
}

/// Numerically stable softmax.
pub fn softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exp: Vec<f32> = logits.iter().map(|&l| (l - max).exp()).collect();
    let sum: f32 = exp.iter().sum();
    exp.into_iter().map(|e| e / sum).collect()
}

/// The `k` most probable classes, best first; ties keep the lower index.
pub fn top_k(logits: &[f32], labels: &[String], k: usize) -> Vec<Ranked> {
    let probs = softmax(logits);
    let mut order: Vec<usize> = (0..probs.len()).collect();
    // NaN logits (a broken model) sort last instead of panicking.
    order.sort_by(|&a, &b| probs[b].partial_cmp(&probs[a]).unwrap_or(std::cmp::Ordering::Equal).then(a.cmp(&b)));
    order
        .into_iter()
        .take(k)
        .map(|i| Ranked { index: i, label: labels.get(i).cloned().unwrap_or_else(|| i.to_string()), score: probs[i] })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softmax_sums_to_one_and_survives_large_logits() {
        let p = softmax(&[1000.0, 1000.0, 0.0]);
        assert!((p[0] - 0.5).abs() < 1e-6 && (p[1] - 0.5).abs() < 1e-6 && p[2] < 1e-30);
        let p = softmax(&[1.0, 2.0, 3.0]);
        assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!((p[2] - 0.665_240_9).abs() < 1e-6);
    }

    #[test]
    fn top_k_ranks_and_labels() {
        let labels: Vec<String> = ["a", "b", "c", "d"].map(String::from).to_vec();
        let r = top_k(&[0.1, 3.0, 3.0, -1.0], &labels, 3);
        assert_eq!(r.iter().map(|r| r.index).collect::<Vec<_>>(), vec![1, 2, 0]);
        assert_eq!(r[0].label, "b");
        assert_eq!(top_k(&[0.0, 1.0], &labels[..2], 10).len(), 2);
    }
}
