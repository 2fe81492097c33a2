//! The attention block's three steps in AVX2 and FMA, for x86 CPUs without
//! AVX-512 (Zen 1-3, Haswell to Comet Lake, the N100's Gracemont): the
//! steps of `x86.rs` at half its width, in 16 registers. Scores and
//! weighted sums both run 6 rows x 16 columns per tile (12 accumulators,
//! 2 registers of the right operand, one broadcast).

use std::arch::x86_64::*;

const ROWS: usize = 6;

/// One head's operands of [`scores`] from the block's `[T, width]` inputs
/// (`q` and `k` point at the head's first column): `qs[i][d] = q[i][d] *
/// q_scale` and `kt[d][j] = k[j][d] * k_scale`, zero for keys `t..tp`;
/// the keys transposed 8 x 8 in registers.
///
/// # Safety
/// AVX2 and FMA must be present; `q` and `k` point to `t` rows of `width`
/// f32, `hd` of them read per row; `qs` holds `t * hd` values, `kt` `hd *
/// tp`; `hd` and `tp` are multiples of 16 and `t <= tp`.
#[target_feature(enable = "avx2,fma")]
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
    let (qsc, ksc) = (_mm256_set1_ps(q_scale), _mm256_set1_ps(k_scale));
    for i in 0..t {
        for d in (0..hd).step_by(8) {
            let v = _mm256_mul_ps(_mm256_loadu_ps(q.add(i * width + d)), qsc);
            _mm256_storeu_ps(qs.as_mut_ptr().add(i * hd + d), v);
        }
    }
    for j in (0..tp).step_by(8) {
        for d in (0..hd).step_by(8) {
            let rows: [__m256; 8] = std::array::from_fn(|r| {
                if j + r < t {
                    _mm256_mul_ps(_mm256_loadu_ps(k.add((j + r) * width + d)), ksc)
                } else {
                    _mm256_setzero_ps()
                }
            });
            for (dd, v) in transpose(rows).into_iter().enumerate() {
                _mm256_storeu_ps(kt.as_mut_ptr().add((d + dd) * tp + j), v);
            }
        }
    }
}

/// An 8 x 8 block of f32 transposed: pairs, then quads within 128-bit
/// lanes, then the lanes.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn transpose(r: [__m256; 8]) -> [__m256; 8] {
    // t[2p], t[2p + 1]: rows 2p and 2p + 1 interleaved, low and high pairs.
    let t: [__m256; 8] = std::array::from_fn(|i| {
        let (a, b) = (r[i & !1], r[i | 1]);
        if i % 2 == 0 {
            _mm256_unpacklo_ps(a, b)
        } else {
            _mm256_unpackhi_ps(a, b)
        }
    });
    // s[4h + c]: column c (and c + 4 in the high lane) of rows 4h..4h + 4.
    let s: [__m256; 8] = std::array::from_fn(|i| {
        let base = i & !3;
        let (a, b) = (t[base + (i % 4) / 2], t[base + (i % 4) / 2 + 2]);
        if i % 2 == 0 {
            _mm256_shuffle_ps::<0x44>(a, b)
        } else {
            _mm256_shuffle_ps::<0xee>(a, b)
        }
    });
    std::array::from_fn(|c| {
        if c < 4 {
            _mm256_permute2f128_ps::<0x20>(s[c], s[c + 4])
        } else {
            _mm256_permute2f128_ps::<0x31>(s[c - 4], s[c])
        }
    })
}

