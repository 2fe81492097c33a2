//! The taught examples on disk: one folder per class, two files per
//! example.
//!
//! ```text
//! <dir>/<class>/<id>.jpg    the view the model saw (snapshot::view_rgb)
//! <dir>/<class>/<id>.json   {"model_sha256": .., "added": unix s, "embedding": [..]}
//! ```
//!
//! The JSON file is the commit point: an example exists when its JSON does,
//! and is written last (the JPEG first), each through a temporary file
//! renamed into place, so a crash leaves either the whole example or a stray
//! JPEG, which `open` removes. Ids are unique in the store. The JSON records
//! the sha256 of the model that computed the embedding: after a model change
//! those examples are stale, left out of classification until `reembed`
//! recomputes them from their JPEGs, so two embedding spaces never mix. A
//! JSON file that cannot be read is stale too (its JPEG is the source).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::prototypes::{CustomMatch, Prototypes};
use super::{check_class_name, CustomError};

/// One taught picture.
#[derive(Debug, Clone)]
pub struct Example {
    pub id: u64,
    pub class: String,
    /// Seconds since the Unix epoch.
    pub added: u64,
    /// Empty while stale.
    pub embedding: Vec<f32>,
    /// The model that computed `embedding`; empty when the file was
    /// unreadable.
    pub model_sha256: String,
    /// Size of the stored JPEG.
    pub jpeg_bytes: u64,
}

/// A class as `list` reports it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClassSummary {
    pub name: String,
    /// Example ids, oldest first.
    pub examples: Vec<u64>,
    /// Examples waiting for `reembed` (another model computed them).
    pub stale: usize,
    /// The similarity under which a view is `unknown`; `None` until some
    /// class has two examples.
    pub threshold: Option<f32>,
}

#[derive(Serialize, Deserialize)]
struct ExampleFile {
    model_sha256: String,
    added: u64,
    embedding: Vec<f32>,
}

pub struct ClassStore {
    dir: PathBuf,
    model_sha256: String,
    /// Sorted by id.
    examples: Vec<Example>,
    next_id: u64,
    /// Rebuilt from the current (not stale) examples after every change.
    prototypes: Prototypes,
}

