//! How well classes separate on a folder of labelled pictures (`lookout
//! eval DIR`, one sub-folder per class): accuracy, per-class precision and
//! recall, the confusion matrix and the unknown rate, for the model's own
//! labels, for the taught classes, and for custom classes cross-validated
//! on the pictures themselves (what teaching them would give).

use std::fmt::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::prototypes::Prototypes;
use super::{read_image, ClassStore, CustomError, UNKNOWN};
use crate::model::Classifier;
use crate::preprocess::Preprocessor;

/// One labelled picture, embedded.
pub struct Sample {
    /// Its folder's name.
    pub class: String,
    pub embedding: Vec<f32>,
    /// The model's top label.
    pub top1: String,
}

/// Every section that applies to the pictures in `dir` (one sub-folder per
/// class): the model's labels where folders name them, the taught classes
/// (`store`, when it has classes named by folders), and custom classes from
/// the pictures, cross-validated over `folds` (0: leave-one-out). One
/// inference per picture.
pub fn evaluate(
    classifier: &mut dyn Classifier,
    pre: &mut Preprocessor,
    dir: &Path,
    store: Option<&ClassStore>,
    folds: usize,
) -> Result<Vec<Section>, CustomError> {
    let mut samples = Vec::new();
    for (class, path) in list_images(dir)? {
        let frame = read_image(&path)?;
        let image_err = |reason: String| CustomError::Image { path: path.clone(), reason };
        pre.run(&frame, classifier.input_mut()).map_err(|e| image_err(e.to_string()))?;
        let logits = classifier.infer().map_err(|e| image_err(e.to_string()))?;
        let best = (0..logits.len()).fold(0, |b, i| if logits[i] > logits[b] { i } else { b });
        let top1 = classifier.info().labels.get(best).cloned().unwrap_or_default();
        // Empty for a model without an embedding output: model labels only.
        let embedding = classifier.embedding().map(<[f32]>::to_vec).unwrap_or_default();
        samples.push(Sample { class, embedding, top1 });
    }
    let mut sections: Vec<Section> = model_labels(&samples, &classifier.info().labels).into_iter().collect();
    if classifier.info().embedding_width.is_some() {
        sections.extend(store.and_then(|s| taught(&samples, s.prototypes())));
        sections.push(cross_validate(&samples, folds));
    }
    if sections.is_empty() {
        return Err(CustomError::Eval(format!(
            "{}: no folder names a model label, and the model has no embedding output for custom classes",
            dir.display()
        )));
    }
    Ok(sections)
}

/// Pictures in `dir/<class>/`, by class then file name. Files other than
/// JPEG, PNG and BMP are skipped.
pub fn list_images(dir: &Path) -> Result<Vec<(String, PathBuf)>, CustomError> {
    let io = |p: &Path, e: std::io::Error| CustomError::Io { path: p.to_owned(), reason: e.to_string() };
    let mut out = Vec::new();
    let mut classes: Vec<PathBuf> =
        std::fs::read_dir(dir).map_err(|e| io(dir, e))?.flatten().map(|e| e.path()).filter(|p| p.is_dir()).collect();
    classes.sort();
    for class_dir in classes {
        let class = class_dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let mut files: Vec<PathBuf> = std::fs::read_dir(&class_dir)
            .map_err(|e| io(&class_dir, e))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                let ext = p.extension().and_then(|e| e.to_str()).unwrap_or_default().to_ascii_lowercase();
                matches!(ext.as_str(), "jpg" | "jpeg" | "png" | "bmp")
            })
            .collect();
        files.sort();
        out.extend(files.into_iter().map(|f| (class.clone(), f)));
    }
    if out.is_empty() {
        return Err(CustomError::Eval(format!(
            "{}: no pictures in sub-folders; give one folder per class (DIR/open/*.jpg, DIR/closed/*.jpg)",
            dir.display()
        )));
    }
    Ok(out)
}

