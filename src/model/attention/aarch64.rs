//! The attention block's three steps in NEON (every aarch64 CPU: Pi 4 and
//! 5, Jetson): scores (4 rows x 16 keys per tile, 16 accumulators), the
//! biased exponentials of each row, and their weighted sum of values
//! (5 rows x 16 columns, 20 accumulators), divided by the row's sum as it
//! is stored. The same steps as `x86.rs`, at a quarter of its width; the
//! products take four steps of the inner dimension per load of the left
//! operand and multiply by lane, as tract's NEON kernels do.

use std::arch::aarch64::*;

/// One head's operands of [`scores`] from the block's `[T, width]` inputs
/// (`q` and `k` point at the head's first column): `qs[i][d] = q[i][d] *
/// q_scale` and `kt[d][j] = k[j][d] * k_scale`, zero for keys `t..tp`;
/// the keys transposed 4 x 4 in registers.
///
/// # Safety
/// `q` and `k` point to `t` rows of `width` f32, `hd` of them read per
/// row; `qs` holds `t * hd` values, `kt` `hd * tp`; `hd` and `tp` are
/// multiples of 16 and `t <= tp`.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn operands(
    q: *const f32,
    k: *const f32,
    width: usize,
    (q_scale, k_scale): (f32, f32),
    qs: &mut [f32],
    kt: &mut [f32],
    t: usize,
    tp: usize,
    hd: usize,
) {
    debug_assert!(qs.len() >= t * hd && kt.len() >= hd * tp && tp.is_multiple_of(16) && hd.is_multiple_of(16));
    for i in 0..t {
        for d in (0..hd).step_by(4) {
            vst1q_f32(qs.as_mut_ptr().add(i * hd + d), vmulq_n_f32(vld1q_f32(q.add(i * width + d)), q_scale));
        }
    }
    for j in (0..tp).step_by(4) {
        for d in (0..hd).step_by(4) {
            let [a, b, c, e]: [float32x4_t; 4] = std::array::from_fn(|r| {
                if j + r < t {
                    vmulq_n_f32(vld1q_f32(k.add((j + r) * width + d)), k_scale)
                } else {
                    vdupq_n_f32(0.0)
                }
            });
            let (ab0, ab1) = (vreinterpretq_f64_f32(vtrn1q_f32(a, b)), vreinterpretq_f64_f32(vtrn2q_f32(a, b)));
            let (ce0, ce1) = (vreinterpretq_f64_f32(vtrn1q_f32(c, e)), vreinterpretq_f64_f32(vtrn2q_f32(c, e)));
            let columns = [vtrn1q_f64(ab0, ce0), vtrn1q_f64(ab1, ce1), vtrn2q_f64(ab0, ce0), vtrn2q_f64(ab1, ce1)];
            for (dd, v) in columns.into_iter().enumerate() {
                vst1q_f32(kt.as_mut_ptr().add((d + dd) * tp + j), vreinterpretq_f32_f64(v));
            }
        }
    }
}

/// `s[i][j] = sum_d qs[i][d] * kt[d][j]` for rows `0..t` and keys `0..tp`
/// (`kt` is zero past key `t`, so those scores are 0), added to what `s`
/// holds when `add` (a bias written there first).
///
/// # Safety
/// `qs` holds `t * hd` values, `kt` `hd * tp`, `s` `t * tp`; `tp` and `hd`
/// are multiples of 16. (NEON is part of every aarch64 CPU.)
pub(super) unsafe fn scores(qs: &[f32], kt: &[f32], s: &mut [f32], add: bool, t: usize, tp: usize, hd: usize) {
    debug_assert!(qs.len() >= t * hd && kt.len() >= hd * tp && s.len() >= t * tp && tp.is_multiple_of(16));
    let (qs, kt, s) = (qs.as_ptr(), kt.as_ptr(), s.as_mut_ptr());
    for j in (0..tp).step_by(16) {
        let mut i = 0;
        while i < t {
            let rows = (t - i).min(4);
            match rows {
                1 => scores_tile::<1>(qs, kt, s, add, i, j, tp, hd),
                2 => scores_tile::<2>(qs, kt, s, add, i, j, tp, hd),
                3 => scores_tile::<3>(qs, kt, s, add, i, j, tp, hd),
                _ => scores_tile::<4>(qs, kt, s, add, i, j, tp, hd),
            }
            i += rows;
        }
    }
}

