//! The AVX-512 VNNI kernel: 12 rows x 32 columns of i32 accumulators
//! (24 zmm), two zmm of weights per k-step, one broadcast register: 28 of
//! the 32 registers, and 24 `vpdpbusd` per 2 weight loads and 12
//! broadcasts, so the multiplier, not the load ports, sets the pace.

use std::arch::x86_64::*;

use super::{Activations, Gelu, Job, ERF_P, ERF_Q, NR};

const MR: usize = 12;

/// # Safety
/// AVX-512 F, BW and VNNI must be present; `job` and `a` come from
/// `Job::new` and `Activations::quantize`.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
pub(super) unsafe fn panel_avx512vnni(a: &Activations, job: &Job, panel: usize) {
    let mut m = 0;
    while m + MR <= a.rows {
        tile::<MR>(a, job, panel, m);
        m += MR;
    }
    match a.rows - m {
        0 => {}
        1 => tile::<1>(a, job, panel, m),
        2 => tile::<2>(a, job, panel, m),
        3 => tile::<3>(a, job, panel, m),
        4 => tile::<4>(a, job, panel, m),
        5 => tile::<5>(a, job, panel, m),
        6 => tile::<6>(a, job, panel, m),
        7 => tile::<7>(a, job, panel, m),
        8 => tile::<8>(a, job, panel, m),
        9 => tile::<9>(a, job, panel, m),
        10 => tile::<10>(a, job, panel, m),
        _ => tile::<11>(a, job, panel, m),
    }
}

/// Rows `m0..m0 + R` of one panel: the k loop, then the epilogue.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn tile<const R: usize>(a: &Activations, job: &Job, panel: usize, m0: usize) {
    let w = job.w;
    let steps = w.steps.as_ptr().add(panel * w.k4) as *const __m512i;
    let rows = a.data.as_ptr().add(m0 * a.stride);
    let mut acc = [[_mm512_setzero_si512(); 2]; R];
    for s in 0..w.k4 {
        let b0 = _mm512_load_si512(steps.add(2 * s));
        let b1 = _mm512_load_si512(steps.add(2 * s + 1));
        for (r, acc) in acc.iter_mut().enumerate() {
            let q = _mm512_set1_epi32((rows.add(r * a.stride + 4 * s) as *const i32).read_unaligned());
            acc[0] = _mm512_dpbusd_epi32(acc[0], q, b0);
            acc[1] = _mm512_dpbusd_epi32(acc[1], q, b1);
        }
    }

    // Kept in registers only if every index into `acc` is a constant after
    // unrolling; the epilogue's loops are not unrolled, so it reads a copy.
    let mut sums = [[_mm512_setzero_si512(); 2]; R];
    sums.copy_from_slice(&acc);
    let col0 = panel * NR;
    let valid = (w.n - col0).min(NR);
    for half in 0..2 {
        let lanes = valid.saturating_sub(16 * half).min(16);
        if lanes == 0 {
            break;
        }
        let c = col0 + 16 * half;
        let mask: __mmask16 = ((1u32 << lanes) - 1) as u16;
        let add = _mm512_loadu_si512(job.col_add.as_ptr().add(c) as *const __m512i);
        let scale = _mm512_loadu_ps(job.scale.as_ptr().add(c));
        // The bias has exactly n values: load only the valid lanes.
        let bias = job.bias.map(|b| _mm512_maskz_loadu_ps(mask, b.as_ptr().add(c)));
        let zb = w.zero_points.as_ref().map(|z| _mm512_loadu_si512(z.as_ptr().add(c) as *const __m512i));
        for (r, sums) in sums.iter().enumerate() {
            let mut v = _mm512_add_epi32(sums[half], add);
            if let Some(zb) = zb {
                v = _mm512_sub_epi32(v, _mm512_mullo_epi32(zb, _mm512_set1_epi32(a.row_terms[m0 + r])));
            }
            // Cast, then Mul, then Add: ONNX's order, no FMA.
            let mut f = _mm512_mul_ps(_mm512_cvtepi32_ps(v), scale);
            if let Some(bias) = bias {
                f = _mm512_add_ps(f, bias);
            }
            if let Some(g) = job.gelu {
                f = gelu(f, g);
            }
            _mm512_mask_storeu_ps(job.out.0.add((m0 + r) * w.n + c), mask, f);
        }
    }
}