/// `s[i][j] = sum_d qs[i][d] * kt[d][j]` for rows `0..t` and keys `0..tp`
/// (`kt` is zero past key `t`, so those scores are 0), added to what `s`
/// holds when `add` (a bias written there first).
///
/// # Safety
/// AVX2 and FMA must be present; `qs` holds `t * hd` values, `kt` `hd *
/// tp`, `s` `t * tp`, and `tp` is a multiple of 16.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn scores(qs: &[f32], kt: &[f32], s: &mut [f32], add: bool, t: usize, tp: usize, hd: usize) {
    debug_assert!(qs.len() >= t * hd && kt.len() >= hd * tp && s.len() >= t * tp && tp.is_multiple_of(16));
    let (qs, kt, s) = (qs.as_ptr(), kt.as_ptr(), s.as_mut_ptr());
    for j in (0..tp).step_by(16) {
        let mut i = 0;
        while i < t {
            let rows = (t - i).min(ROWS);
            match rows {
                1 => scores_tile::<1>(qs, kt, s, add, i, j, tp, hd),
                2 => scores_tile::<2>(qs, kt, s, add, i, j, tp, hd),
                3 => scores_tile::<3>(qs, kt, s, add, i, j, tp, hd),
                4 => scores_tile::<4>(qs, kt, s, add, i, j, tp, hd),
                5 => scores_tile::<5>(qs, kt, s, add, i, j, tp, hd),
                _ => scores_tile::<ROWS>(qs, kt, s, add, i, j, tp, hd),
            }
            i += rows;
        }
    }
}

/// Rows `i..i + R`, keys `j..j + 16` of [`scores`].
///
/// # Safety
/// As [`scores`], with `i + R <= t` and `j + 16 <= tp`.
#[inline]
#[target_feature(enable = "avx2,fma")]
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
    let mut acc = [[_mm256_setzero_ps(); 2]; R];
    if add {
        for (r, acc) in acc.iter_mut().enumerate() {
            for (c, acc) in acc.iter_mut().enumerate() {
                *acc = _mm256_loadu_ps(s.add((i + r) * tp + j + 8 * c));
            }
        }
    }
    for d in 0..hd {
        let b = [0, 1].map(|c| _mm256_loadu_ps(kt.add(d * tp + j + 8 * c)));
        for (r, acc) in acc.iter_mut().enumerate() {
            let a = _mm256_set1_ps(*qs.add((i + r) * hd + d));
            acc[0] = _mm256_fmadd_ps(a, b[0], acc[0]);
            acc[1] = _mm256_fmadd_ps(a, b[1], acc[1]);
        }
    }
    // A copy, so that `acc` is indexed by constants only and stays in
    // registers through the loop above.
    let mut sums = [[_mm256_setzero_ps(); 2]; R];
    sums.copy_from_slice(&acc);
    for (r, sums) in sums.iter().enumerate() {
        for (c, v) in sums.iter().enumerate() {
            _mm256_storeu_ps(s.add((i + r) * tp + j + 8 * c), *v);
        }
    }
}

/// Each row `i < t` of `s` (stride `tp`): `exp(x - max)` over the first
/// `t` entries; `sums[i]` gets the row's sum, by which [`weighted_sum`]
/// divides.
///
/// # Safety
/// AVX2 and FMA must be present; `s` holds `t * tp` values (`t <= tp`),
/// `sums` `t` (the slices are indexed with bounds checks except within
/// whole blocks of 8 of a row).
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn exp_rows(s: &mut [f32], t: usize, tp: usize, sums: &mut [f32]) {
    debug_assert!(s.len() >= t * tp && sums.len() >= t);
    let whole = t / 8 * 8;
    let lanes = |v: __m256| {
        let mut a = [0f32; 8];
        _mm256_storeu_ps(a.as_mut_ptr(), v);
        a
    };
    for (i, sum_out) in sums.iter_mut().enumerate().take(t) {
        let row = &mut s[i * tp..i * tp + t];
        let p = row.as_mut_ptr();
        let mut max = _mm256_set1_ps(f32::MIN);
        for b in (0..whole).step_by(8) {
            max = _mm256_max_ps(max, _mm256_loadu_ps(p.add(b)));
        }
        let max = lanes(max).into_iter().chain(row[whole..].iter().copied()).fold(f32::MIN, f32::max);
        let maxv = _mm256_set1_ps(max);
        let mut sum = _mm256_setzero_ps();
        for b in (0..whole).step_by(8) {
            let e = exp(_mm256_sub_ps(_mm256_loadu_ps(p.add(b)), maxv));
            sum = _mm256_add_ps(sum, e);
            _mm256_storeu_ps(p.add(b), e);
        }
        // The last 1-7 entries through the same exp (the padding is
        // neither stored nor summed).
        let mut tail = [0f32; 8];
        let n = t - whole;
        tail[..n].copy_from_slice(&row[whole..]);
        let e = lanes(exp(_mm256_sub_ps(_mm256_loadu_ps(tail.as_ptr()), maxv)));
        row[whole..].copy_from_slice(&e[..n]);
        *sum_out = lanes(sum).iter().sum::<f32>() + e[..n].iter().sum::<f32>();
    }
}

