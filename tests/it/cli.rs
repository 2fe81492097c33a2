//! Bad input through the built binary: each failure is one line that names
//! the file and the problem, with its own exit code.

use std::path::Path;
use std::time::Duration;

use crate::common::*;

pub fn run(args: &[&std::ffi::OsStr]) -> (i32, String, String) {
    let mut cmd = lookout();
    cmd.args(args);
    let out = run_with_timeout(cmd, Duration::from_secs(120));
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn check_config(path: &Path) -> (i32, String) {
    let (code, _, err) = run(&["check-config".as_ref(), path.as_os_str()]);
    (code, err)
}

fn error_line(stderr: &str) -> &str {
    let lines: Vec<&str> = stderr.lines().filter(|l| l.starts_with("lookout: error:")).collect();
    assert_eq!(lines.len(), 1, "exactly one error line in: {stderr}");
    lines[0]
}

fn samples() -> std::path::PathBuf {
    root().join("models/digits/samples")
}

/// README's first command: config/demo.toml as shipped (copied beside a
/// link to models/, so its relative paths mean what they mean in the
/// clone) classifies every sample as the digit its file names, and stops.
#[test]
fn the_demo_config_classifies_every_sample_and_stops() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("config")).unwrap();
    std::os::unix::fs::symlink(root().join("models"), dir.path().join("models")).unwrap();
    let config = dir.path().join("config/demo.toml");
    std::fs::copy(root().join("config/demo.toml"), &config).unwrap();
    let (code, _, err) = run(&["run".as_ref(), "--config".as_ref(), config.as_os_str()]);
    assert_eq!(code, 0, "{err}");
    let results: Vec<&str> = err.lines().filter(|l| l.contains(" result ")).collect();
    let pictures = std::fs::read_dir(samples())
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "jpg"));
    assert_eq!(results.len(), pictures.count(), "{err}");
    for line in results {
        // `result 3 main frame 3 (.../3-three.jpg): three 0.999 in 45.7 ms`
        let (file, label) = line.split_once("): ").unwrap();
        let name = file.rsplit('/').next().unwrap().trim_end_matches(".jpg");
        let word = name.split_once('-').unwrap().1;
        assert_eq!(label.split_whitespace().next(), Some(word), "{line}");
    }
    assert!(dir.path().join("target/demo-state").is_dir(), "the state folder is where README says");
}

#[test]
fn version_names_tract() {
    let (code, out, _) = run(&["--version".as_ref()]);
    assert_eq!(code, 0);
    assert!(out.contains(env!("CARGO_PKG_VERSION")) && out.contains("tract 0.23.9"), "{out}");
}

#[test]
fn check_config_prints_the_resolved_config() {
    let (code, out, err) = run(&["check-config".as_ref(), root().join("config/lookout.toml").as_os_str()]);
    assert_eq!(code, 0, "{err}");
    // Resolved: absolute model path and the manifest's preprocessing.
    let models = root().join("models/digits");
    assert!(out.contains(&format!("path = \"{}\"", models.join("digits-int8.onnx").display())), "{out}");
    assert!(out.contains("resize = \"bicubic\""), "{out}");
    assert!(out.contains(&format!("labels = \"{}\"", models.join("labels.txt").display())), "{out}");
}

#[test]
fn config_errors_exit_78_with_file_line_and_key() {
    let d = tempfile::tempdir().unwrap();
    let good = digits_config(&samples(), "digits-int8.onnx", 1883, "");
    let cases = [
        ("not toml [", "lookout.toml:1:"),
        (&*format!("{good}\nfoo = 1\n"), "unknown field `foo`"),
        (&*format!("{good}\n[mqtt]\n"), "duplicate key `mqtt`"),
        (&*good.replace("interval = 0.05", "interval = 0"), "`schedule.interval` is 0"),
        (&*good.replace("interval = 0.05", "interval = \"soon\""), "invalid type"),
        (&*good.replace("digits-int8.onnx", "missing.onnx"), "missing.onnx does not exist"),
        (&*good.replace("[model]\n", "[model]\nthreads = -1\n"), "threads"),
    ];
    for (text, expect) in cases {
        let cfg = write_config(d.path(), text);
        let (code, err) = check_config(&cfg);
        assert_eq!(code, 78, "{expect}: {err}");
        let line = error_line(&err);
        assert!(line.contains(&cfg.display().to_string()) && line.contains(expect), "{expect}: {line}");
    }
    let (code, err) = check_config(&d.path().join("nope.toml"));
    assert_eq!(code, 78);
    assert!(error_line(&err).contains("nope.toml: cannot read the config file: no such file"), "{err}");
}

