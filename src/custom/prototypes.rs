//! Nearest class mean under cosine similarity, with an `unknown` threshold
//! per class calibrated from the examples themselves.
//!
//! Each class is the normalized mean of its examples' normalized embeddings.
//! A query belongs to the class whose mean is most similar; it is `unknown`
//! when that similarity is below the class's threshold, halfway between
//! what a picture of the class scores and what pictures of the other
//! classes score against it:
//! - a picture of the class: each example's similarity to the mean of the
//!   *other* examples of its class (leave-one-out), averaged; a class with
//!   one example takes the average over the classes that have more;
//! - the others: the other classes' examples against this class's mean.
//!
//! With a single class there are no others: the threshold is then `SPREAD`
//! standard deviations of the leave-one-out similarities below their mean.
//! When no class has two examples nothing is ever unknown. On the digits
//! experiment (tools/FEWSHOT.md) halfway kept held-out pictures of taught
//! classes unknown in about 1 % of cases, where 3 standard deviations below
//! the leave-one-out mean made it 9 % (the similarities have long tails).

use serde::Serialize;

/// With a single class: how many standard deviations of the leave-one-out
/// similarities the threshold sits below their mean.
pub const SPREAD: f32 = 3.0;

/// The best class for a query.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CustomMatch {
    /// The nearest class, even when the query is `unknown`.
    pub label: String,
    /// Cosine similarity to that class's mean, -1..1.
    pub score: f32,
    /// Below the class's threshold: far from every class.
    pub unknown: bool,
}

#[derive(Debug, Clone, Default)]
pub struct Prototypes {
    labels: Vec<String>,
    /// One normalized mean per class, `width` values each, back to back.
    means: Vec<f32>,
    width: usize,
    /// Per class; `None` while nothing could be calibrated.
    thresholds: Vec<Option<f32>>,
}