/// Rows `i..i + R`, keys `j..j + 16` of [`scores`].
///
/// # Safety
/// As [`scores`], with `i + R <= t` and `j + 16 <= tp`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn scores_tile<const R: usize>(
    qs: *const f32,
    kt: *const f32,
    s: *mut f32,
    add: bool,
    i: usize,
    j: usize,
    tp: usize,
    hd: usize,
) {
    let mut acc = [[vdupq_n_f32(0.0); 4]; R];
    if add {
        for (r, row) in acc.iter_mut().enumerate() {
            for (c, v) in row.iter_mut().enumerate() {
                *v = vld1q_f32(s.add((i + r) * tp + j + 4 * c));
            }
        }
    }
    // Four d at a time: each row's four queries in one register, used by
    // lane (hd is a multiple of 16).
    for d in (0..hd).step_by(4) {
        let a: [float32x4_t; R] = std::array::from_fn(|r| vld1q_f32(qs.add((i + r) * hd + d)));
        step::<0, R>(&mut acc, &a, kt.add(d * tp + j));
        step::<1, R>(&mut acc, &a, kt.add((d + 1) * tp + j));
        step::<2, R>(&mut acc, &a, kt.add((d + 2) * tp + j));
        step::<3, R>(&mut acc, &a, kt.add((d + 3) * tp + j));
    }
    for (r, row) in acc.iter().enumerate() {
        for (c, v) in row.iter().enumerate() {
            vst1q_f32(s.add((i + r) * tp + j + 4 * c), *v);
        }
    }
}

/// `acc[r] += a[r][L] * b[0..16]`: one rank-1 step of a tile, 16 values of
/// `b` against lane `L` of each row's register.
///
/// # Safety
/// `b` points to 16 readable f32.
#[inline(always)]
unsafe fn step<const L: i32, const R: usize>(acc: &mut [[float32x4_t; 4]; R], a: &[float32x4_t; R], b: *const f32) {
    let b = [0, 1, 2, 3].map(|c| vld1q_f32(b.add(4 * c)));
    for (acc, a) in acc.iter_mut().zip(a) {
        for c in 0..4 {
            acc[c] = vfmaq_laneq_f32::<L>(acc[c], b[c], *a);
        }
    }
}

/// Each row `i < t` of `s` (stride `tp`): `exp(x - max)` over the first
/// `t` entries; `sums[i]` gets the row's sum, by which [`weighted_sum`]
/// divides.
///
/// # Safety
/// `s` holds `t * tp` values (`t <= tp`), `sums` `t` (checked in debug
/// builds; the slices are indexed with bounds checks except within whole
/// blocks of 4 of a row).
pub(super) unsafe fn exp_rows(s: &mut [f32], t: usize, tp: usize, sums: &mut [f32]) {
    debug_assert!(s.len() >= t * tp && sums.len() >= t);
    let whole = t / 4 * 4;
    for (i, sum_out) in sums.iter_mut().enumerate().take(t) {
        let row = &mut s[i * tp..i * tp + t];
        let p = row.as_mut_ptr();
        let mut max = vdupq_n_f32(f32::MIN);
        for b in (0..whole).step_by(4) {
            max = vmaxq_f32(max, vld1q_f32(p.add(b)));
        }
        let max = row[whole..].iter().fold(vmaxvq_f32(max), |m, &x| m.max(x));
        let maxv = vdupq_n_f32(max);
        let mut sum = vdupq_n_f32(0.0);
        for b in (0..whole).step_by(4) {
            let e = exp(vsubq_f32(vld1q_f32(p.add(b)), maxv));
            sum = vaddq_f32(sum, e);
            vst1q_f32(p.add(b), e);
        }
        // The last 1-3 entries through the same exp (the padding is
        // neither stored nor summed).
        let mut tail = [0.0f32; 4];
        let n = t - whole;
        tail[..n].copy_from_slice(&row[whole..]);
        let e = exp(vsubq_f32(vld1q_f32(tail.as_ptr()), maxv));
        vst1q_f32(tail.as_mut_ptr(), e);
        row[whole..].copy_from_slice(&tail[..n]);
        *sum_out = vaddvq_f32(sum) + tail[..n].iter().sum::<f32>();
    }
}

