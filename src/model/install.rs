//! `lookout model install`: puts an export (the folder
//! `tools/export_model.py --out` wrote) where the packaged service reads
//! models, so the step a user takes on the board cannot copy the wrong
//! file, a damaged one, or the 1.2 GB fp32 model onto an SD card.
//!
//! Only the int8 ONNX, its manifest and the labels the manifest names are
//! copied, into `<models dir>/<model>/`; the copy is hashed against the
//! manifest before it replaces anything. The config is edited only when
//! asked, and then only `model.path`: comments and every other line stay.
//!
//! A model exported another way than `tools/export_model.py`'s (torch's
//! plain exports, optimum's) is installed in lookout's canonical form
//! (`canon/`): what a load would compute from the file every time is
//! computed here once, as onnxruntime's offline optimization does, so the
//! service loads it as fast as the exporter's form (a plain ViT-L took
//! 1.15x its load). The installed manifest then carries the new file's
//! sha256 and the original's, under `canonical_of`.

use std::path::{Component, Path, PathBuf};

use super::canon::{self, Canonical};
use super::manifest::{Manifest, ManifestError};
use super::onnx::LazyModel;

/// Where the packaged config looks for models. Root-owned and outside the
/// package (upgrades and purges keep it), readable by the unit's dynamic
/// user, not writable by it (ProtectSystem=strict), so the service cannot
/// replace the model it runs. /var/lib/lookout is the service's private
/// state (/var/lib/private, chowned to the dynamic user at every start)
/// and /etc is for configuration, not 300 MB of weights.
pub const MODELS_DIR: &str = "/usr/local/share/lookout/models";

/// The exporter writes `<name>-fp32.onnx` and `<name>-int8.onnx`.
const INT8_SUFFIX: &str = "-int8.onnx";

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("{path}: {what}")]
    Missing { path: PathBuf, what: String },
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error("{path}: sha256 is {actual} but its manifest says {expected}: the file is damaged or the manifest belongs to another export; copy the export folder again")]
    Checksum { path: PathBuf, expected: String, actual: String },
    #[error("{path}: cannot write: {reason} (run as root, or pick another --models-dir)")]
    Write { path: PathBuf, reason: String },
    #[error("{path}: cannot set model.path: {reason}; set it by hand")]
    Config { path: PathBuf, reason: String },
    #[error("{path}: lookout cannot use this model: {reason} (export it again with tools/export_model.py)")]
    Unusable { path: PathBuf, reason: String },
}

/// What was installed.
#[derive(Debug)]
pub struct Installed {
    /// The model's name from its manifest.
    pub name: String,
    /// The export's, checked against its manifest.
    pub sha256: String,
    /// What writing the canonical form changed; `None` where the export
    /// was in it already and was copied as it is.
    pub canonical: Option<Canonical>,
    /// The installed ONNX file: what `model.path` must say.
    pub model: PathBuf,
}

/// Copies the int8 model of the export `from` (a folder, or one `.onnx`
/// file in it) into `<models_dir>/<model>/`, replacing an earlier install
/// of the same model.
pub fn install(from: &Path, models_dir: &Path) -> Result<Installed, InstallError> {
    let onnx = pick_model(from)?;
    let manifest_path = Manifest::path_beside(&onnx);
    if !manifest_path.is_file() {
        let what = format!(
            "no manifest beside {} (the exporter writes one per model; copy the whole export folder)",
            onnx.display()
        );
        return Err(InstallError::Missing { path: manifest_path, what });
    }
    let manifest = Manifest::load(&manifest_path)?;
    if !is_plain_relative(&manifest.labels) {
        let reason = format!("labels {:?} is not a path inside the export folder", manifest.labels);
        return Err(ManifestError::Invalid { path: manifest_path, reason }.into());
    }
    let export_dir = manifest_path.parent().unwrap_or(Path::new("."));
    let labels = export_dir.join(&manifest.labels);
    if !labels.is_file() {
        let what = "does not exist; the manifest names it as the model's labels (copy the whole export folder)";
        return Err(InstallError::Missing { path: labels, what: what.into() });
    }

    let models_dir = &std::path::absolute(models_dir).map_err(|e| write_error(models_dir, e))?;
    let file = onnx.file_name().expect("picked files have names").to_owned();
    let folder = file.to_string_lossy().trim_end_matches(".onnx").trim_end_matches("-int8").to_string();
    let dest = models_dir.join(&folder);
    let staging = models_dir.join(format!(".{folder}.partial-{}", std::process::id()));
    let result = stage(&staging, &onnx, &manifest_path, &labels, &manifest).and_then(|sha256| {
        let canonical = canonicalize(&staging.join(&file), &onnx, &sha256)?;
        replace_dir(&staging, &dest)?;
        Ok(Installed { name: manifest.name.clone(), sha256, canonical, model: dest.join(&file) })
    });
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&staging);
    }
    result
}

