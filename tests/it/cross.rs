//! The ARM builds give this build's answers, under qemu-user.
//!
//! `cross/build.sh aarch64 armv7` leaves target/<triple>/<profile>/lookout;
//! each runs `lookout classify --logits` on the digits model and must give
//! the same top-1 and logits within 2 % of their range as the x86_64 build.
//! The CPU model decides lookout's int8 kernel: a Cortex-A72 (Pi 4) has no
//! dot product and gets the plain NEON one (`smull` + `sadalp`), a
//! Cortex-A76 (Pi 5) the `sdot` one; 32-bit ARM has none, so tract's own
//! int8 path runs there. The log line naming the kernels shows which was
//! picked.
//!
//! The x86_64 build itself runs under `qemu-x86_64 -cpu Haswell` too: a
//! CPU with AVX2 and FMA but no AVX-512, such as a Zen 3 or an N100-class
//! box, where the AVX2 int8 kernel and attention must be picked whatever
//! the machine running the tests has, and the byte kernel for a model
//! whose weights are 7-bit (tests/fixtures/digits-7bit).
//!
//! `cross/test.sh` builds the binaries and runs this with LOOKOUT_CROSS
//! naming the triples it built, whose binaries then must exist; without
//! it, binaries that are missing are reported as skipped.

use std::process::Command;
use std::time::Duration;

use crate::common::*;

struct Variant {
    /// The build's target, or [`NATIVE`] for the binary under test.
    triple: &'static str,
    qemu: &'static str,
    sysroot: &'static str,
    cpu: &'static str,
    env: &'static [(&'static str, &'static str)],
    /// The int8 kernel that must be picked, and one that must not.
    kernel: &'static str,
    not_kernel: &'static str,
    /// Whether lookout's attention op runs (AVX2 or AVX-512 on x86_64, NEON
    /// on every aarch64 CPU).
    attention: bool,
}

const NATIVE: &str = "x86_64 (this build)";

const VARIANTS: &[Variant] = &[
    Variant {
        triple: NATIVE,
        qemu: "qemu-x86_64",
        sysroot: "/",
        cpu: "Haswell",
        env: &[],
        kernel: "lookout_avx2_u8i8_6x8 ",
        not_kernel: "avx512",
        attention: true,
    },
    Variant {
        triple: "aarch64-unknown-linux-gnu",
        qemu: "qemu-aarch64",
        sysroot: "/usr/aarch64-linux-gnu",
        cpu: "cortex-a72",
        env: &[],
        kernel: "lookout_arm64neon_i8i8_2x16 ",
        not_kernel: "arm64simd_mmm_i32",
        attention: true,
    },
    Variant {
        triple: "aarch64-unknown-linux-gnu",
        qemu: "qemu-aarch64",
        sysroot: "/usr/aarch64-linux-gnu",
        cpu: "cortex-a76",
        env: &[],
        kernel: "lookout_arm64dot_i8i8_6x16 ",
        not_kernel: "arm64simd_mmm_i32_8x8",
        attention: true,
    },
    // qemu 7.2 shows the host's /proc/cpuinfo, where tract looks for NEON
    // on 32-bit ARM; every Pi since the 2 has it, so it is forced on here.
    Variant {
        triple: "armv7-unknown-linux-gnueabihf",
        qemu: "qemu-arm",
        sysroot: "/usr/arm-linux-gnueabihf",
        cpu: "cortex-a15",
        env: &[("TRACT_CPU_ARM32_NEON", "true")],
        kernel: "armv7neon_mmm_i32_8x4 ",
        not_kernel: "armvfpv2",
        attention: false,
    },
];

const IMAGES: &[&str] = &["0-zero.jpg", "3-three.jpg", "7-seven.jpg"];

/// (label, logits) per image, and the log.
fn classify(
    mut cmd: Command,
    config: &std::path::Path,
    model: Option<&std::path::Path>,
) -> (Vec<(String, Vec<f32>)>, String) {
    let samples = root().join("models/digits/samples");
    cmd.env("RUST_LOG", "info").arg("classify").arg("--config").arg(config).arg("--logits");
    if let Some(model) = model {
        cmd.arg("--model").arg(model);
    }
    cmd.args(IMAGES.iter().map(|i| samples.join(i)));
    let out = run_with_timeout(cmd, Duration::from_secs(600));
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{log}");
    let results = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let logits = v["logits"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect();
            (v["label"].as_str().unwrap().to_owned(), logits)
        })
        .collect();
    (results, log)
}