/// e^x to about 1 ulp: `2^n * p(r)` with `n = round(x / ln 2)`, `r` the
/// remainder split in two parts of ln 2, `p` Taylor to degree 7 (error
/// below 1e-8 on |r| <= ln 2 / 2). x is held to [-87.3, 88] so that 2^n is
/// a normal float built from its exponent bits: below, 2^-126, a softmax
/// term too small to change any sum.
///
/// # Safety
/// None beyond NEON, which every aarch64 CPU has: `unsafe` only because
/// the intrinsics are.
#[inline(always)]
unsafe fn exp(x: float32x4_t) -> float32x4_t {
    let x = vminq_f32(vmaxq_f32(x, vdupq_n_f32(-87.3)), vdupq_n_f32(88.0));
    let n = vrndnq_f32(vmulq_f32(x, vdupq_n_f32(std::f32::consts::LOG2_E)));
    let r = vfmsq_f32(x, n, vdupq_n_f32(0.693_145_75));
    let r = vfmsq_f32(r, n, vdupq_n_f32(1.428_606_8e-6));
    let mut p = vdupq_n_f32(1.0 / 5040.0);
    for c in [1.0 / 720.0, 1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0] {
        p = vfmaq_f32(vdupq_n_f32(c), p, r);
    }
    let two_n = vshlq_n_s32::<23>(vaddq_s32(vcvtq_s32_f32(n), vdupq_n_s32(127)));
    vmulq_f32(p, vreinterpretq_f32_s32(two_n))
}

/// `out[i][:] = sum_j e[i][j] * v[j][:] / sums[i]` for rows `0..t`, `hd`
/// columns (a multiple of 16) in blocks of 16; `v` and `out` rows are
/// `width` apart, `e` rows `tp`.
///
/// # Safety
/// `p` holds `t * tp` values and `sums` `t`; `v` and `out` point to `t`
/// rows of `width >= hd` f32 that nothing else accesses meanwhile.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn weighted_sum(
    p: &[f32],
    sums: &[f32],
    v: *const f32,
    width: usize,
    out: *mut f32,
    t: usize,
    tp: usize,
    hd: usize,
) {
    assert!(hd.is_multiple_of(16), "the pattern accepts head sizes 16, 32, 64 and 128 only");
    debug_assert!(p.len() >= t * tp && sums.len() >= t);
    let p = p.as_ptr();
    for col in (0..hd).step_by(16) {
        let (v, out) = (v.add(col), out.add(col));
        let mut i = 0;
        while i < t {
            let rows = (t - i).min(5);
            match rows {
                1 => pv_tile::<1>(p, sums, v, width, out, i, t, tp),
                2 => pv_tile::<2>(p, sums, v, width, out, i, t, tp),
                3 => pv_tile::<3>(p, sums, v, width, out, i, t, tp),
                4 => pv_tile::<4>(p, sums, v, width, out, i, t, tp),
                _ => pv_tile::<5>(p, sums, v, width, out, i, t, tp),
            }
            i += rows;
        }
    }
}

/// Rows `i..i + R`, 16 columns of [`weighted_sum`] (`v` and `out` start
/// at the block's first column).
///
/// # Safety
/// As [`weighted_sum`], with `i + R <= t`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn pv_tile<const R: usize>(
    p: *const f32,
    sums: &[f32],
    v: *const f32,
    width: usize,
    out: *mut f32,
    i: usize,
    t: usize,
    tp: usize,
) {
    let mut acc = [[vdupq_n_f32(0.0); 4]; R];
    let whole = t / 4 * 4;
    for j in (0..whole).step_by(4) {
        let a: [float32x4_t; R] = std::array::from_fn(|r| vld1q_f32(p.add((i + r) * tp + j)));
        step::<0, R>(&mut acc, &a, v.add(j * width));
        step::<1, R>(&mut acc, &a, v.add((j + 1) * width));
        step::<2, R>(&mut acc, &a, v.add((j + 2) * width));
        step::<3, R>(&mut acc, &a, v.add((j + 3) * width));
    }
    // The last 1-3 keys one at a time: the probabilities past key t are
    // not there to load as a vector (nor are the value rows).
    for j in whole..t {
        let a: [float32x4_t; R] = std::array::from_fn(|r| vdupq_n_f32(*p.add((i + r) * tp + j)));
        step::<0, R>(&mut acc, &a, v.add(j * width));
    }
    for (r, row) in acc.iter().enumerate() {
        let sum = vdupq_n_f32(sums[i + r]);
        for (c, v) in row.iter().enumerate() {
            vst1q_f32(out.add((i + r) * width + 4 * c), vdivq_f32(*v, sum));
        }
    }
}