/// Metrics of one classifier on the samples.
#[derive(Debug, Clone, Serialize)]
pub struct Section {
    pub name: String,
    /// How the predictions were made.
    pub method: String,
    pub images: usize,
    pub accuracy: f64,
    /// Share of pictures predicted `unknown`.
    pub unknown_rate: f64,
    pub classes: Vec<ClassMetrics>,
    /// Rows: the true classes in `classes` order; columns: `predicted`.
    pub predicted: Vec<String>,
    pub confusion: Vec<Vec<usize>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ClassMetrics {
    pub name: String,
    /// Pictures of the class.
    pub support: usize,
    /// Of the pictures predicted as this class, the share that are; `None`
    /// when none was.
    pub precision: Option<f64>,
    /// Of the pictures of this class, the share predicted as it.
    pub recall: f64,
}

impl Section {
    /// Metrics from (true, predicted) label pairs.
    pub fn from_pairs(name: &str, method: String, pairs: &[(String, String)]) -> Section {
        let mut truths: Vec<String> = pairs.iter().map(|(t, _)| t.clone()).collect();
        truths.sort();
        truths.dedup();
        // Columns: the true classes, other predictions, unknown last.
        let mut predicted = truths.clone();
        let mut others: Vec<String> =
            pairs.iter().map(|(_, p)| p.clone()).filter(|p| !truths.contains(p) && p != UNKNOWN).collect();
        others.sort();
        others.dedup();
        predicted.retain(|p| p != UNKNOWN);
        predicted.extend(others);
        if pairs.iter().any(|(t, p)| p == UNKNOWN || t == UNKNOWN) {
            predicted.push(UNKNOWN.into());
        }
        let mut confusion = vec![vec![0usize; predicted.len()]; truths.len()];
        for (t, p) in pairs {
            let r = truths.iter().position(|x| x == t).unwrap_or_default();
            let c = predicted.iter().position(|x| x == p).unwrap_or_default();
            confusion[r][c] += 1;
        }
        let n = pairs.len().max(1) as f64;
        let classes = truths
            .iter()
            .enumerate()
            .map(|(r, name)| {
                let support = confusion[r].iter().sum::<usize>();
                let c = predicted.iter().position(|x| x == name);
                let hit = c.map_or(0, |c| confusion[r][c]);
                let called = c.map_or(0, |c| confusion.iter().map(|row| row[c]).sum::<usize>());
                ClassMetrics {
                    name: name.clone(),
                    support,
                    precision: (called > 0).then(|| hit as f64 / called as f64),
                    recall: hit as f64 / support.max(1) as f64,
                }
            })
            .collect();
        Section {
            name: name.into(),
            method,
            images: pairs.len(),
            accuracy: pairs.iter().filter(|(t, p)| t == p).count() as f64 / n,
            unknown_rate: pairs.iter().filter(|(_, p)| p == UNKNOWN).count() as f64 / n,
            classes,
            predicted,
            confusion,
        }
    }

