//! The attention block's three steps in AVX-512: scores (8 rows x 32
//! keys per tile, 16 accumulators), the biased exponentials of each row,
//! and their weighted sum of values (up to 24 accumulators), divided by
//! the row's sum as it is stored.

use std::arch::x86_64::*;

/// One head's operands of [`scores`] from the block's `[T, width]` inputs
/// (`q` and `k` point at the head's first column): `qs[i][d] = q[i][d] *
/// q_scale` and `kt[d][j] = k[j][d] * k_scale`, zero for keys `t..tp`.
/// The keys are transposed 16 x 16 in registers: storing them one value
/// at a time, 832 bytes apart, took a third as long as the scores.
///
/// # Safety
/// AVX-512 F must be present; `q` and `k` point to `t` rows of `width`
/// f32, `hd` of them read per row; `qs` holds `t * hd` values, `kt` `hd * tp`;
/// `hd` and `tp` are multiples of 16 and `t <= tp`.
#[target_feature(enable = "avx512f")]
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
    let (qsc, ksc) = (_mm512_set1_ps(q_scale), _mm512_set1_ps(k_scale));
    for i in 0..t {
        for d in (0..hd).step_by(16) {
            let v = _mm512_mul_ps(_mm512_loadu_ps(q.add(i * width + d)), qsc);
            _mm512_storeu_ps(qs.as_mut_ptr().add(i * hd + d), v);
        }
    }
    for j in (0..tp).step_by(16) {
        for d in (0..hd).step_by(16) {
            let rows: [__m512; 16] = std::array::from_fn(|r| {
                if j + r < t {
                    _mm512_mul_ps(_mm512_loadu_ps(k.add((j + r) * width + d)), ksc)
                } else {
                    _mm512_setzero_ps()
                }
            });
            for (dd, v) in transpose(rows).into_iter().enumerate() {
                _mm512_storeu_ps(kt.as_mut_ptr().add((d + dd) * tp + j), v);
            }
        }
    }
}

/// A 16 x 16 block of f32 transposed: pairs, then quads within 128-bit
/// lanes, then the lanes themselves in two steps.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn transpose(r: [__m512; 16]) -> [__m512; 16] {
    let t: [__m512; 16] = std::array::from_fn(|i| {
        let (a, b) = (r[i & !1], r[i | 1]);
        if i % 2 == 0 {
            _mm512_unpacklo_ps(a, b)
        } else {
            _mm512_unpackhi_ps(a, b)
        }
    });
    // Within each group of four: (t0, t2) and (t1, t3), low then high halves.
    let r: [__m512; 16] = std::array::from_fn(|i| {
        let base = i & !3;
        let (a, b) = (t[base + (i % 4) / 2], t[base + (i % 4) / 2 + 2]);
        if i % 2 == 0 {
            _mm512_shuffle_ps::<0x44>(a, b)
        } else {
            _mm512_shuffle_ps::<0xee>(a, b)
        }
    });
    // Within each group of eight: lanes 0 and 2 (0x88) or 1 and 3 (0xdd) of rows i and i + 4.
    let t: [__m512; 16] = std::array::from_fn(|i| {
        let base = i & !7;
        let (a, b) = (r[base + i % 4], r[base + i % 4 + 4]);
        if i % 8 < 4 {
            _mm512_shuffle_f32x4::<0x88>(a, b)
        } else {
            _mm512_shuffle_f32x4::<0xdd>(a, b)
        }
    });
    std::array::from_fn(|i| {
        let (a, b) = (t[i % 8], t[i % 8 + 8]);
        if i < 8 {
            _mm512_shuffle_f32x4::<0x88>(a, b)
        } else {
            _mm512_shuffle_f32x4::<0xdd>(a, b)
        }
    })
}

