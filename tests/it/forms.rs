//! Other exports take the fast path: the digits model, and transformers'
//! ViT and DeiT (random init, the same size), each through torch's legacy
//! and dynamo exporters and quantized the plain way, without the folding
//! tools/export_model.py does first (tests/fixtures/export-forms, written
//! by tools/export_forms.py). lookout's canonical forms (src/model/canon/)
//! must bring each to every fused layer and block the exporter's form of
//! the digits model gets, with the logits of the ONNX specification for
//! that file.

use lookout::config::Config;
use lookout::model::{Classifier, PassReport, TractClassifier};
use lookout::preprocess::{ColorRange, Preprocessor};

/// The same bound as tests/it/inference.rs holds the exporter's form to.
const TOLERANCE_VS_SPEC: f32 = 0.1;
/// Random weights give logits within about 0.5 of each other and near-ties
/// for top-1; one int8 step moved by f32 rounding shows as 0.4 % of that
/// range (measured 0.0041 of 0.54 for ViT, onnxruntime 0.0019).
const RANDOM_TOLERANCE_OF_RANGE: f32 = 0.03;

fn load(model: &std::path::Path) -> (TractClassifier, Preprocessor) {
    let dir = tempfile::tempdir().unwrap();
    let frames = crate::common::root().join("tests/fixtures/digits/test");
    let toml = format!(
        "[device]\nid = \"forms\"\nstate_dir = \"state\"\n\n[source]\nkind = \"files\"\npath = \"{}\"\n\n\
         [model]\npath = \"{}\"\nthreads = 2\n\n[mqtt]\nhost = \"127.0.0.1\"\n",
        frames.display(),
        model.display()
    );
    let cfg = Config::load(&crate::common::write_config(dir.path(), &toml)).unwrap();
    let classifier = TractClassifier::load(&cfg.model).unwrap();
    let pre = Preprocessor::new(&cfg.model.preprocess, classifier.info().input_size, ColorRange::Full);
    (classifier, pre)
}

fn fused(report: &PassReport) -> [usize; 7] {
    let f = &report.fused;
    [f.groups, f.layers, f.gelus, f.norms, f.residuals, report.attention, report.patches]
}

fn floats(v: &serde_json::Value) -> Vec<f32> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()
}

#[test]
fn every_export_form_fuses_what_the_exporters_form_fuses_with_the_specifications_logits() {
    let root = crate::common::root();
    let (exporter, _) = load(&root.join("models/digits/digits-int8.onnx"));
    let want = fused(&exporter.load_report().pass_report);
    let dir = root.join("tests/fixtures/export-forms");
    let reference: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap()).unwrap();
    let forms = reference["forms"].as_object().unwrap();
    assert_eq!(forms.len(), 6, "digits, vit and deit, each legacy and dynamo: {:?}", forms.keys());
    for (form, spec) in forms {
        let (mut c, mut pre) = load(&dir.join(spec["model"].as_str().unwrap()));
        let report = c.load_report().pass_report.clone();
        assert_eq!(fused(&report), want, "{form}: {report:?}");
        let trained = form.starts_with("digits");
        let images = spec["images"].as_array().unwrap();
        assert!(images.len() >= 100, "{form}: {} reference images", images.len());
        let (mut worst, mut agree_ort, mut range) = (0f32, 0, 0f32);
        for image in images {
            let file = root.join("tests/fixtures/digits").join(image["file"].as_str().unwrap());
            let got = crate::common::logits_of(&mut c, &mut pre, &file.display().to_string());
            let (spec, ort) = (floats(&image["spec_logits"]), floats(&image["ort_logits"]));
            let top = crate::common::argmax(&got);
            if trained {
                assert_eq!(top, crate::common::argmax(&spec), "{form} {file:?}: top-1 differs from the specification");
            }
            range =
                range.max(spec.iter().fold(f32::MIN, |a, &b| a.max(b)) - spec.iter().fold(f32::MAX, |a, &b| a.min(b)));
            worst = got.iter().zip(&spec).map(|(a, b)| (a - b).abs()).fold(worst, f32::max);
            agree_ort += (top == crate::common::argmax(&ort)) as usize;
        }
        println!(
            "{form}: {report:?}; max abs logit difference to the ONNX reference evaluator {worst:.2e} \
             (logit range {range:.2}), same top-1 as onnxruntime on {agree_ort} of {}",
            images.len()
        );
        if trained {
            assert!(worst <= TOLERANCE_VS_SPEC, "{form}: max abs logit difference to the specification {worst}");
            assert!(agree_ort * 100 >= images.len() * 99, "{form}: top-1 agreement with onnxruntime {agree_ort}");
        } else {
            let bound = RANDOM_TOLERANCE_OF_RANGE * range;
            assert!(worst <= bound, "{form}: max abs logit difference to the specification {worst} > {bound}");
        }
    }
}

/// `lookout model install` writes each form in the canonical form: what a
/// load of the export computes every time, computed once. The installed
/// file must leave nothing for a load to rewrite, fuse what the export
/// fuses, and compute the export's logits bit for bit.
#[test]
fn every_export_form_installed_loads_canonical_with_the_exports_logits() {
    let root = crate::common::root();
    let dir = root.join("tests/fixtures/export-forms");
    let reference: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap()).unwrap();
    let models = tempfile::tempdir().unwrap();
    for (form, spec) in reference["forms"].as_object().unwrap() {
        let export = dir.join(spec["model"].as_str().unwrap());
        let installed = lookout::model::install::install(&export, models.path()).unwrap();
        let canonical = installed.canonical.unwrap_or_else(|| panic!("{form}: installed as it was"));
        let (mut plain, mut pre) = load(&export);
        let (mut canon, _) = load(&installed.model);
        let (p, c) = (plain.load_report().pass_report.clone(), canon.load_report().pass_report.clone());
        assert_eq!(p.canonical, canonical, "{form}: install rewrote what a load rewrites");
        assert_eq!(c.canonical, Default::default(), "{form}: a load of the installed file rewrote {:?}", c.canonical);
        assert_eq!(fused(&c), fused(&p), "{form}: {c:?}");
        for image in spec["images"].as_array().unwrap().iter().take(10) {
            let file = root.join("tests/fixtures/digits").join(image["file"].as_str().unwrap()).display().to_string();
            let want = crate::common::logits_of(&mut plain, &mut pre, &file);
            let got = crate::common::logits_of(&mut canon, &mut pre, &file);
            assert_eq!(got, want, "{form} {file}: logits of the installed file");
        }
    }
}