#[test]
fn model_errors_exit_79_and_say_what_is_wrong() {
    let d = tempfile::tempdir().unwrap();
    let models = root().join("models/digits");
    let img = samples().join("3-three.jpg");

    // Labels that do not match the model's 10 outputs.
    let labels = d.path().join("labels.txt");
    std::fs::write(&labels, (0..11).map(|i| format!("c{i}\n")).collect::<String>()).unwrap();
    let cfg = write_config(
        d.path(),
        &digits_config(&samples(), "digits-int8.onnx", 1883, "")
            .replace("[model]\n", &format!("[model]\nlabels = \"{}\"\n", labels.display())),
    );
    let (code, _, err) = run(&["classify".as_ref(), "--config".as_ref(), cfg.as_os_str(), img.as_os_str()]);
    assert_eq!(code, 79, "{err}");
    assert!(error_line(&err).contains("has 11 labels but the model outputs 10 classes"), "{err}");

    // Not ONNX, with its own manifest copied beside it: the checksum catches it.
    let fake = d.path().join("fake.onnx");
    std::fs::write(&fake, b"this is not a model").unwrap();
    std::fs::copy(models.join("digits-int8.manifest.json"), d.path().join("fake.manifest.json")).unwrap();
    std::fs::copy(models.join("labels.txt"), d.path().join("labels.txt")).unwrap();
    let cfg = write_config(d.path(), &digits_config(&samples(), "digits-int8.onnx", 1883, ""));
    let (code, _, err) = run(&[
        "classify".as_ref(),
        "--config".as_ref(),
        cfg.as_os_str(),
        "--model".as_ref(),
        fake.as_os_str(),
        img.as_os_str(),
    ]);
    assert_eq!(code, 79, "{err}");
    assert!(error_line(&err).contains("sha256 is"), "{err}");

    // Not ONNX and no manifest: tract's own complaint, with the file named.
    std::fs::remove_file(d.path().join("fake.manifest.json")).unwrap();
    let cfg = write_config(
        d.path(),
        &digits_config(&samples(), "digits-int8.onnx", 1883, "")
            .replace("[model]\n", &format!("[model]\nlabels = \"{}\"\n", models.join("labels.txt").display())),
    );
    let (code, _, err) = run(&[
        "classify".as_ref(),
        "--config".as_ref(),
        cfg.as_os_str(),
        "--model".as_ref(),
        fake.as_os_str(),
        img.as_os_str(),
    ]);
    assert_eq!(code, 79, "{err}");
    let line = error_line(&err);
    assert!(line.contains("fake.onnx: cannot load the model") && line.contains("ONNX"), "{line}");
}