/// `s[i][j] = sum_d qs[i][d] * kt[d][j]` for rows `0..t` and keys `0..tp`
/// (`kt` is zero past key `t`, so those scores are 0), added to what `s`
/// holds when `add` (a bias written there first).
///
/// # Safety
/// AVX-512 F must be present; `qs` holds `t * hd` values, `kt` `hd * tp`,
/// `s` `t * tp`, and `tp` is a multiple of 16.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn scores(qs: &[f32], kt: &[f32], s: &mut [f32], add: bool, t: usize, tp: usize, hd: usize) {
    debug_assert!(qs.len() >= t * hd && kt.len() >= hd * tp && s.len() >= t * tp && tp.is_multiple_of(16));
    let (qs, kt, s) = (qs.as_ptr(), kt.as_ptr(), s.as_mut_ptr());
    let mut j = 0;
    while j < tp {
        let wide = tp - j >= 32;
        let mut i = 0;
        while i < t {
            let rows = (t - i).min(8);
            macro_rules! tile {
                ($($r:literal)*) => {
                    match (rows, wide) {
                        $(($r, true) => scores_tile::<$r, 2>(qs, kt, s, add, i, j, tp, hd),
                          ($r, false) => scores_tile::<$r, 1>(qs, kt, s, add, i, j, tp, hd),)*
                        _ => unreachable!(),
                    }
                };
            }
            tile!(1 2 3 4 5 6 7 8);
            i += rows;
        }
        j += if wide { 32 } else { 16 };
    }
}

/// Rows `i..i + R`, keys `j..j + 16 * NB` of [`scores`].
///
/// # Safety
/// As [`scores`], with `i + R <= t` and `j + 16 * NB <= tp`.
#[inline]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn scores_tile<const R: usize, const NB: usize>(
    qs: *const f32,
    kt: *const f32,
    s: *mut f32,
    add: bool,
    i: usize,
    j: usize,
    tp: usize,
    hd: usize,
) {
    let mut acc = [[_mm512_setzero_ps(); NB]; R];
    if add {
        for (r, acc) in acc.iter_mut().enumerate() {
            for (c, acc) in acc.iter_mut().enumerate() {
                *acc = _mm512_loadu_ps(s.add((i + r) * tp + j + 16 * c));
            }
        }
    }
    for d in 0..hd {
        let mut b = [_mm512_setzero_ps(); NB];
        for (c, b) in b.iter_mut().enumerate() {
            *b = _mm512_loadu_ps(kt.add(d * tp + j + 16 * c));
        }
        for (r, acc) in acc.iter_mut().enumerate() {
            let a = _mm512_set1_ps(*qs.add((i + r) * hd + d));
            for c in 0..NB {
                acc[c] = _mm512_fmadd_ps(a, b[c], acc[c]);
            }
        }
    }
    // A copy, so that `acc` is indexed by constants only and stays in
    // registers through the loop above.
    let mut sums = [[_mm512_setzero_ps(); NB]; R];
    sums.copy_from_slice(&acc);
    for (r, sums) in sums.iter().enumerate() {
        for (c, v) in sums.iter().enumerate() {
            _mm512_storeu_ps(s.add((i + r) * tp + j + 16 * c), *v);
        }
    }
}

/// Each row `i < t` of `s` (stride `tp`): `exp(x - max)` over the first
/// `t` entries; `sums[i]` gets the row's sum, by which [`weighted_sum`]
/// divides (once per output value instead of once per probability).
///
/// # Safety
/// AVX-512 F must be present; `s` holds `t * tp` values (`t <= tp`),
/// `sums` `t`.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn exp_rows(s: &mut [f32], t: usize, tp: usize, sums: &mut [f32]) {
    let tail: __mmask16 = if t.is_multiple_of(16) { 0xffff } else { ((1u32 << (t % 16)) - 1) as u16 };
    let blocks = t.div_ceil(16);
    let mask = |b: usize| if b + 1 == blocks { tail } else { 0xffff };
    for (i, sum_out) in sums.iter_mut().enumerate().take(t) {
        let row = s.as_mut_ptr().add(i * tp);
        let mut max = _mm512_set1_ps(f32::MIN);
        for b in 0..blocks {
            max = _mm512_mask_max_ps(max, mask(b), _mm512_loadu_ps(row.add(16 * b)), max);
        }
        let max = _mm512_set1_ps(_mm512_reduce_max_ps(max));
        let mut sum = _mm512_setzero_ps();
        for b in 0..blocks {
            let e = exp(_mm512_sub_ps(_mm512_loadu_ps(row.add(16 * b)), max));
            sum = _mm512_mask_add_ps(sum, mask(b), sum, e);
            _mm512_mask_storeu_ps(row.add(16 * b), mask(b), e);
        }
        *sum_out = _mm512_reduce_add_ps(sum);
    }
}

