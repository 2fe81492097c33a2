//! The ARMv8.2 dot-product kernel: 4 rows x 16 columns of i32 accumulators
//! (16 q registers), 4 registers of weights per k-step and one register per
//! row holding 16 activation bytes, whose four 4-byte lanes feed four
//! k-steps through `sdot`'s lane form. Each panel is two such halves.
//!
//! `sdot` is written as inline assembly because its intrinsic is not
//! stable Rust yet (rust-lang/rust#117224).

use std::arch::aarch64::*;
use std::arch::asm;

use super::{Activations, Job, NR};

const MR: usize = 4;
/// Columns per half panel: 4 registers of 4 columns.
const HALF: usize = 16;

/// `acc += b (16 i8: 4 columns x 4 k) . lane L of a (4 i8)` per column.
#[inline(always)]
unsafe fn sdot<const L: i32>(acc: int32x4_t, b: int8x16_t, a: int8x16_t) -> int32x4_t {
    let mut acc = acc;
    asm!(
        ".arch_extension dotprod",
        "sdot {acc:v}.4s, {b:v}.16b, {a:v}.4b[{l}]",
        acc = inout(vreg) acc,
        b = in(vreg) b,
        a = in(vreg) a,
        l = const L,
        options(pure, nomem, nostack, preserves_flags),
    );
    acc
}

/// # Safety
/// The CPU must have the dot-product extension; `job` and `a` come from
/// `Job::new` and `Activations::quantize`.
#[target_feature(enable = "neon")]
pub(super) unsafe fn panel_dot(a: &Activations, job: &Job, panel: usize) {
    for half in 0..NR / HALF {
        if panel * NR + half * HALF >= job.w.n {
            break;
        }
        let mut m = 0;
        while m + MR <= a.rows {
            tile::<MR>(a, job, panel, half, m);
            m += MR;
        }
        match a.rows - m {
            0 => {}
            1 => tile::<1>(a, job, panel, half, m),
            2 => tile::<2>(a, job, panel, half, m),
            _ => tile::<3>(a, job, panel, half, m),
        }
    }
}

#[inline]
#[target_feature(enable = "neon")]
unsafe fn tile<const R: usize>(a: &Activations, job: &Job, panel: usize, half: usize, m0: usize) {
    let w = job.w;
    // Step s of this half starts at byte s * 128 + half * 64.
    let steps = (w.steps.as_ptr().add(panel * w.k4) as *const i8).add(half * 64);
    let rows = a.data.as_ptr().add(m0 * a.stride) as *const i8;
    let mut acc = [[vdupq_n_s32(0); 4]; R];
    let b_at = |s: usize, j: usize| vld1q_s8(steps.add(s * 128 + j * 16));
    let mut s = 0;
    // Four k-steps per 16 activation bytes.
    while s + 4 <= w.k4 {
        let mut q = [vdupq_n_s8(0); R];
        for (r, q) in q.iter_mut().enumerate() {
            *q = vld1q_s8(rows.add(r * a.stride + 4 * s));
        }
        macro_rules! step {
            ($lane:literal) => {
                let b = [b_at(s + $lane, 0), b_at(s + $lane, 1), b_at(s + $lane, 2), b_at(s + $lane, 3)];
                for r in 0..R {
                    for j in 0..4 {
                        acc[r][j] = sdot::<$lane>(acc[r][j], b[j], q[r]);
                    }
                }
            };
        }
        step!(0);
        step!(1);
        step!(2);
        step!(3);
        s += 4;
    }
    while s < w.k4 {
        let b = [b_at(s, 0), b_at(s, 1), b_at(s, 2), b_at(s, 3)];
        for r in 0..R {
            let q = vreinterpretq_s8_s32(vld1q_dup_s32(rows.add(r * a.stride + 4 * s) as *const i32));
            for j in 0..4 {
                acc[r][j] = sdot::<0>(acc[r][j], b[j], q);
            }
        }
        s += 1;
    }

    let col0 = panel * NR + half * HALF;
    let valid = (w.n - col0).min(HALF);
    let mut out = [0f32; HALF];
    for (r, acc) in acc.iter().enumerate() {
        for (j, acc) in acc.iter().enumerate() {
            let c = col0 + 4 * j;
            let mut v = vaddq_s32(*acc, vld1q_s32(job.col_add.as_ptr().add(c)));
            if let Some(zb) = &w.zero_points {
                v = vsubq_s32(v, vmulq_n_s32(vld1q_s32(zb.as_ptr().add(c)), a.row_terms[m0 + r]));
            }
            // Cast, then Mul: ONNX's order, no FMA.
            let f = vmulq_f32(vcvtq_f32_s32(v), vld1q_f32(job.scale.as_ptr().add(c)));
            vst1q_f32(out.as_mut_ptr().add(4 * j), f);
        }
        let dst = job.out.0.add((m0 + r) * w.n + col0);
        for (i, v) in out[..valid].iter().enumerate() {
            let v = job.bias.map_or(*v, |b| v + b[col0 + i]);
            *dst.add(i) = job.gelu.map_or(v, |g| g.apply(v));
        }
    }
}