#[test]
fn bad_images_are_named_and_the_good_ones_still_classified() {
    let d = tempfile::tempdir().unwrap();
    let cfg = write_config(d.path(), &digits_config(&samples(), "digits-int8.onnx", 1883, ""));
    let good = samples().join("7-seven.jpg");
    let data = std::fs::read(&good).unwrap();
    let truncated = d.path().join("truncated.jpg");
    std::fs::write(&truncated, &data[..data.len() / 2]).unwrap();
    let text = d.path().join("text.jpg");
    std::fs::write(&text, "hello").unwrap();

    let (code, out, err) = run(&[
        "classify".as_ref(),
        "--config".as_ref(),
        cfg.as_os_str(),
        truncated.as_os_str(),
        good.as_os_str(),
        text.as_os_str(),
    ]);
    assert_eq!(code, 65, "{err}");
    assert!(err.contains("truncated.jpg: cannot decode image: truncated JPEG"), "{err}");
    assert!(err.contains("text.jpg: cannot decode image"), "{err}");
    assert!(err.contains("2 of 3 images failed"), "{err}");
    let lines: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["label"], "seven");

    let (code, _, err) =
        run(&["classify".as_ref(), "--config".as_ref(), cfg.as_os_str(), d.path().join("absent.jpg").as_os_str()]);
    assert_eq!(code, 66, "{err}");
    assert!(err.contains("absent.jpg: cannot read image"), "{err}");
}

/// The packaged model folder, as `lookout model install` fills it.
const PACKAGED_MODEL: &str =
    "/usr/local/share/lookout/models/data2vec-vision-large-ft1k/data2vec-vision-large-ft1k-int8.onnx";

#[test]
fn the_packaged_config_is_valid_once_model_install_put_the_model_in_place() {
    let packaged = root().join("config/packaged.toml");
    let (code, err) = check_config(&packaged);
    assert_eq!(code, 78, "{err}");
    assert!(error_line(&err).contains(&format!("{PACKAGED_MODEL} does not exist")), "{err}");
    // The exporter names its int8 file <hub model name>-int8.onnx.
    let exporter = std::fs::read_to_string(root().join("tools/export_model.py")).unwrap();
    assert!(exporter.contains("int8 = out_dir / f\"{name}-int8.onnx\""), "the exporter's file name changed");
    assert!(PACKAGED_MODEL.ends_with("/data2vec-vision-large-ft1k/data2vec-vision-large-ft1k-int8.onnx"));

    // What the installed config's comment tells the user to do, with an
    // export folder as the exporter writes it (fp32 too).
    let d = tempfile::tempdir().unwrap();
    let export = d.path().join("export");
    std::fs::create_dir(&export).unwrap();
    for f in
        ["digits-fp32.onnx", "digits-fp32.manifest.json", "digits-int8.onnx", "digits-int8.manifest.json", "labels.txt"]
    {
        std::fs::copy(root().join("models/digits").join(f), export.join(f)).unwrap();
    }
    let text = std::fs::read_to_string(&packaged).unwrap().replace("[device]\n", "[device]\nstate_dir = \"state\"\n");
    let cfg = write_config(d.path(), &text);
    let models = d.path().join("models");
    let install = |from: &Path, cfg: &Path| {
        run(&[
            "model".as_ref(),
            "install".as_ref(),
            from.as_os_str(),
            "--models-dir".as_ref(),
            models.as_os_str(),
            "--config".as_ref(),
            cfg.as_os_str(),
        ])
    };
    let (code, out, err) = install(&export, &cfg);
    assert_eq!(code, 0, "{err}");
    let installed = models.join("digits/digits-int8.onnx");
    assert!(out.contains(&format!("[model] path = \"{}\"", installed.display())), "{out}");
    assert!(!models.join("digits/digits-fp32.onnx").exists(), "the fp32 model was copied");
    let after = std::fs::read_to_string(&cfg).unwrap();
    assert_eq!(after, text.replace(PACKAGED_MODEL, &installed.display().to_string()), "only model.path changes");
    let (code, err) = check_config(&cfg);
    assert_eq!(code, 0, "{err}");

    // Without --config it prints the line to set and touches no config.
    let (code, out, err) =
        run(&["model".as_ref(), "install".as_ref(), export.as_os_str(), "--models-dir".as_ref(), models.as_os_str()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.lines().any(|l| l == format!("path = \"{}\"", installed.display())), "{out}");

    // A plain export is installed in the canonical form, which loads
    // against its manifest's new sha256 and classifies.
    let legacy = root().join("tests/fixtures/export-forms/digits-legacy-int8.onnx");
    let seven = samples().join("7-seven.jpg");
    let hint = "ONNX nodes that read only constants were evaluated, as at every start; `sudo lookout model install`";
    let classify = |model: Option<&Path>| {
        let mut args = vec!["classify".as_ref(), "--config".as_ref(), cfg.as_os_str(), seven.as_os_str()];
        args.extend(model.into_iter().flat_map(|m| ["--model".as_ref(), m.as_os_str()]));
        run(&args)
    };
    let (code, _, err) = classify(Some(&legacy));
    assert_eq!(code, 0, "{err}");
    assert!(err.contains(&format!("digits-legacy-int8.onnx: 1790 {hint}")), "{err}");
    let (code, out, err) = install(&legacy, &cfg);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("written in lookout's canonical form"), "{out}");
    assert!(out.contains(" constant nodes folded"), "{out}");
    let (code, out, err) = classify(None);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("model digits-legacy-int8 "), "{err}");
    assert!(!err.contains(hint), "installed, nothing is left to evaluate at load: {err}");
    assert!(out.contains("\"label\":\"seven\""), "{out}");
    let (code, out, err) = install(&export, &cfg);
    assert_eq!(code, 0, "{err}");
    assert!(!out.contains("canonical form"), "the exporter's form is copied as it is: {out}");

    // Each failure: one line, its own exit code.
    let (code, _, err) = install(&d.path().join("absent"), &cfg);
    assert_eq!(code, 66, "{err}");
    assert!(error_line(&err).contains("absent: no such folder"), "{err}");
    let mut bytes = std::fs::read(export.join("digits-int8.onnx")).unwrap();
    bytes[100] ^= 0xff;
    std::fs::write(export.join("digits-int8.onnx"), bytes).unwrap();
    let (code, _, err) = install(&export, &cfg);
    assert_eq!(code, 79, "{err}");
    assert!(error_line(&err).contains("digits-int8.onnx: sha256 is "), "{err}");
    std::fs::copy(root().join("models/digits/digits-int8.onnx"), export.join("digits-int8.onnx")).unwrap();
    std::fs::write(&cfg, "[model\n").unwrap();
    let (code, _, err) = install(&export, &cfg);
    assert_eq!(code, 78, "{err}");
    assert!(error_line(&err).contains("cannot set model.path: not TOML"), "{err}");
}

