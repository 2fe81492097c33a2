//! The aarch64 kernels, both on half panels of 16 columns (4 registers of
//! 4 columns x 4 k per step):
//!
//! - ARMv8.2 dot product (`sdot`): 6 rows x 16 columns of i32 accumulators
//!   (24 q registers), one register per row holding 16 activation bytes,
//!   whose four 4-byte lanes feed four k-steps through `sdot`'s lane form,
//!   and two for the weights: all 32. The loop is inline assembly
//!   ([`dot6`]); the rows left over, fewer than 6, run the same scheme in
//!   Rust (`sdot` as one instruction of assembly: its intrinsic is not
//!   stable Rust yet, rust-lang/rust#117224).
//! - plain NEON for CPUs without it (the Pi 4's Cortex-A72): `smull` of 8
//!   weight bytes by the row's 4 bytes repeated, then `sadalp` adds each
//!   pair of 16-bit products into i32 lanes, exactly (one product is at most
//!   2^14); 2 rows x 16 columns, two accumulators per 4 columns. Weights
//!   without -128 (onnxruntime's) take two k-steps per `sadalp`.

use std::arch::aarch64::*;
use std::arch::asm;

use super::scalar::{ERF_P, ERF_Q};
use super::{Activations, Gelu, Job, NR};

const MR: usize = 6;
/// Columns per half panel: 4 registers of 4 columns.
const HALF: usize = 16;

/// `acc += b (16 i8: 4 columns x 4 k) . lane L of a (4 i8)` per column.
///
/// # Safety
/// The CPU must have the dot-product extension (ARMv8.2 `dotprod`).
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

/// [`Step::interleave`](super::Step) with NEON's four-way interleaving
/// store.
#[inline]
pub(super) fn interleave(step: &mut super::Step, rows: [&[i8; NR]; 4]) {
    for half in 0..2 {
        // SAFETY: NEON is part of aarch64; the loads read 16 of each row's
        // 32 bytes, the store writes 64 of the step's 128.
        unsafe {
            let [a, b, c, d] = rows.map(|r| vld1q_s8(r.as_ptr().add(16 * half)));
            vst4q_s8(step.0.as_mut_ptr().add(64 * half), int8x16x4_t(a, b, c, d));
        }
    }
}

/// `super::min_max` with `fminnm`/`fmaxnm`, which return the other operand
/// when one is NaN: the scalar comparison's result, where LLVM writes
/// that comparison as a compare and a select per vector: 0.005 G less of a
/// base model's 1.77 G instructions on the A76.
pub(super) fn min_max(xs: &[f32]) -> (f32, f32) {
    let mut blocks = xs.chunks_exact(16);
    // SAFETY: NEON is part of every aarch64 CPU; each load reads 4 of a
    // block's 16 values.
    let (mut lo, mut hi) = unsafe {
        let mut mins = [vdupq_n_f32(0.0); 4];
        let mut maxs = [vdupq_n_f32(0.0); 4];
        for block in &mut blocks {
            for j in 0..4 {
                let v = vld1q_f32(block.as_ptr().add(4 * j));
                mins[j] = vminnmq_f32(v, mins[j]);
                maxs[j] = vmaxnmq_f32(v, maxs[j]);
            }
        }
        let min = vminnmq_f32(vminnmq_f32(mins[0], mins[1]), vminnmq_f32(mins[2], mins[3]));
        let max = vmaxnmq_f32(vmaxnmq_f32(maxs[0], maxs[1]), vmaxnmq_f32(maxs[2], maxs[3]));
        (vminnmvq_f32(min), vmaxnmvq_f32(max))
    };
    for &x in blocks.remainder() {
        lo = if x < lo { x } else { lo };
        hi = if x > hi { x } else { hi };
    }
    (lo, hi)
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
            3 => tile::<3>(a, job, panel, half, m),
            4 => tile::<4>(a, job, panel, half, m),
            _ => tile::<5>(a, job, panel, half, m),
        }
    }
}