#[test]
fn arm_builds_under_qemu_match_x86_64() {
    let required = std::env::var("LOOKOUT_CROSS").unwrap_or_default();
    let profile = std::env::var("LOOKOUT_CROSS_PROFILE").unwrap_or_else(|_| "release".into());
    let binary = |triple: &str| match triple {
        NATIVE if cfg!(target_arch = "x86_64") => {
            std::env::var_os("LOOKOUT_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_lookout").into()).into()
        }
        NATIVE => std::path::PathBuf::from("no x86_64 build on this machine"),
        _ => root().join("target").join(triple).join(&profile).join("lookout"),
    };
    for triple in required.split_whitespace() {
        assert!(binary(triple).is_file(), "LOOKOUT_CROSS names {triple} but {:?} is missing", binary(triple));
    }
    let (present, missing): (Vec<&Variant>, Vec<&Variant>) = VARIANTS.iter().partition(|v| binary(v.triple).is_file());
    for v in &missing {
        eprintln!("skipping {} on {}: no {:?} (cross/build.sh)", v.triple, v.cpu, binary(v.triple));
    }
    if present.is_empty() {
        return;
    }

    let d = tempfile::tempdir().unwrap();
    let config =
        write_config(d.path(), &digits_config(&root().join("models/digits/samples"), "digits-int8.onnx", 1883, ""));
    let (expected, _) = classify(lookout(), &config, None);
    assert_eq!(expected.len(), IMAGES.len());
    // The digits model quantized to 7-bit weights (onnxruntime's
    // reduce_range): every pair of them fits in i16, so an AVX2-only CPU
    // multiplies its bytes (lookout_avx2pairs_u8i8_4x16).
    let seven_bit = root().join("tests/fixtures/digits-7bit/digits-7bit-int8.onnx");
    let (expected_7bit, _) = classify(lookout(), &config, Some(&seven_bit));

    for v in present {
        let have_qemu = Command::new(v.qemu).arg("--version").output().is_ok_and(|o| o.status.success());
        assert!(have_qemu, "{} is missing: install qemu-user (tools/test.sh and cross/test.sh do)", v.qemu);
        let mut cmd = Command::new(v.qemu);
        cmd.args(["-cpu", v.cpu, "-L", v.sysroot]).arg(binary(v.triple)).envs(v.env.iter().copied());
        let what = format!("{} on {}", v.triple, v.cpu);
        let (got, log) = classify(cmd, &config, None);
        same_answers(&what, &got, &expected, &log, v.kernel, v.not_kernel, v.attention);
        if v.triple == NATIVE {
            let mut cmd = Command::new(v.qemu);
            cmd.args(["-cpu", v.cpu, "-L", v.sysroot]).arg(binary(v.triple));
            let (got, log) = classify(cmd, &config, Some(&seven_bit));
            let what = format!("{what}, 7-bit weights");
            same_answers(
                &what,
                &got,
                &expected_7bit,
                &log,
                "lookout_avx2pairs_u8i8_4x16 ",
                "lookout_avx2_u8i8_6x8",
                true,
            );
        }
    }
}

/// The run's load line names `kernel` and not `not_kernel`, with the
/// digits model's 4 attention blocks fused or none, and its answers are
/// `expected`'s: the same top-1, logits within 2 % of their range.
#[allow(clippy::too_many_arguments)]
fn same_answers(
    what: &str,
    got: &[(String, Vec<f32>)],
    expected: &[(String, Vec<f32>)],
    log: &str,
    kernel: &str,
    not_kernel: &str,
    attention: bool,
) {
    let kernels = log.lines().find(|l| l.contains("matmul kernels:")).unwrap_or_else(|| panic!("{what}: {log}"));
    // Entries read "name xN", so "8x8 " cannot match "8x8_dot x2".
    assert!(kernels.contains(kernel) && !kernels.contains(not_kernel), "{what}: {kernels}");
    let blocks = if attention { "fused attention blocks: 4" } else { "fused attention blocks: 0" };
    assert!(kernels.ends_with(blocks), "{what}: {kernels}");
    assert_eq!(got.len(), expected.len(), "{what}");
    let mut worst = 0f32;
    for ((label, logits), (want_label, want)) in got.iter().zip(expected) {
        assert_eq!(label, want_label, "{what}");
        let range = want.iter().fold(f32::MIN, |a, &b| a.max(b)) - want.iter().fold(f32::MAX, |a, &b| a.min(b));
        let diff = logits.iter().zip(want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(diff <= 0.02 * range, "{what}: max abs logit difference {diff} over a range of {range}");
        worst = worst.max(diff);
    }
    eprintln!("{what}: same top-1 on {} images, max abs logit difference {worst:.2e}; {kernels}", got.len());
}