/// The export's int8 model: the folder must hold exactly one.
fn pick_model(from: &Path) -> Result<PathBuf, InstallError> {
    if from.is_file() {
        return Ok(from.to_owned());
    }
    let missing = |what: &str| InstallError::Missing { path: from.to_owned(), what: what.into() };
    if !from.is_dir() {
        return Err(missing("no such folder (give the folder tools/export_model.py --out wrote)"));
    }
    let entries = std::fs::read_dir(from).map_err(|e| missing(&format!("cannot list: {e}")))?;
    let mut found: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.file_name().is_some_and(|n| n.to_string_lossy().ends_with(INT8_SUFFIX)))
        .collect();
    found.sort();
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err(missing(&format!(
            "holds no *{INT8_SUFFIX} (the int8 model tools/export_model.py writes); give an .onnx file to install another"
        ))),
        _ => {
            let names: Vec<String> = found.iter().filter_map(|p| p.file_name()).map(|n| n.to_string_lossy().into()).collect();
            Err(missing(&format!("holds several int8 models ({}); give the .onnx file to install", names.join(", "))))
        }
    }
}

/// Relative, and without `..`: a manifest cannot make us copy files from
/// outside its folder or write outside the model's.
fn is_plain_relative(p: &Path) -> bool {
    p.components().all(|c| matches!(c, Component::Normal(_))) && p.components().next().is_some()
}

/// Copies the three files into `staging` and checks the copied model
/// against the manifest: what gets installed is what was hashed.
fn stage(
    staging: &Path,
    onnx: &Path,
    manifest_path: &Path,
    labels: &Path,
    manifest: &Manifest,
) -> Result<String, InstallError> {
    let labels_dest = staging.join(&manifest.labels);
    let model_dest = staging.join(onnx.file_name().expect("picked files have names"));
    let manifest_dest = staging.join(manifest_path.file_name().expect("a manifest path has a name"));
    for (from, to) in [(onnx, &model_dest), (manifest_path, &manifest_dest), (labels, &labels_dest)] {
        let dir = to.parent().expect("inside staging");
        std::fs::create_dir_all(dir).map_err(|e| write_error(dir, e))?;
        std::fs::copy(from, to).map_err(|e| write_error(to, e))?;
        // Readable by the service's dynamic user whatever root's umask.
        set_mode(to, 0o644)?;
    }
    for dir in labels_dest.ancestors().skip(1).take_while(|d| d.starts_with(staging)) {
        set_mode(dir, 0o755)?;
    }
    let actual = super::tract::sha256_file(&model_dest).map_err(|e| write_error(&model_dest, e))?;
    if !actual.eq_ignore_ascii_case(&manifest.sha256) {
        return Err(InstallError::Checksum { path: onnx.to_owned(), expected: manifest.sha256.clone(), actual });
    }
    Ok(actual)
}

/// Puts the staged `model` (a copy of `source`, whose sha256 is `sha256`)
/// in lookout's canonical form, and its manifest's sha256 with it; leaves
/// both as they are where the form would not change.
fn canonicalize(model: &Path, source: &Path, sha256: &str) -> Result<Option<Canonical>, InstallError> {
    let unusable = |reason: String| InstallError::Unusable { path: source.to_owned(), reason };
    let mut lazy = LazyModel::open(model).map_err(|e| unusable(format!("{e} (is it an ONNX file?)")))?;
    let (canonical, unread) = canon::run(&mut lazy).map_err(|e| unusable(e.root_cause().to_string()))?;
    if canonical == Canonical::default() {
        return Ok(None);
    }
    lazy.proto
        .metadata_props
        .push(tract_onnx::pb::StringStringEntryProto { key: "lookout.canonical_of".into(), value: sha256.into() });
    let written = model.with_extension("onnx.canonical");
    let write = || -> std::io::Result<()> {
        let mut out = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&written)?);
        lazy.write(&mut out, &unread)?;
        out.into_inner().map_err(|e| e.into_error())?.sync_all()
    };
    write().map_err(|e| write_error(&written, e))?;
    set_mode(&written, 0o644)?;
    std::fs::rename(&written, model).map_err(|e| write_error(model, e))?;

    let new_sha256 = super::tract::sha256_file(model).map_err(|e| write_error(model, e))?;
    let manifest_path = Manifest::path_beside(model);
    let edit = |reason: String| InstallError::Write { path: manifest_path.clone(), reason };
    let text = std::fs::read_to_string(&manifest_path).map_err(|e| edit(e.to_string()))?;
    let mut json: serde_json::Value = serde_json::from_str(&text).map_err(|e| edit(e.to_string()))?;
    let fields = json.as_object_mut().ok_or_else(|| edit("not a JSON object".into()))?;
    fields.insert("sha256".into(), new_sha256.into());
    fields.insert(
        "canonical_of".into(),
        serde_json::json!({ "sha256": sha256, "by": concat!("lookout ", env!("CARGO_PKG_VERSION")) }),
    );
    let text = serde_json::to_string_pretty(&json).map_err(|e| edit(e.to_string()))?;
    std::fs::write(&manifest_path, text + "\n").map_err(|e| edit(e.to_string()))?;
    Ok(Some(canonical))
}