/// Rows `m0..m0 + R` of one half panel with `sdot`.
///
/// # Safety
/// As [`panel_dot`], with `m0 + R <= a.rows` and `half` 0 or 1.
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
    if R == MR && w.k4 >= 4 {
        // SAFETY: R == MR, so `acc` is MR rows; the rows and steps hold
        // k4 / 4 * 16 bytes per row and k4 / 4 * 4 steps from here.
        let all = &mut *(acc.as_mut_ptr() as *mut [[int32x4_t; 4]; MR]);
        dot6(all, rows, a.stride, steps, w.k4 / 4);
        s = w.k4 / 4 * 4;
    }
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
        for (r, acc) in acc.iter_mut().enumerate() {
            let q = vreinterpretq_s8_s32(vld1q_dup_s32(rows.add(r * a.stride + 4 * s) as *const i32));
            for j in 0..4 {
                acc[j] = sdot::<0>(acc[j], b[j], q);
            }
        }
        s += 1;
    }

    // A copy: `acc` stays in registers only if indexed by constants alone.
    let mut sums = [[vdupq_n_s32(0); 4]; R];
    sums.copy_from_slice(&acc);
    store(&sums, a, job, panel, half, m0);
}

/// [`tile`]'s loop for 6 rows, 4 k-steps per pass, `passes` passes, in
/// all 32 vector registers: 24 accumulators, one per row for its 16
/// activation bytes, and two for the weights, loaded a pair of columns
/// at a time. One pointer per row and one for the weights, each moved on
/// by its own load (post-indexed), and a count down: 112 instructions per
/// 96 `sdot`. LLVM's loop for 5 rows (6 do not fit its allocation) kept
/// one row pointer plus a stride per row and a separate counter: 101 per
/// 80 (A76, base model: 1.864 G instructions per inference then, 1.768 G
/// with this loop).
///
/// # Safety
/// The CPU has the dot product; each of the 6 rows `stride` bytes apart
/// from `rows` holds `16 * passes` bytes, `steps` `512 * passes`
/// (4 steps of 128, this half's 64 bytes first); `passes > 0`.
#[inline(always)]
unsafe fn dot6(acc: &mut [[int32x4_t; 4]; MR], rows: *const i8, stride: usize, steps: *const i8, passes: usize) {
    // `sdot` of weight register `b` into accumulator `acc` by lane `l` of
    // row register `a`, for each (acc a) pair.
    macro_rules! sdots {
        ($l:literal, $b:literal, $($acc:literal $a:literal)*) => {
            concat!($("sdot v", $acc, ".4s, v", $b, ".16b, v", $a, ".4b[", $l, "]\n",)*)
        };
    }
    // One k-step: columns 8..16 of this half, then 0..8 (moving the
    // pointer on by the step's 128 bytes, the other half's 64 included),
    // each against every row's lane `l`. Row r's columns 4j..4j+4 are in
    // v(4r + j), its activations in v(24 + r).
    macro_rules! step {
        ($l:literal) => {
            concat!(
                "ldp q30, q31, [{w}, #32]\n",
                sdots!($l, 30, 2 24 6 25 10 26 14 27 18 28 22 29),
                sdots!($l, 31, 3 24 7 25 11 26 15 27 19 28 23 29),
                "ldp q30, q31, [{w}], #128\n",
                sdots!($l, 30, 0 24 4 25 8 26 12 27 16 28 20 29),
                sdots!($l, 31, 1 24 5 25 9 26 13 27 17 28 21 29),
            )
        };
    }
    let [a0, a1, a2, a3, a4, a5] = acc;
    asm!(
        ".arch_extension dotprod",
        "2:",
        "ldr q24, [{r0}], #16",
        "ldr q25, [{r1}], #16",
        "ldr q26, [{r2}], #16",
        "ldr q27, [{r3}], #16",
        "ldr q28, [{r4}], #16",
        "ldr q29, [{r5}], #16",
        step!("0"),
        step!("1"),
        step!("2"),
        step!("3"),
        "subs {n}, {n}, #1",
        "b.ne 2b",
        r0 = inout(reg) rows => _,
        r1 = inout(reg) rows.add(stride) => _,
        r2 = inout(reg) rows.add(2 * stride) => _,
        r3 = inout(reg) rows.add(3 * stride) => _,
        r4 = inout(reg) rows.add(4 * stride) => _,
        r5 = inout(reg) rows.add(5 * stride) => _,
        w = inout(reg) steps => _,
        n = inout(reg) passes => _,
        inout("v0") a0[0], inout("v1") a0[1], inout("v2") a0[2], inout("v3") a0[3],
        inout("v4") a1[0], inout("v5") a1[1], inout("v6") a1[2], inout("v7") a1[3],
        inout("v8") a2[0], inout("v9") a2[1], inout("v10") a2[2], inout("v11") a2[3],
        inout("v12") a3[0], inout("v13") a3[1], inout("v14") a3[2], inout("v15") a3[3],
        inout("v16") a4[0], inout("v17") a4[1], inout("v18") a4[2], inout("v19") a4[3],
        inout("v20") a5[0], inout("v21") a5[1], inout("v22") a5[2], inout("v23") a5[3],
        out("v24") _, out("v25") _, out("v26") _, out("v27") _, out("v28") _, out("v29") _,
        out("v30") _, out("v31") _,
        options(nostack, readonly),
    );
}