/// `super::quantize_into` 16 values at a time, returning the sum of the
/// bytes: the same bytes, since `roundscale` rounds half to even like the
/// scalar trick and saturation happens in the same places.
///
/// # Safety
/// AVX-512 F and BW must be present.
#[target_feature(enable = "avx512f,avx512bw")]
pub(super) unsafe fn quantize_row_avx512(x: &[f32], q: &mut [u8], scale: f32, zero_point: u8) -> i32 {
    debug_assert_eq!(x.len(), q.len());
    let scale_v = _mm512_set1_ps(scale);
    let zp = _mm512_set1_ps(zero_point as f32);
    let (lo, hi) = (_mm512_setzero_ps(), _mm512_set1_ps(255.0));
    let mut sums = _mm512_setzero_si512();
    let n = x.len();
    let mut i = 0;
    while i < n {
        let lanes = (n - i).min(16);
        let mask: __mmask16 = ((1u32 << lanes) - 1) as u16;
        let v = _mm512_div_ps(_mm512_maskz_loadu_ps(mask, x.as_ptr().add(i)), scale_v);
        // NaN (unordered with itself) becomes 0, as in the scalar code.
        let v = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask::<_CMP_ORD_Q>(v, v), v);
        let v = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(v);
        let v = _mm512_max_ps(_mm512_min_ps(_mm512_add_ps(v, zp), hi), lo);
        let v = _mm512_maskz_cvtps_epi32(mask, v);
        sums = _mm512_add_epi32(sums, v);
        _mm_mask_storeu_epi8(q.as_mut_ptr().add(i) as *mut i8, mask, _mm512_cvtepi32_epi8(v));
        i += 16;
    }
    _mm512_reduce_add_epi32(sums)
}

/// `super::min_max` with zmm registers: `min_ps(x, m)` keeps `m` when `x`
/// is NaN, as the scalar comparison does.
///
/// # Safety
/// AVX-512 F must be present.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn min_max_avx512(xs: &[f32]) -> (f32, f32) {
    let mut mins = [_mm512_setzero_ps(); 4];
    let mut maxs = [_mm512_setzero_ps(); 4];
    let mut blocks = xs.chunks_exact(64);
    for block in &mut blocks {
        for j in 0..4 {
            let v = _mm512_loadu_ps(block.as_ptr().add(16 * j));
            mins[j] = _mm512_min_ps(v, mins[j]);
            maxs[j] = _mm512_max_ps(v, maxs[j]);
        }
    }
    let min = _mm512_min_ps(_mm512_min_ps(mins[0], mins[1]), _mm512_min_ps(mins[2], mins[3]));
    let max = _mm512_max_ps(_mm512_max_ps(maxs[0], maxs[1]), _mm512_max_ps(maxs[2], maxs[3]));
    let (mut lo, mut hi) = (_mm512_reduce_min_ps(min), _mm512_reduce_max_ps(max));
    for &x in blocks.remainder() {
        lo = if x < lo { x } else { lo };
        hi = if x > hi { x } else { hi };
    }
    (lo, hi)
}

/// `Gelu::apply` on 16 values: the same operations in the same order.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn gelu(y: __m512, g: Gelu) -> __m512 {
    let x = _mm512_div_ps(y, _mm512_set1_ps(g.div));
    let x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-4.0)), _mm512_set1_ps(4.0));
    let x2 = _mm512_mul_ps(x, x);
    let mut p = _mm512_set1_ps(ERF_P[0]);
    for c in &ERF_P[1..] {
        p = _mm512_fmadd_ps(p, x2, _mm512_set1_ps(*c));
    }
    let mut q = _mm512_set1_ps(ERF_Q[0]);
    for c in &ERF_Q[1..] {
        q = _mm512_fmadd_ps(q, x2, _mm512_set1_ps(*c));
    }
    let erf = _mm512_div_ps(_mm512_mul_ps(x, p), q);
    let m = _mm512_mul_ps(y, _mm512_add_ps(erf, _mm512_set1_ps(g.add)));
    _mm512_mul_ps(m, _mm512_set1_ps(g.mul))
}