fn set_mode(path: &Path, mode: u32) -> Result<(), InstallError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(|e| write_error(path, e))
}

fn write_error(path: &Path, e: std::io::Error) -> InstallError {
    InstallError::Write { path: path.to_owned(), reason: e.to_string() }
}

/// Puts `staging` at `dest`, the earlier install (if any) going only once
/// the new one is complete.
fn replace_dir(staging: &Path, dest: &Path) -> Result<(), InstallError> {
    let old = dest.with_file_name(format!(
        ".{}.old-{}",
        dest.file_name().expect("a model folder has a name").to_string_lossy(),
        std::process::id()
    ));
    let had_old = dest.exists();
    if had_old {
        std::fs::rename(dest, &old).map_err(|e| write_error(dest, e))?;
    }
    std::fs::rename(staging, dest).map_err(|e| write_error(dest, e))?;
    if had_old {
        std::fs::remove_dir_all(&old).map_err(|e| write_error(&old, e))?;
    }
    Ok(())
}

/// What editing a config changed, and what else in `[model]` the user
/// should know about.
#[derive(Debug)]
pub struct ConfigEdit {
    /// `model.path` before, if the file set one.
    pub previous: Option<String>,
    /// Keys of `[model]` that override what the installed manifest says
    /// (`labels`, `manifest`): kept, but worth a look.
    pub overrides: Vec<String>,
}

/// Sets `model.path` in the config file `config` to `model`, keeping every
/// other line and comment (toml_edit), the file's mode and owner.
pub fn set_model_path(config: &Path, model: &Path) -> Result<ConfigEdit, InstallError> {
    let error = |reason: String| InstallError::Config { path: config.to_owned(), reason };
    let text = std::fs::read_to_string(config).map_err(|e| error(format!("cannot read it: {e}")))?;
    let mut doc: toml_edit::DocumentMut =
        text.parse().map_err(|e: toml_edit::TomlError| error(format!("not TOML: {}", e.message())))?;
    let path = model.to_str().ok_or_else(|| error(format!("{} is not UTF-8", model.display())))?;
    let table = doc
        .entry("model")
        .or_insert(toml_edit::table())
        .as_table_like_mut()
        .ok_or_else(|| error("`model` is not a table".into()))?;
    let previous = table.get("path").and_then(|i| i.as_str()).map(String::from);
    match table.get_mut("path") {
        Some(item) => {
            // A comment after the old value stays after the new one.
            let decor = item.as_value().map(|v| v.decor().clone());
            *item = toml_edit::value(path);
            if let (Some(decor), Some(v)) = (decor, item.as_value_mut()) {
                *v.decor_mut() = decor;
            }
        }
        None => {
            table.insert("path", toml_edit::value(path));
        }
    }
    let overrides = ["manifest", "labels"].iter().filter(|k| table.contains_key(k)).map(|k| k.to_string()).collect();
    write_keeping_mode(config, doc.to_string().as_bytes()).map_err(|e| error(format!("cannot write it: {e}")))?;
    Ok(ConfigEdit { previous, overrides })
}