#[test]
fn snapshot_draws_each_views_region_on_a_real_frame() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "[source]\nkind = \"files\"\npath = \"{}\"\n\n[views.left]\nroi = [0.0, 0.0, 0.5, 1.0]\n\n\
         [views.right]\nroi = [0.5, 0.0, 0.5, 1.0]\n\n[model]\npath = \"{}\"\n",
        samples().join("3-three.jpg").display(),
        root().join("models/digits/digits-int8.onnx").display()
    );
    let cfg = write_config(dir.path(), &text);
    let out = dir.path().join("aim.png");
    let (code, stdout, stderr) = run(&["snapshot".as_ref(), "--config".as_ref(), cfg.as_os_str(), out.as_os_str()]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("left: red (roi [0.0, 0.0, 0.5, 1.0]; the model sees the 64x64 square at 0,16)"),
        "{stdout}"
    );
    assert!(stdout.contains("right: green"), "{stdout}");
    let img = image::open(&out).unwrap().into_rgb8();
    assert_eq!(img.dimensions(), (128, 96), "the whole frame");
    assert_eq!(img.get_pixel(0, 50).0, [230, 25, 25], "left's outline");
    assert_eq!(img.get_pixel(127, 50).0, [25, 200, 25], "right's outline");

    let (code, _, stderr) = run(&[
        "snapshot".as_ref(),
        "--config".as_ref(),
        cfg.as_os_str(),
        "--view".as_ref(),
        "attic".as_ref(),
        out.as_os_str(),
    ]);
    assert_eq!(code, 78);
    assert!(error_line(&stderr).contains("no view \"attic\"") && stderr.contains("left, right"), "{stderr}");
}