/// The epilogue: column sums of rows `m0..m0 + R` of one half panel, 4
/// registers of 4 columns per row, to f32 in the output.
///
/// A whole half panel runs a loop made for its layer's bias, GELU and
/// zero points ([`store_whole`]): tested per value, those cost a tenth of
/// a base model's instructions on the A76.
///
/// # Safety
/// `job` and `a` come from `Job::new` and `Activations::quantize`,
/// `m0 + R <= a.rows`, `half` is 0 or 1, `panel < job.w.panels()`.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn store<const R: usize>(
    acc: &[[int32x4_t; 4]; R],
    a: &Activations,
    job: &Job,
    panel: usize,
    half: usize,
    m0: usize,
) {
    let col0 = panel * NR + half * HALF;
    if job.w.n - col0 < HALF {
        return store_part(acc, a, job, col0, m0);
    }
    let f = match (job.bias.is_some(), job.gelu.is_some(), job.w.zero_points.is_some()) {
        (false, false, false) => store_whole::<R, false, false, false>,
        (false, false, true) => store_whole::<R, false, false, true>,
        (false, true, false) => store_whole::<R, false, true, false>,
        (false, true, true) => store_whole::<R, false, true, true>,
        (true, false, false) => store_whole::<R, true, false, false>,
        (true, false, true) => store_whole::<R, true, false, true>,
        (true, true, false) => store_whole::<R, true, true, false>,
        (true, true, true) => store_whole::<R, true, true, true>,
    };
    f(acc, a, job, col0, m0)
}