impl ClassStore {
    /// Opens (creating it if needed) the store in `dir` for the model whose
    /// file has this sha256.
    pub fn open(dir: &Path, model_sha256: &str) -> Result<ClassStore, CustomError> {
        let io = |path: &Path, e: std::io::Error| CustomError::Io { path: path.to_owned(), reason: e.to_string() };
        fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
        let mut examples = Vec::new();
        for class_dir in fs::read_dir(dir).map_err(|e| io(dir, e))? {
            let class_dir = class_dir.map_err(|e| io(dir, e))?.path();
            let Some(class) = class_dir.file_name().and_then(|n| n.to_str()).map(str::to_owned) else { continue };
            // Anything else in the folder (lost+found, a README) is not ours.
            if !class_dir.is_dir() || check_class_name(&class).is_err() {
                continue;
            }
            for entry in fs::read_dir(&class_dir).map_err(|e| io(&class_dir, e))? {
                let path = entry.map_err(|e| io(&class_dir, e))?.path();
                let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
                if name.ends_with(".tmp") {
                    let _ = fs::remove_file(&path);
                    continue;
                }
                let Some(id) = name.strip_suffix(".jpg").and_then(|s| s.parse::<u64>().ok()) else { continue };
                if !path.with_extension("json").exists() {
                    // An add that stopped between the JPEG and the JSON.
                    log::warn!(
                        "{}: removing a picture without its example file (an interrupted teach)",
                        path.display()
                    );
                    let _ = fs::remove_file(&path);
                    continue;
                }
                let jpeg_bytes = fs::metadata(&path).map_err(|e| io(&path, e))?.len();
                let json = path.with_extension("json");
                let file = fs::read(&json)
                    .ok()
                    .and_then(|b| serde_json::from_slice::<ExampleFile>(&b).ok())
                    .filter(|f| !f.embedding.is_empty() && f.embedding.iter().all(|v| v.is_finite()));
                if file.is_none() {
                    log::warn!("{}: unreadable; it will be recomputed from its picture", json.display());
                }
                let (model_sha256, added, embedding) =
                    file.map_or((String::new(), 0, Vec::new()), |f| (f.model_sha256, f.added, f.embedding));
                examples.push(Example { id, class: class.clone(), added, embedding, model_sha256, jpeg_bytes });
            }
        }
        examples.sort_by_key(|e| e.id);
        let next_id = examples.last().map_or(1, |e| e.id + 1);
        let mut store = ClassStore {
            dir: dir.to_owned(),
            model_sha256: model_sha256.to_ascii_lowercase(),
            examples,
            next_id,
            prototypes: Prototypes::default(),
        };
        store.refit()?;
        Ok(store)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn examples(&self) -> &[Example] {
        &self.examples
    }

    fn is_current(&self, e: &Example) -> bool {
        !e.embedding.is_empty() && e.model_sha256 == self.model_sha256
    }

    /// Examples another model (or an unreadable file) computed: left out
    /// until `reembed`.
    pub fn needs_reembed(&self) -> usize {
        self.examples.iter().filter(|e| !self.is_current(e)).count()
    }

    /// Stores a new example of `class` (created if new) and returns its id.
    pub fn add(&mut self, class: &str, embedding: &[f32], jpeg: &[u8]) -> Result<u64, CustomError> {
        check_class_name(class)?;
        if embedding.is_empty() || !embedding.iter().all(|v| v.is_finite()) {
            return Err(CustomError::BadEmbedding("empty or not finite".into()));
        }
        if let Some(w) = self.width().filter(|&w| w != embedding.len()) {
            return Err(CustomError::BadEmbedding(format!(
                "{} values, but the taught examples have {w}; was the model changed without re-embedding?",
                embedding.len()
            )));
        }
        if !jpeg.starts_with(&[0xFF, 0xD8]) {
            return Err(CustomError::BadEmbedding("the example picture is not a JPEG".into()));
        }
        let id = self.next_id;
        let class_dir = self.dir.join(class);
        fs::create_dir_all(&class_dir)
            .map_err(|e| CustomError::Io { path: class_dir.clone(), reason: e.to_string() })?;
        let jpg = class_dir.join(format!("{id}.jpg"));
        write_durably(&jpg, jpeg)?;
        let file = ExampleFile { model_sha256: self.model_sha256.clone(), added: now(), embedding: embedding.to_vec() };
        if let Err(e) = write_durably(&jpg.with_extension("json"), &serde_json::to_vec(&file).unwrap_or_default()) {
            let _ = fs::remove_file(&jpg);
            return Err(e);
        }
        self.next_id += 1;
        self.examples.push(Example {
            id,
            class: class.to_owned(),
            added: file.added,
            embedding: file.embedding,
            model_sha256: file.model_sha256,
            jpeg_bytes: jpeg.len() as u64,
        });
        self.refit()?;
        Ok(id)
    }

    /// Removes one example; returns its class.
    pub fn remove_example(&mut self, id: u64) -> Result<String, CustomError> {
        let i = self.examples.iter().position(|e| e.id == id).ok_or(CustomError::NoExample(id))?;
        let class = self.examples[i].class.clone();
        self.delete_files(&class, id)?;
        self.examples.remove(i);
        self.remove_dir_if_empty(&class);
        self.refit()?;
        Ok(class)
    }

    /// Removes a class with all its examples; returns how many.
    pub fn remove_class(&mut self, class: &str) -> Result<usize, CustomError> {
        let ids: Vec<u64> = self.examples.iter().filter(|e| e.class == class).map(|e| e.id).collect();
        if ids.is_empty() {
            return Err(self.no_class(class));
        }
        for &id in &ids {
            self.delete_files(class, id)?;
            self.examples.retain(|e| e.id != id);
        }
        self.remove_dir_if_empty(class);
        self.refit()?;
        Ok(ids.len())
    }

    /// The error for a class that has no examples, listing those that do.
    pub fn no_class(&self, class: &str) -> CustomError {
        let known: Vec<String> = self.list().into_iter().map(|c| c.name).collect();
        CustomError::NoClass { class: class.to_owned(), known: known.join(", ") }
    }

    /// Every class with its example ids, by name.
    pub fn list(&self) -> Vec<ClassSummary> {
        let mut out: Vec<ClassSummary> = Vec::new();
        for e in &self.examples {
            let i = match out.iter().position(|c| c.name == e.class) {
                Some(i) => i,
                None => {
                    let threshold = self.prototypes.threshold(&e.class);
                    out.push(ClassSummary { name: e.class.clone(), examples: vec![], stale: 0, threshold });
                    out.len() - 1
                }
            };
            out[i].examples.push(e.id);
            out[i].stale += !self.is_current(e) as usize;
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// The nearest class for a view's embedding; `None` without classes.
    pub fn classify(&self, embedding: &[f32]) -> Option<CustomMatch> {
        self.prototypes.classify(embedding)
    }

    /// The classifier built from the current examples.
    pub fn prototypes(&self) -> &Prototypes {
        &self.prototypes
    }

    /// Recomputes every stale example from its JPEG with `embed` (the
    /// current model: decode, preprocess, infer); returns how many. Stops at
    /// the first failure, naming the example; those done so far are kept.
    pub fn reembed(&mut self, mut embed: impl FnMut(&[u8]) -> Result<Vec<f32>, String>) -> Result<usize, CustomError> {
        let mut done = 0;
        for i in 0..self.examples.len() {
            if self.is_current(&self.examples[i]) {
                continue;
            }
            let (id, class) = (self.examples[i].id, self.examples[i].class.clone());
            let jpg = self.dir.join(&class).join(format!("{id}.jpg"));
            let bytes = fs::read(&jpg).map_err(|e| CustomError::Io { path: jpg.clone(), reason: e.to_string() })?;
            let embedding = embed(&bytes).map_err(|reason| CustomError::Reembed { path: jpg.clone(), reason })?;
            let added = if self.examples[i].added > 0 { self.examples[i].added } else { now() };
            let file = ExampleFile { model_sha256: self.model_sha256.clone(), added, embedding };
            write_durably(&jpg.with_extension("json"), &serde_json::to_vec(&file).unwrap_or_default())?;
            let e = &mut self.examples[i];
            (e.embedding, e.model_sha256, e.added) = (file.embedding, file.model_sha256, added);
            done += 1;
        }
        self.refit()?;
        Ok(done)
    }

    /// The embedding width of the current examples.
    fn width(&self) -> Option<usize> {
        self.examples.iter().find(|e| self.is_current(e)).map(|e| e.embedding.len())
    }

    fn refit(&mut self) -> Result<(), CustomError> {
        let current: Vec<&Example> = self.examples.iter().filter(|e| self.is_current(e)).collect();
        if let Some(bad) = current.iter().find(|e| e.embedding.len() != current[0].embedding.len()) {
            return Err(CustomError::Corrupt {
                path: self.dir.join(&bad.class).join(format!("{}.json", bad.id)),
                reason: format!(
                    "{} values where the other examples have {}; delete it and teach again",
                    bad.embedding.len(),
                    current[0].embedding.len()
                ),
            });
        }
        let mut labels: Vec<String> = current.iter().map(|e| e.class.clone()).collect();
        labels.sort();
        labels.dedup();
        let refs: Vec<(usize, &[f32])> =
            current.iter().map(|e| (labels.binary_search(&e.class).unwrap_or_default(), &e.embedding[..])).collect();
        self.prototypes = Prototypes::fit(&labels, &refs);
        Ok(())
    }

    fn delete_files(&self, class: &str, id: u64) -> Result<(), CustomError> {
        let jpg = self.dir.join(class).join(format!("{id}.jpg"));
        // The JSON first: without it the example is gone even if the
        // picture's removal fails.
        for path in [jpg.with_extension("json"), jpg] {
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(CustomError::Io { path, reason: e.to_string() }),
            }
        }
        Ok(())
    }

    fn remove_dir_if_empty(&self, class: &str) {
        // Fails, harmlessly, while anything is left in it.
        let _ = fs::remove_dir(self.dir.join(class));
    }
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Writes `path` through a temporary file renamed over it, synced, so a
/// power cut leaves the old file or the new one, never half of one.
fn write_durably(path: &Path, bytes: &[u8]) -> Result<(), CustomError> {
    let io = |e: std::io::Error| CustomError::Io { path: path.to_owned(), reason: e.to_string() };
    let tmp = path.with_extension(format!("{}.tmp", path.extension().and_then(|e| e.to_str()).unwrap_or_default()));
    let mut f = fs::File::create(&tmp).map_err(io)?;
    f.write_all(bytes).and_then(|()| f.sync_all()).map_err(io)?;
    fs::rename(&tmp, path).map_err(io)?;
    if let Some(dir) = path.parent() {
        // The rename itself is durable once the folder is synced.
        let _ = fs::File::open(dir).and_then(|d| d.sync_all());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA_A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const SHA_B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
    /// The smallest JPEG-looking bytes: the store checks the signature only.
    const JPEG: &[u8] = &[0xFF, 0xD8, 0xFF, 0xD9];

    #[test]
    fn examples_survive_reopening_and_removal_is_durable() {
        let d = tempfile::tempdir().unwrap();
        let mut s = ClassStore::open(d.path(), SHA_A).unwrap();
        assert!(s.classify(&[1.0, 0.0]).is_none());
        let a = s.add("open", &[1.0, 0.0], JPEG).unwrap();
        let b = s.add("open", &[0.9, 0.2], JPEG).unwrap();
        let c = s.add("closed", &[0.0, 1.0], JPEG).unwrap();
        assert_eq!((a, b, c), (1, 2, 3));
        assert_eq!(s.classify(&[0.7, 0.1]).unwrap().label, "open");
        let s = ClassStore::open(d.path(), SHA_A).unwrap();
        let list = s.list();
        assert_eq!(
            list.iter().map(|c| (c.name.as_str(), c.examples.clone())).collect::<Vec<_>>(),
            [("closed", vec![3]), ("open", vec![1, 2])]
        );
        assert!(list[0].threshold.is_some(), "'open' has two examples: calibrated, lent to 'closed'");
        assert_eq!(s.classify(&[0.1, 0.9]).unwrap().label, "closed");
        let mut s = s;
        assert_eq!(s.remove_example(3).unwrap(), "closed");
        assert!(!d.path().join("closed").exists(), "an emptied class folder goes");
        assert_eq!(s.add("closed", &[0.0, 1.0], JPEG).unwrap(), 4, "ids are never reused in a session");
        assert_eq!(s.remove_class("open").unwrap(), 2);
        let s = ClassStore::open(d.path(), SHA_A).unwrap();
        assert_eq!(s.list().iter().map(|c| c.name.as_str()).collect::<Vec<_>>(), ["closed"]);
    }

    #[test]
    fn bad_input_is_a_one_line_error() {
        let d = tempfile::tempdir().unwrap();
        let mut s = ClassStore::open(d.path(), SHA_A).unwrap();
        s.add("open", &[1.0, 0.0], JPEG).unwrap();
        let cases: Vec<(Result<u64, CustomError>, &str)> = vec![
            (s.add("../etc", &[1.0, 0.0], JPEG), "bad class name \"../etc\""),
            (s.add("unknown", &[1.0, 0.0], JPEG), "reserved"),
            (s.add("", &[1.0, 0.0], JPEG), "bad class name"),
            (s.add("open", &[1.0, 0.0, 0.0], JPEG), "3 values, but the taught examples have 2"),
            (s.add("open", &[f32::NAN, 0.0], JPEG), "not finite"),
            (s.add("open", &[1.0, 0.0], b"GIF89a"), "not a JPEG"),
        ];
        for (r, want) in cases {
            let e = r.unwrap_err().to_string();
            assert!(e.contains(want) && !e.contains('\n'), "{e}");
        }
        assert_eq!(s.remove_example(9).unwrap_err().to_string(), "no example 9 (see the list of classes)");
        let e = s.remove_class("shut").unwrap_err().to_string();
        assert_eq!(e, "no class \"shut\" (classes: open)");
    }

    #[test]
    fn a_model_change_makes_examples_stale_until_reembedded() {
        let d = tempfile::tempdir().unwrap();
        let mut s = ClassStore::open(d.path(), SHA_A).unwrap();
        s.add("open", &[1.0, 0.0], JPEG).unwrap();
        s.add("closed", &[0.0, 1.0], JPEG).unwrap();
        // Another model, with 3-value embeddings: nothing mixes.
        let mut s = ClassStore::open(d.path(), SHA_B).unwrap();
        assert_eq!(s.needs_reembed(), 2);
        assert!(s.classify(&[1.0, 0.0, 0.0]).is_none(), "stale examples are left out");
        assert_eq!(s.list()[0].stale, 1);
        let e = s.reembed(|_| Err("no".into())).unwrap_err().to_string();
        assert!(e.contains("1.jpg: cannot re-embed: no"), "{e}");
        let mut calls = 0;
        let n = s
            .reembed(|jpeg| {
                assert_eq!(jpeg, JPEG);
                calls += 1;
                Ok(if calls == 1 { vec![1.0, 0.0, 0.0] } else { vec![0.0, 0.0, 1.0] })
            })
            .unwrap();
        assert_eq!(n, 2);
        assert_eq!(s.classify(&[0.0, 0.1, 0.9]).unwrap().label, "closed");
        let s = ClassStore::open(d.path(), SHA_B).unwrap();
        assert_eq!(s.needs_reembed(), 0);
    }

    #[test]
    fn corrupt_files_are_recomputed_and_strays_cleaned() {
        let d = tempfile::tempdir().unwrap();
        let mut s = ClassStore::open(d.path(), SHA_A).unwrap();
        s.add("open", &[1.0, 0.0], JPEG).unwrap();
        s.add("open", &[0.9, 0.1], JPEG).unwrap();
        std::fs::write(d.path().join("open/2.json"), b"{\"model_sha256\": \"aa").unwrap();
        std::fs::write(d.path().join("open/7.jpg"), JPEG).unwrap();
        std::fs::write(d.path().join("open/8.json.tmp"), b"x").unwrap();
        std::fs::create_dir(d.path().join("lost+found")).unwrap();
        let mut s = ClassStore::open(d.path(), SHA_A).unwrap();
        assert_eq!(s.needs_reembed(), 1, "the truncated file");
        assert!(!d.path().join("open/7.jpg").exists() && !d.path().join("open/8.json.tmp").exists());
        assert_eq!(s.reembed(|_| Ok(vec![0.8, 0.2])).unwrap(), 1);
        assert_eq!(s.list()[0].examples, vec![1, 2]);
        // A file of the wrong width among current ones is named.
        std::fs::write(
            d.path().join("open/2.json"),
            format!("{{\"model_sha256\":\"{SHA_A}\",\"added\":1,\"embedding\":[1.0,2.0,3.0]}}"),
        )
        .unwrap();
        let e = ClassStore::open(d.path(), SHA_A).err().unwrap().to_string();
        assert!(e.contains("open/2.json") && e.contains("3 values where the other examples have 2"), "{e}");
    }
}