/// e^x to about 1 ulp: `2^n * p(r)` with `n = round(x / ln 2)`, `r` the
/// remainder split in two parts of ln 2, `p` Taylor to degree 7 (error
/// below 1e-8 on |r| <= ln 2 / 2). Inputs below -87.3 give 2^-126, not a
/// subnormal or 0: a softmax term that small changes no sum.
///
/// # Safety
/// AVX-512 F must be present.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn exp(x: __m512) -> __m512 {
    let x = _mm512_max_ps(x, _mm512_set1_ps(-87.3));
    let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm512_mul_ps(
        x,
        _mm512_set1_ps(std::f32::consts::LOG2_E),
    ));
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693_145_75), x);
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.428_606_8e-6), r);
    let mut p = _mm512_set1_ps(1.0 / 5040.0);
    for c in [1.0 / 720.0, 1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0] {
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
    }
    _mm512_scalef_ps(p, n)
}

/// `out[i][:] = sum_j e[i][j] * v[j][:] / sums[i]` for rows `0..t`, `hd`
/// columns; `v` and `out` rows are `width` apart, `e` rows `tp`.
///
/// # Safety
/// AVX-512 F must be present; `p` holds `t * tp` values and `sums` `t`;
/// `v` and `out` point to `t` rows of `width >= hd` f32 (the block's own
/// buffers, so they are valid and `out` is not read concurrently); `hd` is
/// 16, 32, 64 or 128.
#[target_feature(enable = "avx512f")]
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
    let p = p.as_ptr();
    let mut i = 0;
    macro_rules! rows {
        ($db:literal, $max:literal, $($r:literal)*) => {
            while i < t {
                let rows = (t - i).min($max);
                match rows {
                    $($r => pv_tile::<$r, $db>(p, sums, v, width, out, i, t, tp),)*
                    _ => unreachable!(),
                }
                i += rows;
            }
        };
    }
    match hd {
        16 => rows!(1, 12, 1 2 3 4 5 6 7 8 9 10 11 12),
        32 => rows!(2, 12, 1 2 3 4 5 6 7 8 9 10 11 12),
        64 => rows!(4, 6, 1 2 3 4 5 6),
        128 => rows!(8, 3, 1 2 3),
        _ => unreachable!("the pattern accepts head sizes 16, 32, 64 and 128 only"),
    }
}

/// Rows `i..i + R`, all `16 * DB` columns of [`weighted_sum`].
///
/// # Safety
/// As [`weighted_sum`], with `i + R <= t` and `16 * DB == hd`.
#[inline]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn pv_tile<const R: usize, const DB: usize>(
    p: *const f32,
    sums: &[f32],
    v: *const f32,
    width: usize,
    out: *mut f32,
    i: usize,
    t: usize,
    tp: usize,
) {
    let mut acc = [[_mm512_setzero_ps(); DB]; R];
    for j in 0..t {
        let mut b = [_mm512_setzero_ps(); DB];
        for (c, b) in b.iter_mut().enumerate() {
            *b = _mm512_loadu_ps(v.add(j * width + 16 * c));
        }
        for (r, acc) in acc.iter_mut().enumerate() {
            let a = _mm512_set1_ps(*p.add((i + r) * tp + j));
            for c in 0..DB {
                acc[c] = _mm512_fmadd_ps(a, b[c], acc[c]);
            }
        }
    }
    let mut sums_acc = [[_mm512_setzero_ps(); DB]; R];
    sums_acc.copy_from_slice(&acc);
    for (r, row) in sums_acc.iter().enumerate() {
        let sum = _mm512_set1_ps(sums[i + r]);
        for (c, v) in row.iter().enumerate() {
            _mm512_storeu_ps(out.add((i + r) * width + 16 * c), _mm512_div_ps(*v, sum));
        }
    }
}