/// [`store`] of a whole half panel from column `col0`, for a layer with a
/// bias, a GELU and weight zero points as the flags say.
///
/// # Safety
/// As [`store`], with `col0 + HALF <= job.w.n` and the flags true exactly
/// when the job has each.
#[inline(always)]
unsafe fn store_whole<const R: usize, const BIAS: bool, const GELU: bool, const ZB: bool>(
    acc: &[[int32x4_t; 4]; R],
    a: &Activations,
    job: &Job,
    col0: usize,
    m0: usize,
) {
    let w = job.w;
    let col_add: [int32x4_t; 4] = std::array::from_fn(|j| vld1q_s32(job.col_add.as_ptr().add(col0 + 4 * j)));
    let scale: [float32x4_t; 4] = std::array::from_fn(|j| vld1q_f32(job.scale.as_ptr().add(col0 + 4 * j)));
    let bias: [float32x4_t; 4] = match job.bias {
        Some(b) if BIAS => std::array::from_fn(|j| vld1q_f32(b.as_ptr().add(col0 + 4 * j))),
        _ => [vdupq_n_f32(0.0); 4],
    };
    let zb: [int32x4_t; 4] = match &w.zero_points {
        Some(z) if ZB => std::array::from_fn(|j| vld1q_s32(z.as_ptr().add(col0 + 4 * j))),
        _ => [vdupq_n_s32(0); 4],
    };
    let g = job.gelu.unwrap_or(Gelu { div: 1.0, add: 0.0, mul: 1.0 });
    for (r, acc) in acc.iter().enumerate() {
        let dst = job.out.0.add((m0 + r) * w.n + col0);
        for j in 0..4 {
            let mut v = vaddq_s32(acc[j], col_add[j]);
            if ZB {
                v = vsubq_s32(v, vmulq_n_s32(zb[j], a.row_terms[m0 + r]));
            }
            // Cast, then Mul: ONNX's order, no FMA.
            let mut f = vmulq_f32(vcvtq_f32_s32(v), scale[j]);
            if BIAS {
                f = vaddq_f32(f, bias[j]);
            }
            if GELU {
                f = gelu(f, g);
            }
            vst1q_f32(dst.add(4 * j), f);
        }
    }
}