    /// A plain-text table: the summary line, per-class metrics, confusion.
    pub fn table(&self) -> String {
        let pct = |v: f64| format!("{:.1}", v * 100.0);
        let mut s = String::new();
        let _ = writeln!(s, "{} ({}): {} images", self.name, self.method, self.images);
        let _ = writeln!(s, "accuracy {} %, unknown {} %", pct(self.accuracy), pct(self.unknown_rate));
        let w = self.classes.iter().map(|c| c.name.len()).chain(self.predicted.iter().map(|p| p.len())).max();
        let w = w.unwrap_or(5).clamp(5, 24);
        let _ = writeln!(s, "{:<w$} {:>6} {:>9} {:>7}", "class", "images", "precision", "recall");
        for c in &self.classes {
            let precision = c.precision.map_or("-".into(), pct);
            let _ = writeln!(s, "{:<w$} {:>6} {:>9} {:>7}", clip(&c.name, w), c.support, precision, pct(c.recall));
        }
        let _ = writeln!(s, "confusion (rows: true class, columns: predicted)");
        let cw = self.predicted.iter().map(|p| clip(p, w).len()).max().unwrap_or(1).max(4);
        let _ = write!(s, "{:<w$}", "");
        for p in &self.predicted {
            let _ = write!(s, " {:>cw$}", clip(p, cw));
        }
        let _ = writeln!(s);
        for (c, row) in self.classes.iter().zip(&self.confusion) {
            let _ = write!(s, "{:<w$}", clip(&c.name, w));
            for v in row {
                let _ = write!(s, " {v:>cw$}");
            }
            let _ = writeln!(s);
        }
        s
    }
}

fn clip(s: &str, w: usize) -> &str {
    s.char_indices().nth(w).map_or(s, |(i, _)| &s[..i])
}

/// Whether a folder name names this model label: equal, or equal to one of
/// its comma-separated synonyms ("tabby" for "tabby, tabby cat"), ignoring
/// case and reading '_' as a space.
pub fn names_label(folder: &str, label: &str) -> bool {
    let norm = |s: &str| s.trim().to_lowercase().replace('_', " ");
    let f = norm(folder);
    norm(label) == f || label.split(',').any(|part| norm(part) == f)
}

/// The model's own labels, on the folders that name one; `None` if none does.
pub fn model_labels(samples: &[Sample], labels: &[String]) -> Option<Section> {
    let pairs: Vec<(String, String)> = samples
        .iter()
        .filter_map(|s| labels.iter().find(|l| names_label(&s.class, l)).map(|l| (l.clone(), s.top1.clone())))
        .collect();
    (!pairs.is_empty()).then(|| Section::from_pairs("model labels", "top-1 of the model".into(), &pairs))
}

/// The taught classes on the pictures: folders named after a taught class
/// should get it, any other folder `unknown`. `None` when no folder names a
/// taught class.
pub fn taught(samples: &[Sample], prototypes: &Prototypes) -> Option<Section> {
    let taught = prototypes.labels();
    if !samples.iter().any(|s| taught.contains(&s.class)) {
        return None;
    }
    let pairs: Vec<(String, String)> = samples
        .iter()
        .map(|s| {
            let truth = if taught.contains(&s.class) { s.class.clone() } else { UNKNOWN.into() };
            (truth, predict(prototypes, &s.embedding))
        })
        .collect();
    let method = format!("the store's {} classes; other folders should be unknown", taught.len());
    Some(Section::from_pairs("taught classes", method, &pairs))
}

fn predict(p: &Prototypes, embedding: &[f32]) -> String {
    match p.classify(embedding) {
        Some(m) if !m.unknown => m.label,
        _ => UNKNOWN.into(),
    }
}

/// Custom classes made from the folders, cross-validated: each class's
/// pictures (in name order) are dealt round-robin into `folds` folds (0 =
/// one per picture: leave-one-out), and each fold is classified by classes
/// taught from the others.
pub fn cross_validate(samples: &[Sample], folds: usize) -> Section {
    let mut classes: Vec<String> = samples.iter().map(|s| s.class.clone()).collect();
    classes.sort();
    classes.dedup();
    let mut seen = vec![0usize; classes.len()];
    let index: Vec<usize> = samples.iter().map(|s| classes.binary_search(&s.class).unwrap_or_default()).collect();
    let fold: Vec<usize> = index
        .iter()
        .map(|&c| {
            seen[c] += 1;
            seen[c] - 1
        })
        .collect();
    let largest = seen.iter().copied().max().unwrap_or(1);
    let k = if folds == 0 { largest } else { folds.min(largest) }.max(1);
    let mut pairs = vec![(String::new(), String::new()); samples.len()];
    for f in 0..k {
        let train: Vec<(usize, &[f32])> =
            (0..samples.len()).filter(|&i| fold[i] % k != f).map(|i| (index[i], &samples[i].embedding[..])).collect();
        let p = Prototypes::fit(&classes, &train);
        for i in (0..samples.len()).filter(|&i| fold[i] % k == f) {
            pairs[i] = (samples[i].class.clone(), predict(&p, &samples[i].embedding));
        }
    }
    let method = if k == largest { "leave-one-out".to_string() } else { format!("{k}-fold cross-validation") };
    Section::from_pairs("custom classes from these pictures", method, &pairs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
    }

    #[test]
    fn metrics_and_confusion_from_pairs() {
        let s = Section::from_pairs(
            "t",
            "m".into(),
            &pairs(&[("open", "open"), ("open", "open"), ("open", UNKNOWN), ("closed", "open"), ("closed", "closed")]),
        );
        assert_eq!(s.predicted, ["closed", "open", "unknown"]);
        assert_eq!(s.confusion, vec![vec![1, 1, 0], vec![0, 2, 1]]);
        assert!((s.accuracy - 0.6).abs() < 1e-9 && (s.unknown_rate - 0.2).abs() < 1e-9);
        let open = &s.classes[1];
        assert_eq!((open.support, open.precision, open.recall), (3, Some(2.0 / 3.0), 2.0 / 3.0));
        let t = s.table();
        assert!(t.contains("accuracy 60.0 %, unknown 20.0 %"), "{t}");
        let row: Vec<&str> = t.lines().find(|l| l.starts_with("open ")).unwrap().split_whitespace().collect();
        assert_eq!(row, ["open", "3", "66.7", "66.7"], "{t}");
        assert!(t.ends_with("open          0       2       1\n"), "{t}");
    }

    #[test]
    fn folders_name_labels_or_their_synonyms() {
        assert!(names_label("tabby", "tabby, tabby cat"));
        assert!(names_label("Tabby_Cat", "tabby, tabby cat"));
        assert!(names_label("three", "three"));
        assert!(!names_label("cat", "tabby, tabby cat"));
    }

    #[test]
    fn cross_validation_holds_each_picture_out() {
        // Two well-separated classes of 4: every held-out picture lands in
        // its class.
        let mk = |class: &str, v: [f32; 2]| Sample { class: class.into(), embedding: v.to_vec(), top1: String::new() };
        let samples = vec![
            mk("a", [1.0, 0.1]),
            mk("a", [1.0, 0.0]),
            mk("a", [0.9, 0.05]),
            mk("a", [1.0, -0.1]),
            mk("b", [0.1, 1.0]),
            mk("b", [0.0, 1.0]),
            mk("b", [-0.1, 0.9]),
            mk("b", [0.05, 1.0]),
        ];
        let s = cross_validate(&samples, 0);
        assert_eq!(s.method, "leave-one-out");
        assert_eq!(s.images, 8);
        assert_eq!(s.confusion.iter().map(|r| r.iter().sum::<usize>()).sum::<usize>(), 8);
        assert!(s.accuracy >= 0.75, "{}", s.table());
        assert_eq!(cross_validate(&samples, 2).method, "2-fold cross-validation");
    }
}