/// A new file renamed over the old one (never a half-written config), with
/// the old one's permissions and owner (a conffile stays root's, 0644 or
/// tighter).
fn write_keeping_mode(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path)?;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.lookout-{}", std::process::id()));
    let result = std::fs::write(&tmp, data)
        .and_then(|()| std::fs::set_permissions(&tmp, meta.permissions()))
        .and_then(|()| std::os::unix::fs::chown(&tmp, Some(meta.uid()), Some(meta.gid())))
        .and_then(|()| std::fs::rename(&tmp, path));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digits() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("models/digits")
    }

    /// An export folder as the exporter writes it: fp32 and int8 models,
    /// a manifest beside each, labels.
    fn export(dir: &Path) {
        for f in [
            "digits-fp32.onnx",
            "digits-fp32.manifest.json",
            "digits-int8.onnx",
            "digits-int8.manifest.json",
            "labels.txt",
        ] {
            std::fs::copy(digits().join(f), dir.join(f)).unwrap();
        }
    }

    #[test]
    fn installs_the_int8_model_its_manifest_and_labels_only() {
        let (from, models) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        export(from.path());
        let got = install(from.path(), models.path()).unwrap();
        let dir = models.path().join("digits");
        assert_eq!(got.model, dir.join("digits-int8.onnx"));
        assert_eq!(got.name, "digits-int8");
        let mut files: Vec<String> =
            std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into()).collect();
        files.sort();
        assert_eq!(files, ["digits-int8.manifest.json", "digits-int8.onnx", "labels.txt"]);
        assert_eq!(std::fs::read(&got.model).unwrap(), std::fs::read(digits().join("digits-int8.onnx")).unwrap());
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&got.model).unwrap().permissions().mode() & 0o777, 0o644);
        // Nothing left behind but the model's folder.
        assert_eq!(std::fs::read_dir(models.path()).unwrap().count(), 1);

        // Installing again replaces the folder.
        std::fs::write(dir.join("stale.txt"), "x").unwrap();
        install(&from.path().join("digits-int8.onnx"), models.path()).unwrap();
        assert!(!dir.join("stale.txt").exists());
        assert_eq!(std::fs::read_dir(models.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_plain_export_is_installed_in_the_canonical_form_with_both_sha256s() {
        use std::os::unix::fs::PermissionsExt;
        let (from, models) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let forms = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/export-forms");
        for f in ["digits-legacy-int8.onnx", "digits-legacy-int8.manifest.json", "labels.txt"] {
            std::fs::copy(forms.join(f), from.path().join(f)).unwrap();
        }
        let got = install(from.path(), models.path()).unwrap();
        let source_text = std::fs::read_to_string(forms.join("digits-legacy-int8.manifest.json")).unwrap();
        let source = Manifest::parse(&source_text).unwrap().sha256;
        assert_eq!(got.sha256, source, "the export's sha256 is the one checked");
        let canonical = got.canonical.expect("a legacy export is not in the canonical form");
        assert!(canonical.folded > 0, "{canonical:?}");

        let manifest_path = Manifest::path_beside(&got.model);
        let installed = Manifest::load(&manifest_path).unwrap();
        assert_eq!(installed.sha256, super::super::tract::sha256_file(&got.model).unwrap());
        assert_ne!(installed.sha256, source);
        let mut json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&manifest_path).unwrap()).unwrap();
        assert_eq!(json["canonical_of"]["sha256"], source.as_str());
        assert!(json["canonical_of"]["by"].as_str().unwrap().starts_with("lookout "));
        let want: serde_json::Value = serde_json::from_str(&source_text).unwrap();
        json.as_object_mut().unwrap().remove("canonical_of");
        json["sha256"] = want["sha256"].clone();
        assert_eq!(json, want, "every other field as the export's manifest has it");

        let mut lazy = LazyModel::open(&got.model).unwrap();
        let marks: Vec<(&str, &str)> =
            lazy.proto.metadata_props.iter().map(|p| (p.key.as_str(), p.value.as_str())).collect();
        assert!(marks.contains(&("lookout.canonical_of", source.as_str())), "{marks:?}");
        assert_eq!(canon::run(&mut lazy).unwrap().0, Canonical::default(), "nothing left for a load to rewrite");
        let mut files: Vec<String> = std::fs::read_dir(got.model.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into())
            .collect();
        files.sort();
        assert_eq!(files, ["digits-legacy-int8.manifest.json", "digits-legacy-int8.onnx", "labels.txt"]);
        for f in &files {
            let mode = std::fs::metadata(got.model.with_file_name(f)).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o644, "{f}");
        }
    }

    #[test]
    fn a_file_lookout_cannot_read_as_onnx_is_refused_and_nothing_is_left() {
        let (from, models) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        std::fs::write(from.path().join("x-int8.onnx"), "not onnx").unwrap();
        let sha = super::super::tract::sha256_file(&from.path().join("x-int8.onnx")).unwrap();
        let manifest = std::fs::read_to_string(digits().join("digits-int8.manifest.json")).unwrap();
        let digits_sha = Manifest::parse(&manifest).unwrap().sha256;
        std::fs::write(from.path().join("x-int8.manifest.json"), manifest.replace(&digits_sha, &sha)).unwrap();
        std::fs::copy(digits().join("labels.txt"), from.path().join("labels.txt")).unwrap();
        let e = install(from.path(), models.path()).unwrap_err();
        assert!(matches!(e, InstallError::Unusable { .. }), "{e}");
        assert!(e.to_string().contains("x-int8.onnx: lookout cannot use this model: "), "{e}");
        assert!(e.to_string().contains("(is it an ONNX file?)"), "{e}");
        assert_eq!(std::fs::read_dir(models.path()).unwrap().count(), 0, "no staging folder left");
    }

    #[test]
    fn a_damaged_model_is_refused_and_nothing_is_replaced() {
        let (from, models) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        export(from.path());
        install(from.path(), models.path()).unwrap();
        let mut bytes = std::fs::read(from.path().join("digits-int8.onnx")).unwrap();
        bytes[1000] ^= 1;
        std::fs::write(from.path().join("digits-int8.onnx"), bytes).unwrap();
        let e = install(from.path(), models.path()).unwrap_err();
        assert!(matches!(e, InstallError::Checksum { .. }), "{e}");
        let expected = Manifest::load(&digits().join("digits-int8.manifest.json")).unwrap().sha256;
        assert!(e.to_string().contains(&format!("but its manifest says {expected}")), "{e}");
        let kept = std::fs::read(models.path().join("digits/digits-int8.onnx")).unwrap();
        assert_eq!(kept, std::fs::read(digits().join("digits-int8.onnx")).unwrap(), "the good install stays");
        assert_eq!(std::fs::read_dir(models.path()).unwrap().count(), 1, "no staging folder left");
    }

    #[test]
    fn missing_and_ambiguous_exports_say_what_is_wrong() {
        let models = tempfile::tempdir().unwrap();
        let from = tempfile::tempdir().unwrap();
        // Each step adds one file to the export and fixes the previous
        // problem; the manifest is the digits model's.
        let manifest = std::fs::read_to_string(digits().join("digits-int8.manifest.json")).unwrap();
        let steps = [
            (None, "holds no *-int8.onnx"),
            (Some(("x-int8.onnx", "x")), "no manifest beside"),
            (Some(("x-int8.manifest.json", manifest.as_str())), "labels.txt: does not exist"),
            (Some(("y-int8.onnx", "y")), "holds several int8 models (x-int8.onnx, y-int8.onnx)"),
        ];
        for (file, want) in steps {
            if let Some((name, text)) = file {
                std::fs::write(from.path().join(name), text).unwrap();
            }
            let e = install(from.path(), models.path()).unwrap_err();
            assert!(matches!(e, InstallError::Missing { .. }) && e.to_string().contains(want), "{want}: {e}");
        }
        let e = install(&from.path().join("absent"), models.path()).unwrap_err();
        assert!(e.to_string().contains("absent: no such folder"), "{e}");
    }

    #[test]
    fn setting_model_path_keeps_the_rest_of_the_config() {
        let d = tempfile::tempdir().unwrap();
        let cfg = d.path().join("lookout.toml");
        let text = "# top\n[device]\n# id = \"x\"\n\n[model]\n# the model\npath = \"/old.onnx\" # large\nlabels = \"/l.txt\"\n\n[mqtt]\nhost = \"h\"\n";
        std::fs::write(&cfg, text).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o640)).unwrap();
        let edit = set_model_path(&cfg, Path::new("/m/digits/digits-int8.onnx")).unwrap();
        assert_eq!(edit.previous.as_deref(), Some("/old.onnx"));
        assert_eq!(edit.overrides, ["labels"]);
        let want = text.replace("\"/old.onnx\"", "\"/m/digits/digits-int8.onnx\"");
        assert_eq!(std::fs::read_to_string(&cfg).unwrap(), want);
        assert_eq!(std::fs::metadata(&cfg).unwrap().permissions().mode() & 0o777, 0o640);

        // No [model] yet: one is added.
        std::fs::write(&cfg, "[mqtt]\nhost = \"h\"\n").unwrap();
        set_model_path(&cfg, Path::new("/m.onnx")).unwrap();
        let v: toml::Value = toml::from_str(&std::fs::read_to_string(&cfg).unwrap()).unwrap();
        assert_eq!(v["model"]["path"].as_str(), Some("/m.onnx"));

        std::fs::write(&cfg, "[model\npath = 1").unwrap();
        let e = set_model_path(&cfg, Path::new("/m.onnx")).unwrap_err();
        assert!(e.to_string().contains("cannot set model.path: not TOML"), "{e}");
        let e = set_model_path(&d.path().join("absent.toml"), Path::new("/m.onnx")).unwrap_err();
        assert!(e.to_string().contains("cannot read it"), "{e}");
    }
}