/// [`store`] of the last half panel when fewer than [`HALF`] columns are
/// left: the bias (exactly n values) and GELU one value at a time.
///
/// # Safety
/// As [`store`], with `col0 < job.w.n < col0 + HALF`.
#[inline(never)]
unsafe fn store_part<const R: usize>(acc: &[[int32x4_t; 4]; R], a: &Activations, job: &Job, col0: usize, m0: usize) {
    let w = job.w;
    let valid = w.n - col0;
    let mut out = [0f32; HALF];
    for (r, acc) in acc.iter().enumerate() {
        for (j, acc) in acc.iter().enumerate() {
            let c = col0 + 4 * j;
            let mut v = vaddq_s32(*acc, vld1q_s32(job.col_add.as_ptr().add(c)));
            if let Some(zb) = &w.zero_points {
                v = vsubq_s32(v, vmulq_n_s32(vld1q_s32(zb.as_ptr().add(c)), a.row_terms[m0 + r]));
            }
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

/// `Gelu::apply` on 4 values: the same operations in the same order (the
/// scalar `mul_add` is `fmla`'s fused multiply-add), so the same bits. The
/// scalar form in the epilogue cost about 7 % of a base model's
/// instructions on the A76 (tools/bench/arm_lib_profile.py).
#[inline(always)]
unsafe fn gelu(y: float32x4_t, g: Gelu) -> float32x4_t {
    let x = vdivq_f32(y, vdupq_n_f32(g.div));
    // f32::clamp: NaN stays NaN, as with fmax/fmin.
    let x = vminq_f32(vmaxq_f32(x, vdupq_n_f32(-4.0)), vdupq_n_f32(4.0));
    let x2 = vmulq_f32(x, x);
    let mut p = vdupq_n_f32(ERF_P[0]);
    for c in &ERF_P[1..] {
        p = vfmaq_f32(vdupq_n_f32(*c), p, x2);
    }
    let mut q = vdupq_n_f32(ERF_Q[0]);
    for c in &ERF_Q[1..] {
        q = vfmaq_f32(vdupq_n_f32(*c), q, x2);
    }
    let erf = vdivq_f32(vmulq_f32(x, p), q);
    vmulq_f32(vmulq_f32(y, vaddq_f32(erf, vdupq_n_f32(g.add))), vdupq_n_f32(g.mul))
}

/// One k4 step of one row: `smull`/`smull2` of each 4-column register by
/// the row's 4 bytes (repeated in `q`), `sadalp` into the accumulators.
/// Assembly, because LLVM rewrites the intrinsics' `smull2` into `ext` +
/// `smull` once it sees that `q`'s halves are equal, and shuffles the
/// accumulators between registers every step: 60 instructions per step
/// of two rows instead of 39 (counted under qemu, tools/bench/arm_profile.py).
///
/// # Safety
/// None: registers only, NEON is part of every aarch64 CPU; `unsafe` for
/// the `asm!`.
#[inline(always)]
unsafe fn widening_step(acc: &mut [int32x4_t; 8], b: &[int8x16_t; 4], q: int8x16_t) {
    asm!(
        "smull  {t0:v}.8h, {b0:v}.8b, {q:v}.8b",
        "smull2 {t1:v}.8h, {b0:v}.16b, {q:v}.16b",
        "sadalp {a0:v}.4s, {t0:v}.8h",
        "sadalp {a1:v}.4s, {t1:v}.8h",
        "smull  {t2:v}.8h, {b1:v}.8b, {q:v}.8b",
        "smull2 {t3:v}.8h, {b1:v}.16b, {q:v}.16b",
        "sadalp {a2:v}.4s, {t2:v}.8h",
        "sadalp {a3:v}.4s, {t3:v}.8h",
        "smull  {t0:v}.8h, {b2:v}.8b, {q:v}.8b",
        "smull2 {t1:v}.8h, {b2:v}.16b, {q:v}.16b",
        "sadalp {a4:v}.4s, {t0:v}.8h",
        "sadalp {a5:v}.4s, {t1:v}.8h",
        "smull  {t2:v}.8h, {b3:v}.8b, {q:v}.8b",
        "smull2 {t3:v}.8h, {b3:v}.16b, {q:v}.16b",
        "sadalp {a6:v}.4s, {t2:v}.8h",
        "sadalp {a7:v}.4s, {t3:v}.8h",
        a0 = inout(vreg) acc[0],
        a1 = inout(vreg) acc[1],
        a2 = inout(vreg) acc[2],
        a3 = inout(vreg) acc[3],
        a4 = inout(vreg) acc[4],
        a5 = inout(vreg) acc[5],
        a6 = inout(vreg) acc[6],
        a7 = inout(vreg) acc[7],
        b0 = in(vreg) b[0],
        b1 = in(vreg) b[1],
        b2 = in(vreg) b[2],
        b3 = in(vreg) b[3],
        q = in(vreg) q,
        t0 = out(vreg) _,
        t1 = out(vreg) _,
        t2 = out(vreg) _,
        t3 = out(vreg) _,
        options(pure, nomem, nostack, preserves_flags),
    );
}

/// [`widening_step`] for two rows in one block, in fixed registers: as
/// two blocks, or with registers of LLVM's choosing, it rotates some
/// accumulators through spare registers every step.
///
/// # Safety
/// None, as [`widening_step`].
#[inline(always)]
unsafe fn widening_step2(
    a0: &mut [int32x4_t; 8],
    a1: &mut [int32x4_t; 8],
    b: &[int8x16_t; 4],
    q0: int8x16_t,
    q1: int8x16_t,
) {
    asm!(
        "smull  v22.8h, v16.8b, v20.8b",
        "smull2 v23.8h, v16.16b, v20.16b",
        "sadalp v0.4s, v22.8h",
        "sadalp v1.4s, v23.8h",
        "smull  v24.8h, v17.8b, v20.8b",
        "smull2 v25.8h, v17.16b, v20.16b",
        "sadalp v2.4s, v24.8h",
        "sadalp v3.4s, v25.8h",
        "smull  v22.8h, v18.8b, v20.8b",
        "smull2 v23.8h, v18.16b, v20.16b",
        "sadalp v4.4s, v22.8h",
        "sadalp v5.4s, v23.8h",
        "smull  v24.8h, v19.8b, v20.8b",
        "smull2 v25.8h, v19.16b, v20.16b",
        "sadalp v6.4s, v24.8h",
        "sadalp v7.4s, v25.8h",
        "smull  v22.8h, v16.8b, v21.8b",
        "smull2 v23.8h, v16.16b, v21.16b",
        "sadalp v8.4s, v22.8h",
        "sadalp v9.4s, v23.8h",
        "smull  v24.8h, v17.8b, v21.8b",
        "smull2 v25.8h, v17.16b, v21.16b",
        "sadalp v10.4s, v24.8h",
        "sadalp v11.4s, v25.8h",
        "smull  v22.8h, v18.8b, v21.8b",
        "smull2 v23.8h, v18.16b, v21.16b",
        "sadalp v12.4s, v22.8h",
        "sadalp v13.4s, v23.8h",
        "smull  v24.8h, v19.8b, v21.8b",
        "smull2 v25.8h, v19.16b, v21.16b",
        "sadalp v14.4s, v24.8h",
        "sadalp v15.4s, v25.8h",
        inout("v0") a0[0],
        inout("v1") a0[1],
        inout("v2") a0[2],
        inout("v3") a0[3],
        inout("v4") a0[4],
        inout("v5") a0[5],
        inout("v6") a0[6],
        inout("v7") a0[7],
        inout("v8") a1[0],
        inout("v9") a1[1],
        inout("v10") a1[2],
        inout("v11") a1[3],
        inout("v12") a1[4],
        inout("v13") a1[5],
        inout("v14") a1[6],
        inout("v15") a1[7],
        in("v16") b[0],
        in("v17") b[1],
        in("v18") b[2],
        in("v19") b[3],
        in("v20") q0,
        in("v21") q1,
        out("v22") _,
        out("v23") _,
        out("v24") _,
        out("v25") _,
        options(pure, nomem, nostack, preserves_flags),
    );
}

/// [`tile_neon`]'s loop for two rows over pairs of k-steps, for weights
/// without -128 ([`PackedWeights::no_i8_min`]), `passes` pairs: `smull`
/// then `smlal` add the two steps' products in i16 before one `sadalp`
/// widens them, 48 multiplies and adds per pair of steps of two rows
/// instead of 64. Exact: a product of a weight in -127..127 and an
/// activation in -128..127 is at most 16256 in size, two at most 32512.
///
/// Loads move their own pointers on: both steps' weights in two `ld1` of
/// four registers, each row's two 4-byte groups in one `ld2r` (each group
/// repeated across its register), then a count down: 54 instructions per
/// 48 multiplies. LLVM's loop around the same 48 (the multiplies as one
/// `asm!` block) had 65: a load per register, and row and weight addresses
/// recomputed with `add`s.
///
/// # Safety
/// No weight may be -128 (otherwise the i16 sums may wrap: wrong results,
/// not undefined behaviour); `rows` and `rows + stride` hold `8 * passes`
/// bytes, `steps` `256 * passes` (steps of 128, this half's 64 bytes
/// first); `passes > 0`.
#[inline(always)]
unsafe fn widening_pairs2(
    a0: &mut [int32x4_t; 8],
    a1: &mut [int32x4_t; 8],
    rows: *const i8,
    stride: usize,
    steps: *const i8,
    passes: usize,
) {
    asm!(
        "2:",
        "ld1 {{v16.16b, v17.16b, v18.16b, v19.16b}}, [{w}], {step}",
        "ld1 {{v20.16b, v21.16b, v22.16b, v23.16b}}, [{w}], {step}",
        "ld2r {{v24.4s, v25.4s}}, [{r0}], #8",
        "ld2r {{v26.4s, v27.4s}}, [{r1}], #8",
        "smull  v28.8h, v16.8b, v24.8b",
        "smull2 v29.8h, v16.16b, v24.16b",
        "smlal  v28.8h, v20.8b, v25.8b",
        "smlal2 v29.8h, v20.16b, v25.16b",
        "sadalp v0.4s, v28.8h",
        "sadalp v1.4s, v29.8h",
        "smull  v30.8h, v17.8b, v24.8b",
        "smull2 v31.8h, v17.16b, v24.16b",
        "smlal  v30.8h, v21.8b, v25.8b",
        "smlal2 v31.8h, v21.16b, v25.16b",
        "sadalp v2.4s, v30.8h",
        "sadalp v3.4s, v31.8h",
        "smull  v28.8h, v18.8b, v24.8b",
        "smull2 v29.8h, v18.16b, v24.16b",
        "smlal  v28.8h, v22.8b, v25.8b",
        "smlal2 v29.8h, v22.16b, v25.16b",
        "sadalp v4.4s, v28.8h",
        "sadalp v5.4s, v29.8h",
        "smull  v30.8h, v19.8b, v24.8b",
        "smull2 v31.8h, v19.16b, v24.16b",
        "smlal  v30.8h, v23.8b, v25.8b",
        "smlal2 v31.8h, v23.16b, v25.16b",
        "sadalp v6.4s, v30.8h",
        "sadalp v7.4s, v31.8h",
        "smull  v28.8h, v16.8b, v26.8b",
        "smull2 v29.8h, v16.16b, v26.16b",
        "smlal  v28.8h, v20.8b, v27.8b",
        "smlal2 v29.8h, v20.16b, v27.16b",
        "sadalp v8.4s, v28.8h",
        "sadalp v9.4s, v29.8h",
        "smull  v30.8h, v17.8b, v26.8b",
        "smull2 v31.8h, v17.16b, v26.16b",
        "smlal  v30.8h, v21.8b, v27.8b",
        "smlal2 v31.8h, v21.16b, v27.16b",
        "sadalp v10.4s, v30.8h",
        "sadalp v11.4s, v31.8h",
        "smull  v28.8h, v18.8b, v26.8b",
        "smull2 v29.8h, v18.16b, v26.16b",
        "smlal  v28.8h, v22.8b, v27.8b",
        "smlal2 v29.8h, v22.16b, v27.16b",
        "sadalp v12.4s, v28.8h",
        "sadalp v13.4s, v29.8h",
        "smull  v30.8h, v19.8b, v26.8b",
        "smull2 v31.8h, v19.16b, v26.16b",
        "smlal  v30.8h, v23.8b, v27.8b",
        "smlal2 v31.8h, v23.16b, v27.16b",
        "sadalp v14.4s, v30.8h",
        "sadalp v15.4s, v31.8h",
        "subs {n}, {n}, #1",
        "b.ne 2b",
        r0 = inout(reg) rows => _,
        r1 = inout(reg) rows.add(stride) => _,
        w = inout(reg) steps => _,
        step = in(reg) 128usize,
        n = inout(reg) passes => _,
        inout("v0") a0[0],
        inout("v1") a0[1],
        inout("v2") a0[2],
        inout("v3") a0[3],
        inout("v4") a0[4],
        inout("v5") a0[5],
        inout("v6") a0[6],
        inout("v7") a0[7],
        inout("v8") a1[0],
        inout("v9") a1[1],
        inout("v10") a1[2],
        inout("v11") a1[3],
        inout("v12") a1[4],
        inout("v13") a1[5],
        inout("v14") a1[6],
        inout("v15") a1[7],
        out("v16") _, out("v17") _, out("v18") _, out("v19") _,
        out("v20") _, out("v21") _, out("v22") _, out("v23") _,
        out("v24") _, out("v25") _, out("v26") _, out("v27") _,
        out("v28") _, out("v29") _, out("v30") _, out("v31") _,
        options(nostack, readonly),
    );
}

/// # Safety
/// `job` and `a` come from `Job::new` and `Activations::quantize` (NEON is
/// part of every aarch64 CPU).
#[target_feature(enable = "neon")]
pub(super) unsafe fn panel_neon(a: &Activations, job: &Job, panel: usize) {
    for half in 0..NR / HALF {
        if panel * NR + half * HALF >= job.w.n {
            break;
        }
        let mut m = 0;
        while m + 2 <= a.rows {
            tile_neon::<2>(a, job, panel, half, m);
            m += 2;
        }
        if m < a.rows {
            tile_neon::<1>(a, job, panel, half, m);
        }
    }
}

/// Rows `m0..m0 + R` of one half panel with widening multiplies.
///
/// # Safety
/// As [`panel_neon`], with `m0 + R <= a.rows` and `half` 0 or 1.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn tile_neon<const R: usize>(a: &Activations, job: &Job, panel: usize, half: usize, m0: usize) {
    let w = job.w;
    let steps = (w.steps.as_ptr().add(panel * w.k4) as *const i8).add(half * 64);
    let rows = a.data.as_ptr().add(m0 * a.stride) as *const i8;
    // Per row and 4 columns: k0 + k1 and k2 + k3 partial sums of 2 columns
    // (low), of the other 2 (high).
    let mut acc = [[vdupq_n_s32(0); 8]; R];
    let b_at = |s: usize| [0, 1, 2, 3].map(|j| vld1q_s8(steps.add(s * 128 + j * 16)));
    let q = |r: usize, s: usize| vreinterpretq_s8_s32(vld1q_dup_s32(rows.add(r * a.stride + 4 * s) as *const i32));
    let mut s = 0;
    if let ([a0, a1], true, 2..) = (&mut acc[..], w.no_i8_min, w.k4) {
        widening_pairs2(a0, a1, rows, a.stride, steps, w.k4 / 2);
        s = w.k4 / 2 * 2;
    }
    for s in s..w.k4 {
        let b = b_at(s);
        match &mut acc[..] {
            [a0, a1] => widening_step2(a0, a1, &b, q(0, s), q(1, s)),
            rows => rows.iter_mut().enumerate().for_each(|(r, acc)| widening_step(acc, &b, q(r, s))),
        }
    }
    let mut sums = [[vdupq_n_s32(0); 4]; R];
    for (sums, acc) in sums.iter_mut().zip(&acc) {
        for j in 0..4 {
            sums[j] = vpaddq_s32(acc[2 * j], acc[2 * j + 1]);
        }
    }
    store(&sums, a, job, panel, half, m0);
}

/// `super::quantize_into` 16 values at a time (the tail through it), the
/// same bytes; returns their sum. `frintn` rounds half to even like the
/// scalar trick, NaN is masked to 0 before the zero point is added, and
/// everything past the byte range saturates in the same clamp.
///
/// # Safety
/// `q` is as long as `x`. (NEON is part of every aarch64 CPU.)
pub(super) unsafe fn quantize_row(x: &[f32], q: &mut [u8], scale: f32, zero_point: u8) -> i32 {
    debug_assert_eq!(x.len(), q.len());
    let (scale_v, zp) = (vdupq_n_f32(scale), vdupq_n_f32(zero_point as f32));
    let (lo, hi) = (vdupq_n_f32(0.0), vdupq_n_f32(255.0));
    let mut sums = vdupq_n_u32(0);
    let blocks = x.len() / 16;
    for b in 0..blocks {
        let v: [uint32x4_t; 4] = std::array::from_fn(|l| {
            let y = vdivq_f32(vld1q_f32(x.as_ptr().add(16 * b + 4 * l)), scale_v);
            let y = vreinterpretq_f32_u32(vandq_u32(vreinterpretq_u32_f32(y), vceqq_f32(y, y)));
            vcvtq_u32_f32(vminq_f32(vmaxq_f32(vaddq_f32(vrndnq_f32(y), zp), lo), hi))
        });
        sums = vaddq_u32(vaddq_u32(sums, vaddq_u32(v[0], v[1])), vaddq_u32(v[2], v[3]));
        let h0 = vcombine_u16(vmovn_u32(v[0]), vmovn_u32(v[1]));
        let h1 = vcombine_u16(vmovn_u32(v[2]), vmovn_u32(v[3]));
        vst1q_u8(q.as_mut_ptr().add(16 * b), vcombine_u8(vmovn_u16(h0), vmovn_u16(h1)));
    }
    let done = 16 * blocks;
    super::quantize_into(&x[done..], &mut q[done..], scale, zero_point);
    vaddvq_u32(sums) as i32 + q[done..].iter().map(|&v| v as i32).sum::<i32>()
}