/// e^x to about 1 ulp, as `aarch64.rs` computes it: `2^n * p(r)` with
/// `n = round(x / ln 2)`, `r` the remainder split in two parts of ln 2, `p`
/// Taylor to degree 7. x is held to [-87.3, 88] so that 2^n is a normal
/// float built from its exponent bits.
///
/// # Safety
/// AVX2 and FMA must be present.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn exp(x: __m256) -> __m256 {
    let x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.3)), _mm256_set1_ps(88.0));
    let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm256_mul_ps(
        x,
        _mm256_set1_ps(std::f32::consts::LOG2_E),
    ));
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693_145_75), x);
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(1.428_606_8e-6), r);
    let mut p = _mm256_set1_ps(1.0 / 5040.0);
    for c in [1.0 / 720.0, 1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0] {
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
    }
    let two_n = _mm256_slli_epi32::<23>(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)));
    _mm256_mul_ps(p, _mm256_castsi256_ps(two_n))
}

/// `out[i][:] = sum_j e[i][j] * v[j][:] / sums[i]` for rows `0..t`, `hd`
/// columns (a multiple of 16) in blocks of 16; `v` and `out` rows are
/// `width` apart, `e` rows `tp`.
///
/// # Safety
/// AVX2 and FMA must be present; `p` holds `t * tp` values and `sums` `t`;
/// `v` and `out` point to `t` rows of `width >= hd` f32 that nothing else
/// accesses meanwhile.
#[target_feature(enable = "avx2,fma")]
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
            let rows = (t - i).min(ROWS);
            match rows {
                1 => pv_tile::<1>(p, sums, v, width, out, i, t, tp),
                2 => pv_tile::<2>(p, sums, v, width, out, i, t, tp),
                3 => pv_tile::<3>(p, sums, v, width, out, i, t, tp),
                4 => pv_tile::<4>(p, sums, v, width, out, i, t, tp),
                5 => pv_tile::<5>(p, sums, v, width, out, i, t, tp),
                _ => pv_tile::<ROWS>(p, sums, v, width, out, i, t, tp),
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
#[inline]
#[target_feature(enable = "avx2,fma")]
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
    let mut acc = [[_mm256_setzero_ps(); 2]; R];
    for j in 0..t {
        let b = [0, 1].map(|c| _mm256_loadu_ps(v.add(j * width + 8 * c)));
        for (r, acc) in acc.iter_mut().enumerate() {
            let a = _mm256_set1_ps(*p.add((i + r) * tp + j));
            acc[0] = _mm256_fmadd_ps(a, b[0], acc[0]);
            acc[1] = _mm256_fmadd_ps(a, b[1], acc[1]);
        }
    }
    let mut sums_acc = [[_mm256_setzero_ps(); 2]; R];
    sums_acc.copy_from_slice(&acc);
    for (r, row) in sums_acc.iter().enumerate() {
        let sum = _mm256_set1_ps(sums[i + r]);
        for (c, v) in row.iter().enumerate() {
            _mm256_storeu_ps(out.add((i + r) * width + 8 * c), _mm256_div_ps(*v, sum));
        }
    }
}
