//! The bundled digits model in tract against the references its exporter
//! wrote: PyTorch logits for every held-out image, and the int8 model's
//! agreement with fp32.

use lookout::config::Config;
use lookout::model::{Classifier, ModelError, TractClassifier};
use lookout::preprocess::{ColorRange, Preprocessor};

struct Reference {
    file: String,
    label: usize,
    torch: Vec<f32>,
}

fn references() -> Vec<Reference> {
    let dir = crate::common::root().join("tests/fixtures/digits");
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap()).unwrap();
    v["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| Reference {
            file: dir.join(i["file"].as_str().unwrap()).display().to_string(),
            label: i["label"].as_u64().unwrap() as usize,
            torch: i["torch_logits"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect(),
        })
        .collect()
}

fn config(model: &str) -> Config {
    let dir = tempfile::tempdir().unwrap();
    let frames = crate::common::root().join("tests/fixtures/digits/test");
    let cfg = crate::common::write_config(dir.path(), &crate::common::digits_config(&frames, model, 1883, ""));
    Config::load(&cfg).unwrap()
}

fn load(model: &str) -> (TractClassifier, Preprocessor) {
    let cfg = config(model);
    let classifier = TractClassifier::load(&cfg.model).unwrap();
    let pre = Preprocessor::new(&cfg.model.preprocess, classifier.info().input_size, ColorRange::Full);
    (classifier, pre)
}

#[test]
fn tract_fp32_reproduces_the_pytorch_logits() {
    let refs = references();
    assert!(refs.len() >= 300, "the reference set is the held-out split");
    let (mut c, mut pre) = load("digits-fp32.onnx");
    let mut worst = 0f32;
    for r in &refs {
        let got = crate::common::logits_of(&mut c, &mut pre, &r.file);
        let range = r.torch.iter().fold(f32::MIN, |a, &b| a.max(b)) - r.torch.iter().fold(f32::MAX, |a, &b| a.min(b));
        let err = got.iter().zip(&r.torch).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        worst = worst.max(err / range);
        assert!(err <= 1e-4 * range, "{}: max abs error {err} over logit range {range}", r.file);
        assert_eq!(
            crate::common::argmax(&got),
            crate::common::argmax(&r.torch),
            "{}: top-1 differs from PyTorch",
            r.file
        );
    }
    println!("tract fp32 vs PyTorch on {} images: worst max-abs-error / logit range = {worst:.2e}", refs.len());
}

#[test]
fn tract_int8_agrees_with_fp32_on_the_held_out_set() {
    let refs = references();
    let (mut fp32, mut pre32) = load("digits-fp32.onnx");
    let (mut int8, mut pre8) = load("digits-int8.onnx");
    let (mut agree, mut right32, mut right8) = (0, 0, 0);
    for r in &refs {
        let a = crate::common::argmax(&crate::common::logits_of(&mut fp32, &mut pre32, &r.file));
        let b = crate::common::argmax(&crate::common::logits_of(&mut int8, &mut pre8, &r.file));
        agree += (a == b) as usize;
        right32 += (a == r.label) as usize;
        right8 += (b == r.label) as usize;
    }
    let n = refs.len() as f64;
    let (agreement, acc32, acc8) = (agree as f64 / n * 100.0, right32 as f64 / n * 100.0, right8 as f64 / n * 100.0);
    println!(
        "digits, {} held-out images: int8/fp32 top-1 agreement {agreement:.2} %, accuracy fp32 {acc32:.2} % int8 {acc8:.2} % (drop {:.2} pp)",
        refs.len(),
        acc32 - acc8
    );
    assert!(agreement >= 99.0, "agreement {agreement:.2} %");
    assert!(acc32 - acc8 <= 1.0, "accuracy drop {:.2} pp", acc32 - acc8);
    assert!(acc32 >= 90.0, "the small model is really trained: {acc32:.2} %");
}

/// The file is hashed while tract builds the model: the result is the
/// file's own hash, and a valid model under a manifest of another still
/// fails, after a build that succeeded.
#[test]
fn the_model_file_is_checked_against_its_manifest() {
    use sha2::Digest;
    let mut cfg = config("digits-int8.onnx");
    let bytes = std::fs::read(&cfg.model.path).unwrap();
    let hex: String = sha2::Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect();
    let c = TractClassifier::load(&cfg.model).unwrap();
    assert_eq!(c.info().sha256.as_deref(), Some(hex.as_str()));

    let other = "ab".repeat(32);
    cfg.model.manifest.as_mut().unwrap().sha256 = other.clone();
    match TractClassifier::load(&cfg.model) {
        Err(ModelError::Checksum { expected, actual, .. }) => assert_eq!((expected, actual), (other, hex)),
        Err(e) => panic!("expected a checksum mismatch, got {e}"),
        Ok(_) => panic!("a model under another model's manifest loaded"),
    }
    cfg.model.verify_sha256 = false;
    let c = TractClassifier::load(&cfg.model).unwrap();
    assert_eq!(c.info().sha256.as_deref(), Some("ab".repeat(32).as_str()), "unchecked: the manifest's word");
}