impl Prototypes {
    /// Classes from `(class index, embedding)` examples, `labels[i]` naming
    /// class `i`. Classes without an example are left out. Every embedding
    /// has the same width (the caller checks).
    pub fn fit(labels: &[String], examples: &[(usize, &[f32])]) -> Prototypes {
        let width = examples.first().map_or(0, |(_, e)| e.len());
        let unit: Vec<(usize, Vec<f32>)> = examples.iter().map(|(c, e)| (*c, normalized(e))).collect();
        let mut sums = vec![vec![0f32; width]; labels.len()];
        let mut counts = vec![0usize; labels.len()];
        for (c, e) in &unit {
            counts[*c] += 1;
            sums[*c].iter_mut().zip(e).for_each(|(s, v)| *s += v);
        }
        let means: Vec<Vec<f32>> = sums.iter().map(|s| normalized(s)).collect();
        // Leave-one-out similarities, per class, and the other classes'
        // examples against each class's mean.
        let mut loo: Vec<Vec<f32>> = vec![Vec::new(); labels.len()];
        let mut others: Vec<Vec<f32>> = vec![Vec::new(); labels.len()];
        for (c, e) in &unit {
            if counts[*c] >= 2 {
                let rest: Vec<f32> = sums[*c].iter().zip(e).map(|(s, v)| s - v).collect();
                loo[*c].push(dot(e, &normalized(&rest)));
            }
            for (o, mean) in means.iter().enumerate() {
                if o != *c && counts[o] > 0 {
                    others[o].push(dot(e, mean));
                }
            }
        }
        let avg = |v: &[f32]| (!v.is_empty()).then(|| v.iter().sum::<f32>() / v.len() as f32);
        let all_loo: Vec<f32> = loo.iter().flatten().copied().collect();
        let spread = pooled_std(&loo);
        let mut p = Prototypes { width, ..Default::default() };
        for (c, label) in labels.iter().enumerate() {
            if counts[c] == 0 {
                continue;
            }
            let own = avg(&loo[c]).or(avg(&all_loo));
            let threshold = match (own, avg(&others[c])) {
                (Some(own), Some(other)) => Some((own + other) / 2.0),
                (Some(own), None) => spread.map(|sd| own - SPREAD * sd),
                (None, _) => None,
            };
            p.labels.push(label.clone());
            p.means.extend_from_slice(&means[c]);
            p.thresholds.push(threshold);
        }
        p
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    pub fn width(&self) -> usize {
        self.width
    }

    /// The class names, in the order `fit` saw them.
    pub fn labels(&self) -> &[String] {
        &self.labels
    }

    /// The unknown threshold of a class, if calibrated.
    pub fn threshold(&self, label: &str) -> Option<f32> {
        self.labels.iter().position(|l| l == label).and_then(|i| self.thresholds[i])
    }

    /// The nearest class; `None` without classes or for an embedding of
    /// another width. A few thousand multiply-adds: no allocation but the
    /// label.
    pub fn classify(&self, embedding: &[f32]) -> Option<CustomMatch> {
        if self.is_empty() || embedding.len() != self.width {
            return None;
        }
        let norm = dot(embedding, embedding).sqrt().max(f32::MIN_POSITIVE);
        let (best, score) = self
            .means
            .chunks_exact(self.width)
            .map(|m| dot(m, embedding) / norm)
            .enumerate()
            .fold((0, f32::NEG_INFINITY), |a, (i, s)| if s > a.1 { (i, s) } else { a });
        let unknown = self.thresholds[best].is_some_and(|t| score < t);
        Some(CustomMatch { label: self.labels[best].clone(), score, unknown })
    }
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn normalized(v: &[f32]) -> Vec<f32> {
    let n = dot(v, v).sqrt().max(f32::MIN_POSITIVE);
    v.iter().map(|x| x / n).collect()
}

/// The standard deviation of the values around their own class's mean,
/// pooled over classes; `None` with no class of two.
fn pooled_std(groups: &[Vec<f32>]) -> Option<f32> {
    let (mut ss, mut dof) = (0f64, 0usize);
    for g in groups.iter().filter(|g| g.len() >= 2) {
        let mean = g.iter().map(|&v| v as f64).sum::<f64>() / g.len() as f64;
        ss += g.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>();
        dof += g.len() - 1;
    }
    (dof > 0).then(|| (ss / dof as f64).sqrt() as f32)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_nearest_mean_wins_and_far_queries_are_unknown() {
        // Two classes around the x and y axes, with some spread.
        let ex: Vec<(usize, Vec<f32>)> = vec![
            (0, vec![1.0, 0.1, 0.0]),
            (0, vec![1.0, -0.1, 0.05]),
            (0, vec![2.0, 0.0, -0.1]),
            (1, vec![0.1, 1.0, 0.0]),
            (1, vec![-0.1, 3.0, 0.1]),
            (1, vec![0.0, 1.0, -0.05]),
        ];
        let refs: Vec<(usize, &[f32])> = ex.iter().map(|(c, e)| (*c, &e[..])).collect();
        let p = Prototypes::fit(&labels(&["open", "closed"]), &refs);
        let m = p.classify(&[5.0, 0.2, 0.0]).unwrap();
        assert_eq!((m.label.as_str(), m.unknown), ("open", false));
        assert!(m.score > 0.99, "{m:?}");
        assert_eq!(p.classify(&[0.0, 0.5, 0.0]).unwrap().label, "closed");
        // Along z: far from both.
        let m = p.classify(&[0.1, 0.1, 1.0]).unwrap();
        assert!(m.unknown, "{m:?}");
        // Every threshold sits below its class's examples, above the
        // far query's score.
        let t = p.threshold("open").unwrap();
        assert!(t < 0.99 && t > m.score, "{t} {m:?}");
        assert!(p.classify(&[1.0, 0.0]).is_none(), "another width");
    }

    #[test]
    fn thresholds_need_two_examples_somewhere() {
        let a = [1.0f32, 0.0];
        let b = [0.9f32, 0.1];
        let c = [0.0f32, 1.0];
        // "a" has two examples, "c" one: both get a threshold, "c"'s from
        // "a"'s leave-one-out similarity.
        let p = Prototypes::fit(&labels(&["a", "c"]), &[(0, &a[..]), (0, &b[..]), (1, &c[..])]);
        assert!(p.threshold("a").is_some() && p.threshold("c").is_some());
        let p = Prototypes::fit(&labels(&["a", "c", "unused"]), &[(0, &a[..]), (1, &c[..])]);
        assert_eq!(p.labels(), ["a", "c"], "a class without examples is left out");
        assert_eq!(p.threshold("a"), None);
        assert!(!p.classify(&[-1.0, -1.0]).unwrap().unknown, "uncalibrated: never unknown");
        assert!(Prototypes::fit(&labels(&["a"]), &[]).classify(&[1.0]).is_none());
        // One class alone: SPREAD deviations below its leave-one-out mean.
        let d = [0.8f32, 0.2];
        let p = Prototypes::fit(&labels(&["a"]), &[(0, &a[..]), (0, &b[..]), (0, &d[..])]);
        let t = p.threshold("a").unwrap();
        assert!(t < 0.99 && t > 0.5, "{t}");
        assert!(p.classify(&[0.0, 1.0]).unwrap().unknown);
    }
}
