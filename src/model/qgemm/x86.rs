//! The x86 kernels. AVX-512 VNNI: 12 rows x 32 columns of i32 accumulators
//! (24 zmm), two zmm of weights per k-step, one broadcast register: 28 of
//! the 32 registers, and 24 `vpdpbusd` per 2 weight loads and 12
//! broadcasts, so the multiplier, not the load ports, sets the pace.
//!
//! AMX: 32 rows x 32 columns in four accumulator tiles, two tiles of
//! activations (16 rows x 64 k) and two of weights (16 k-steps x 16
//! columns, read straight from the panel layout with a 128-byte stride):
//! four `tdpbusd`, each 16 x 16 x 64 multiply-adds, per four tile loads.
//! The accumulators go through memory into the AVX-512 epilogue. Written
//! with `asm!` because Rust's AMX intrinsics are unstable.

use std::arch::asm;
use std::arch::x86_64::*;
use std::sync::OnceLock;

use super::scalar::{ERF_P, ERF_Q};
use super::{Activations, Gelu, Job, NR};

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
///
/// # Safety
/// As [`panel_avx512vnni`], with `m0 + R <= a.rows`.
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
    epilogue(&sums, a, job, panel, m0);
}

/// Output rows `m0..m0 + sums.len()` of one panel from their integer sums
/// (a row's 32 columns as two zmm): zero-point terms, then ONNX's Cast,
/// Mul and Add in that order, with no FMA, and the GELU.
///
/// # Safety
/// AVX-512 F and BW must be present; `job` and `a` come from `Job::new`
/// and `Activations::quantize`, `panel < job.w.panels()` and
/// `m0 + sums.len() <= a.rows`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn epilogue(sums: &[[__m512i; 2]], a: &Activations, job: &Job, panel: usize, m0: usize) {
    let w = job.w;
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
/// VL too: the 16-byte masked store is an AVX-512 VL instruction, and
/// without that feature enabled its intrinsic is a call per 16 values.
///
/// `x / scale` is computed as `x * (1 / scale)`, a few times cheaper than
/// the division (which was a fifth of this loop's time), and divided only
/// for the vectors where that could round to another integer: the product
/// is within 1.5 ulp of the quotient, so the two round alike unless one is
/// within a few ulp of a half (tested against the scalar division on
/// ties).
///
/// # Safety
/// AVX-512 F, BW and VL must be present; `q` is as long as `x`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
pub(super) unsafe fn quantize_row_avx512(x: &[f32], q: &mut [u8], scale: f32, zero_point: u8) -> i32 {
    debug_assert_eq!(x.len(), q.len());
    const ROUND: i32 = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
    let scale_v = _mm512_set1_ps(scale);
    let inverse = 1.0 / scale;
    // A subnormal or infinite inverse has no 24 bits to be within 1.5 ulp.
    let divide = !inverse.is_normal();
    let inverse = _mm512_set1_ps(inverse);
    // 8 ulp of a value relative to it, four times the product's error.
    let (half, margin) = (_mm512_set1_ps(0.5), _mm512_set1_ps(1.0 / (1u32 << 20) as f32));
    let zp = _mm512_set1_ps(zero_point as f32);
    let (lo, hi) = (_mm512_setzero_ps(), _mm512_set1_ps(255.0));
    let mut sums = _mm512_setzero_si512();
    let n = x.len();
    let mut i = 0;
    while i < n {
        let lanes = (n - i).min(16);
        let mask: __mmask16 = ((1u32 << lanes) - 1) as u16;
        let xs = _mm512_maskz_loadu_ps(mask, x.as_ptr().add(i));
        let mut v = if divide { _mm512_div_ps(xs, scale_v) } else { _mm512_mul_ps(xs, inverse) };
        let mut r = _mm512_roundscale_ps::<ROUND>(v);
        if !divide {
            let off_half = _mm512_abs_ps(_mm512_sub_ps(_mm512_abs_ps(_mm512_sub_ps(v, r)), half));
            if _mm512_cmp_ps_mask::<_CMP_LE_OQ>(off_half, _mm512_mul_ps(_mm512_abs_ps(v), margin)) != 0 {
                v = _mm512_div_ps(xs, scale_v);
                r = _mm512_roundscale_ps::<ROUND>(v);
            }
        }
        // NaN (unordered with itself) becomes 0, as in the scalar code.
        let v = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask::<_CMP_ORD_Q>(r, r), r);
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
///
/// # Safety
/// AVX-512 F must be present.
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

/// The AVX-VNNI kernel (ymm, 16 registers): each half panel of 16 columns
/// as 6 rows x 2 ymm of accumulators, 2 ymm of weights, one broadcast.
///
/// # Safety
/// AVX2, FMA and AVX-VNNI must be present; `job` and `a` come from
/// `Job::new` and `Activations::quantize`.
#[target_feature(enable = "avx2,fma,avxvnni")]
pub(super) unsafe fn panel_avxvnni(a: &Activations, job: &Job, panel: usize) {
    for half in 0..2 {
        if panel * NR + 16 * half >= job.w.n {
            break;
        }
        let mut m = 0;
        while m + 6 <= a.rows {
            tile_avxvnni::<6>(a, job, panel, half, m);
            m += 6;
        }
        match a.rows - m {
            0 => {}
            1 => tile_avxvnni::<1>(a, job, panel, half, m),
            2 => tile_avxvnni::<2>(a, job, panel, half, m),
            3 => tile_avxvnni::<3>(a, job, panel, half, m),
            4 => tile_avxvnni::<4>(a, job, panel, half, m),
            _ => tile_avxvnni::<5>(a, job, panel, half, m),
        }
    }
}

/// # Safety
/// As [`panel_avxvnni`], with `m0 + R <= a.rows` and `half` 0 or 1.
#[inline]
#[target_feature(enable = "avx2,fma,avxvnni")]
unsafe fn tile_avxvnni<const R: usize>(a: &Activations, job: &Job, panel: usize, half: usize, m0: usize) {
    let w = job.w;
    // Step s of this half: 64 bytes at s * 128 + half * 64, 32-aligned.
    let steps = (w.steps.as_ptr().add(panel * w.k4) as *const u8).add(half * 64);
    let rows = a.data.as_ptr().add(m0 * a.stride);
    let mut acc = [[_mm256_setzero_si256(); 2]; R];
    for s in 0..w.k4 {
        let b0 = _mm256_load_si256(steps.add(s * 128) as *const __m256i);
        let b1 = _mm256_load_si256(steps.add(s * 128 + 32) as *const __m256i);
        for (r, acc) in acc.iter_mut().enumerate() {
            let q = _mm256_set1_epi32((rows.add(r * a.stride + 4 * s) as *const i32).read_unaligned());
            acc[0] = _mm256_dpbusd_avx_epi32(acc[0], q, b0);
            acc[1] = _mm256_dpbusd_avx_epi32(acc[1], q, b1);
        }
    }
    let mut sums = [[_mm256_setzero_si256(); 2]; R];
    sums.copy_from_slice(&acc);
    let col0 = panel * NR + 16 * half;
    for (r, sums) in sums.iter().enumerate() {
        store8(sums[0], a, job, m0 + r, col0);
        store8(sums[1], a, job, m0 + r, col0 + 8);
    }
}

/// The AVX2 kernel: 6 rows x a quarter panel of 8 columns. Weights are
/// sign-extended to 16 bits (2 registers of 4 columns x 4 k), activations
/// arrive widened, and `vpmaddwd` adds each pair of products into i32
/// lanes: exact, unlike `vpmaddubsw`, whose 16-bit pair sums saturate.
/// 12 accumulators, so each widened weight register serves six rows: at 2
/// rows x 16 columns it served two, and the widening, the broadcasts and
/// the loads held the multiplier to a third of its rate (Zen 3).
///
/// # Safety
/// AVX2 and FMA must be present; `job` and `a` come from `Job::new` and
/// `Activations::quantize` (with this kernel, so values are 16-bit).
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn panel_avx2(a: &Activations, job: &Job, panel: usize) {
    let quarters = (job.w.n - panel * NR).div_ceil(8).min(4);
    let mut m = 0;
    while m < a.rows {
        let rows = (a.rows - m).min(6);
        for quarter in 0..quarters {
            match rows {
                6 => tile_avx2::<6>(a, job, panel, quarter, m),
                5 => tile_avx2::<5>(a, job, panel, quarter, m),
                4 => tile_avx2::<4>(a, job, panel, quarter, m),
                3 => tile_avx2::<3>(a, job, panel, quarter, m),
                2 => tile_avx2::<2>(a, job, panel, quarter, m),
                _ => tile_avx2::<1>(a, job, panel, quarter, m),
            }
        }
        m += rows;
    }
}

/// # Safety
/// As [`panel_avx2`], with `m0 + R <= a.rows` and `quarter` below 4.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn tile_avx2<const R: usize>(a: &Activations, job: &Job, panel: usize, quarter: usize, m0: usize) {
    let w = job.w;
    // Step s of this quarter: 32 bytes at s * 128 + quarter * 32, 32-aligned.
    let steps = (w.steps.as_ptr().add(panel * w.k4) as *const u8).add(quarter * 32);
    let rows = a.data.as_ptr().add(m0 * a.stride);
    // Per row, columns 0-3 and 4-7: (k0 + k1, k2 + k3) partial sums per column.
    let mut acc = [[_mm256_setzero_si256(); 2]; R];
    for s in 0..w.k4 {
        let b = [0, 1].map(|j| _mm256_cvtepi8_epi16(_mm_load_si128(steps.add(s * 128 + 16 * j) as *const __m128i)));
        for (r, acc) in acc.iter_mut().enumerate() {
            // 4 activations of 16 bits, repeated for each column.
            let q = _mm256_set1_epi64x((rows.add(r * a.stride + 8 * s) as *const i64).read_unaligned());
            acc[0] = _mm256_add_epi32(acc[0], _mm256_madd_epi16(b[0], q));
            acc[1] = _mm256_add_epi32(acc[1], _mm256_madd_epi16(b[1], q));
        }
    }
    let mut sums = [[_mm256_setzero_si256(); 2]; R];
    sums.copy_from_slice(&acc);
    let col = panel * NR + 8 * quarter;
    for (r, p) in sums.iter().enumerate() {
        // hadd pairs each column's partials into columns 0 1 4 5 | 2 3 6 7;
        // the permute puts them in order.
        let v = _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_hadd_epi32(p[0], p[1]));
        store8(v, a, job, m0 + r, col);
    }
}

/// The AVX2 kernel for weights whose pairs fit in i16
/// (`PackedWeights::pairs_fit_i16`): each half panel of 16 columns as 4
/// rows x 2 ymm of accumulators. `vpmaddubsw` multiplies a row's 4 bytes
/// (broadcast) by 4 k of 8 columns and adds pairs into i16, which cannot
/// saturate on such weights; `vpmaddwd` with ones adds the two pairs of a
/// column into i32. The layout and activations are AVX-VNNI's.
///
/// # Safety
/// AVX2 and FMA must be present; `job` and `a` come from `Job::new` and
/// `Activations::quantize`, and `job.w.pairs_fit_i16` holds.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn panel_avx2pairs(a: &Activations, job: &Job, panel: usize) {
    for half in 0..2 {
        if panel * NR + 16 * half >= job.w.n {
            break;
        }
        let mut m = 0;
        while m + 4 <= a.rows {
            tile_avx2pairs::<4>(a, job, panel, half, m);
            m += 4;
        }
        match a.rows - m {
            0 => {}
            1 => tile_avx2pairs::<1>(a, job, panel, half, m),
            2 => tile_avx2pairs::<2>(a, job, panel, half, m),
            _ => tile_avx2pairs::<3>(a, job, panel, half, m),
        }
    }
}

/// # Safety
/// As [`panel_avx2pairs`], with `m0 + R <= a.rows` and `half` 0 or 1.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn tile_avx2pairs<const R: usize>(a: &Activations, job: &Job, panel: usize, half: usize, m0: usize) {
    let w = job.w;
    let steps = (w.steps.as_ptr().add(panel * w.k4) as *const u8).add(half * 64);
    let rows = a.data.as_ptr().add(m0 * a.stride);
    let ones = _mm256_set1_epi16(1);
    let mut acc = [[_mm256_setzero_si256(); 2]; R];
    for s in 0..w.k4 {
        let b0 = _mm256_load_si256(steps.add(s * 128) as *const __m256i);
        let b1 = _mm256_load_si256(steps.add(s * 128 + 32) as *const __m256i);
        for (r, acc) in acc.iter_mut().enumerate() {
            let q = _mm256_set1_epi32((rows.add(r * a.stride + 4 * s) as *const i32).read_unaligned());
            acc[0] = _mm256_add_epi32(acc[0], _mm256_madd_epi16(_mm256_maddubs_epi16(q, b0), ones));
            acc[1] = _mm256_add_epi32(acc[1], _mm256_madd_epi16(_mm256_maddubs_epi16(q, b1), ones));
        }
    }
    let mut sums = [[_mm256_setzero_si256(); 2]; R];
    sums.copy_from_slice(&acc);
    let col0 = panel * NR + 16 * half;
    for (r, sums) in sums.iter().enumerate() {
        store8(sums[0], a, job, m0 + r, col0);
        store8(sums[1], a, job, m0 + r, col0 + 8);
    }
}

/// The epilogue for 8 columns from `col` of output row `row`: the same
/// operations as the zmm kernel's, in the same order.
///
/// # Safety
/// AVX2 and FMA must be present; `row < a.rows`, `col` is a multiple of 8
/// within the padded panels of `job`.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn store8(sums: __m256i, a: &Activations, job: &Job, row: usize, col: usize) {
    let w = job.w;
    if col >= w.n {
        return;
    }
    let lanes = (w.n - col).min(8) as i32;
    let mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(lanes), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    let mut v = _mm256_add_epi32(sums, _mm256_loadu_si256(job.col_add.as_ptr().add(col) as *const __m256i));
    if let Some(zb) = &w.zero_points {
        let zb = _mm256_loadu_si256(zb.as_ptr().add(col) as *const __m256i);
        v = _mm256_sub_epi32(v, _mm256_mullo_epi32(zb, _mm256_set1_epi32(a.row_terms[row])));
    }
    let mut f = _mm256_mul_ps(_mm256_cvtepi32_ps(v), _mm256_loadu_ps(job.scale.as_ptr().add(col)));
    if let Some(bias) = job.bias {
        f = _mm256_add_ps(f, _mm256_maskload_ps(bias.as_ptr().add(col), mask));
    }
    if let Some(g) = job.gelu {
        f = gelu8(f, g);
    }
    _mm256_maskstore_ps(job.out.0.add(row * w.n + col), mask, f);
}

/// `Gelu::apply` on 8 values.
///
/// # Safety
/// AVX2 and FMA must be present.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn gelu8(y: __m256, g: Gelu) -> __m256 {
    let x = _mm256_div_ps(y, _mm256_set1_ps(g.div));
    let x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-4.0)), _mm256_set1_ps(4.0));
    let x2 = _mm256_mul_ps(x, x);
    let mut p = _mm256_set1_ps(ERF_P[0]);
    for c in &ERF_P[1..] {
        p = _mm256_fmadd_ps(p, x2, _mm256_set1_ps(*c));
    }
    let mut q = _mm256_set1_ps(ERF_Q[0]);
    for c in &ERF_Q[1..] {
        q = _mm256_fmadd_ps(q, x2, _mm256_set1_ps(*c));
    }
    let erf = _mm256_div_ps(_mm256_mul_ps(x, p), q);
    let m = _mm256_mul_ps(y, _mm256_add_ps(erf, _mm256_set1_ps(g.add)));
    _mm256_mul_ps(m, _mm256_set1_ps(g.mul))
}

/// `super::quantize_into` 8 values at a time (the tail through it), the
/// same values; returns their sum. `wide` (the AVX2 kernel's rows) stores
/// each as a little-endian u16, so `q` holds `2 * x.len()` bytes.
///
/// # Safety
/// AVX2 must be present.
#[target_feature(enable = "avx2")]
pub(super) unsafe fn quantize_row_avx2(x: &[f32], q: &mut [u8], scale: f32, zero_point: u8, wide: bool) -> i32 {
    let bytes = if wide { 2 } else { 1 };
    assert_eq!(q.len(), x.len() * bytes, "quantized row is not {bytes} bytes per value");
    let scale_v = _mm256_set1_ps(scale);
    let zp = _mm256_set1_ps(zero_point as f32);
    let (lo, hi) = (_mm256_setzero_ps(), _mm256_set1_ps(255.0));
    let mut sums = _mm256_setzero_si256();
    let mut i = 0;
    while i + 8 <= x.len() {
        let v = _mm256_div_ps(_mm256_loadu_ps(x.as_ptr().add(i)), scale_v);
        let v = _mm256_and_ps(v, _mm256_cmp_ps::<_CMP_ORD_Q>(v, v));
        let v = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(v);
        let v = _mm256_cvtps_epi32(_mm256_max_ps(_mm256_min_ps(_mm256_add_ps(v, zp), hi), lo));
        sums = _mm256_add_epi32(sums, v);
        // 0..=255 in each lane: packed to u16 (lanes 0-3 and 4-7 in
        // quadwords 0 and 2), then to u8.
        let w = _mm256_castsi256_si128(_mm256_permute4x64_epi64::<0b1000>(_mm256_packus_epi32(v, v)));
        if wide {
            _mm_storeu_si128(q.as_mut_ptr().add(2 * i) as *mut __m128i, w);
        } else {
            _mm_storel_epi64(q.as_mut_ptr().add(i) as *mut __m128i, _mm_packus_epi16(w, w));
        }
        i += 8;
    }
    let mut tail = [0u8; 8];
    let n = x.len() - i;
    super::scalar::quantize_into(&x[i..], &mut tail[..n], scale, zero_point);
    for (j, &t) in tail[..n].iter().enumerate() {
        q[(i + j) * bytes] = t;
        if wide {
            q[(i + j) * 2 + 1] = 0;
        }
    }
    let mut lanes = [0i32; 8];
    _mm256_storeu_si256(lanes.as_mut_ptr() as *mut __m256i, sums);
    lanes.iter().sum::<i32>() + tail[..n].iter().map(|&v| v as i32).sum::<i32>()
}

/// `super::min_max` with ymm registers.
///
/// # Safety
/// AVX must be present.
#[target_feature(enable = "avx2")]
pub(super) unsafe fn min_max_avx2(xs: &[f32]) -> (f32, f32) {
    let mut mins = [_mm256_setzero_ps(); 4];
    let mut maxs = [_mm256_setzero_ps(); 4];
    let mut blocks = xs.chunks_exact(32);
    for block in &mut blocks {
        for j in 0..4 {
            let v = _mm256_loadu_ps(block.as_ptr().add(8 * j));
            mins[j] = _mm256_min_ps(v, mins[j]);
            maxs[j] = _mm256_max_ps(v, maxs[j]);
        }
    }
    let min = _mm256_min_ps(_mm256_min_ps(mins[0], mins[1]), _mm256_min_ps(mins[2], mins[3]));
    let max = _mm256_max_ps(_mm256_max_ps(maxs[0], maxs[1]), _mm256_max_ps(maxs[2], maxs[3]));
    let (mut a, mut b) = ([0f32; 8], [0f32; 8]);
    _mm256_storeu_ps(a.as_mut_ptr(), min);
    _mm256_storeu_ps(b.as_mut_ptr(), max);
    let (mut lo, mut hi) = (0f32, 0f32);
    for &x in a.iter().chain(blocks.remainder()) {
        lo = if x < lo { x } else { lo };
    }
    for &x in b.iter().chain(blocks.remainder()) {
        hi = if x > hi { x } else { hi };
    }
    (lo, hi)
}

/// [`Step::interleave`](super::Step) with SSE2's byte and word unpacks.
#[inline]
pub(super) fn interleave(step: &mut super::Step, rows: [&[i8; NR]; 4]) {
    let out = step.0.as_mut_ptr().cast::<__m128i>();
    for half in 0..2 {
        // SAFETY: SSE2 is part of x86_64; the loads read 16 of each row's
        // 32 bytes, the stores write 64 of the step's 128, which is
        // aligned to 64.
        unsafe {
            let [a, b, c, d] = rows.map(|r| _mm_loadu_si128(r.as_ptr().add(16 * half).cast()));
            let (ab, cd) = (
                [_mm_unpacklo_epi8(a, b), _mm_unpackhi_epi8(a, b)],
                [_mm_unpacklo_epi8(c, d), _mm_unpackhi_epi8(c, d)],
            );
            for q in 0..2 {
                _mm_store_si128(out.add(4 * half + 2 * q), _mm_unpacklo_epi16(ab[q], cd[q]));
                _mm_store_si128(out.add(4 * half + 2 * q + 1), _mm_unpackhi_epi16(ab[q], cd[q]));
            }
        }
    }
}

/// Whether AMX's int8 tiles can run here: the CPU has them (CPUID leaf 7:
/// AMX-TILE, AMX-INT8) and Linux lets this process use tile data, which it
/// grants per process on request (`arch_prctl(ARCH_REQ_XCOMP_PERM)`, Linux
/// 5.16 and later). Asked once; a CPU with AMX that is refused it says why
/// in the log, and the AVX-512 kernel runs instead.
pub(super) fn amx_usable() -> bool {
    static USABLE: OnceLock<bool> = OnceLock::new();
    *USABLE.get_or_init(|| {
        let leaf7 = __cpuid_count(7, 0);
        let (tile, int8) = (leaf7.edx & (1 << 24) != 0, leaf7.edx & (1 << 25) != 0);
        if !(tile && int8) {
            return false;
        }
        const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
        const XFEATURE_XTILEDATA: libc::c_long = 18;
        // SAFETY: a syscall with integer arguments; it changes only which
        // register state this process may use.
        let r = unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) };
        if r != 0 {
            let err = std::io::Error::last_os_error();
            log::info!("the CPU has AMX but Linux did not grant its tiles ({err}); int8 runs on AVX-512 instead");
        }
        r == 0
    })
}

/// `ldtilecfg`'s 64-byte operand: palette 1, then per tile its bytes per row
/// (16-bit) at 16 and its rows at 48. Every tile here is 16 rows of 64
/// bytes: accumulators (16 x 16 i32), activations (16 rows x 64 k) and
/// weights (16 k-steps x 16 columns x 4 k).
#[repr(C, align(64))]
struct TileConfig([u8; 64]);

const TILES: TileConfig = {
    let mut cfg = [0u8; 64];
    cfg[0] = 1;
    let mut t = 0;
    while t < 8 {
        cfg[16 + 2 * t] = 64;
        cfg[48 + t] = 16;
        t += 1;
    }
    TileConfig(cfg)
};

/// Bytes from one k-step of a panel to the next (4 k of each column), and
/// from one row of 32 i32 sums to the next.
const STEP_BYTES: usize = NR * 4;
const SUMS_ROW_BYTES: usize = NR * 4;

/// The AMX kernel for one panel: 32 rows at a time (16 for a last block of
/// 16 or fewer), all of k, then the epilogue. Activations are tiled
/// (`Kernel::tiled`): block `b` of 16 rows starts at `b * 16 * stride`, and
/// its k-chunk `c` is the 1 KB at `c * 1024` from there. The tile configuration is
/// loaded here and released at the end, so a thread holds AMX state only
/// while it computes (each pool thread configures its own tiles).
///
/// # Safety
/// [`amx_usable`] and AVX-512 F and BW; `job` and `a` come from `Job::new`
/// and `Activations::quantize` for the AMX kernel (rows padded to 16, tiled, a
/// stride of whole 64-byte chunks), and the weights have
/// `super::STEP_SLACK` steps after the last panel.
#[target_feature(enable = "avx512f,avx512bw")]
pub(super) unsafe fn panel_amx(a: &Activations, job: &Job, panel: usize) {
    let w = job.w;
    debug_assert_eq!(a.stride % 64, 0);
    debug_assert_eq!(a.data.as_ptr() as usize % 64, 0, "tile rows on cache lines");
    debug_assert!(a.data.len() >= a.rows.div_ceil(16) * 16 * a.stride);
    let chunks = a.stride / 64;
    let b = w.steps.as_ptr().add(panel * w.k4) as *const u8;
    let mut sums = [[_mm512_setzero_si512(); 2]; 32];
    asm!("ldtilecfg [{}]", in(reg) TILES.0.as_ptr(), options(nostack, readonly));
    let mut m0 = 0;
    while m0 < a.rows {
        let rows = (a.rows - m0).min(32);
        let a0 = a.data.as_ptr().add(m0 * a.stride);
        let c = sums.as_mut_ptr() as *mut u8;
        if rows > 16 {
            // tmm0/1: rows 0-15, columns 0-15/16-31; tmm2/3: rows 16-31.
            asm!(
                "tilezero tmm0",
                "tilezero tmm1",
                "tilezero tmm2",
                "tilezero tmm3",
                "2:",
                "tileloadd tmm4, [{a0} + {sa}*1]",
                "tileloadd tmm6, [{b} + {sb}*1]",
                "tileloadd tmm7, [{b} + {sb}*1 + 64]",
                "tdpbusd tmm0, tmm4, tmm6",
                "tileloadd tmm5, [{a1} + {sa}*1]",
                "tdpbusd tmm1, tmm4, tmm7",
                "tdpbusd tmm2, tmm5, tmm6",
                "tdpbusd tmm3, tmm5, tmm7",
                "add {a0}, 1024",
                "add {a1}, 1024",
                "add {b}, {bstep}",
                "dec {n}",
                "jnz 2b",
                "tilestored [{c} + {sc}*1], tmm0",
                "tilestored [{c} + {sc}*1 + 64], tmm1",
                "tilestored [{c2} + {sc}*1], tmm2",
                "tilestored [{c2} + {sc}*1 + 64], tmm3",
                a0 = inout(reg) a0 => _,
                a1 = inout(reg) a0.add(16 * a.stride) => _,
                b = inout(reg) b => _,
                n = inout(reg) chunks => _,
                c = in(reg) c,
                c2 = in(reg) c.add(16 * SUMS_ROW_BYTES),
                sa = in(reg) 64usize,
                sb = in(reg) STEP_BYTES,
                sc = in(reg) SUMS_ROW_BYTES,
                bstep = const 16 * STEP_BYTES,
                options(nostack),
            );
        } else {
            asm!(
                "tilezero tmm0",
                "tilezero tmm1",
                "2:",
                "tileloadd tmm4, [{a0} + {sa}*1]",
                "tileloadd tmm6, [{b} + {sb}*1]",
                "tileloadd tmm7, [{b} + {sb}*1 + 64]",
                "tdpbusd tmm0, tmm4, tmm6",
                "tdpbusd tmm1, tmm4, tmm7",
                "add {a0}, 1024",
                "add {b}, {bstep}",
                "dec {n}",
                "jnz 2b",
                "tilestored [{c} + {sc}*1], tmm0",
                "tilestored [{c} + {sc}*1 + 64], tmm1",
                a0 = inout(reg) a0 => _,
                b = inout(reg) b => _,
                n = inout(reg) chunks => _,
                c = in(reg) c,
                sa = in(reg) 64usize,
                sb = in(reg) STEP_BYTES,
                sc = in(reg) SUMS_ROW_BYTES,
                bstep = const 16 * STEP_BYTES,
                options(nostack),
            );
        }
        epilogue(&sums[..rows], a, job, panel, m0);
        m0 += 32;
    }
    asm!("tilerelease", options(nostack, nomem));
}

/// Multiply-adds per second of a bare loop of each int8 instruction this
/// CPU has, on independent accumulators with no loads: the ceiling the
/// kernels are measured against (`benches/int8.rs`).
pub(super) fn peaks() -> Vec<(&'static str, f64)> {
    // The best of 5: a peak, and on a shared machine any run can lose
    // its core for a while.
    let rate = |macs_per_iter: usize, f: &dyn Fn(usize)| {
        f(1000);
        let iters = 1_000_000;
        let best = (0..5)
            .map(|_| {
                let t = std::time::Instant::now();
                f(iters);
                t.elapsed().as_secs_f64()
            })
            .fold(f64::INFINITY, f64::min);
        (iters * macs_per_iter) as f64 / best
    };
    let mut all = vec![];
    if is_x86_feature_detected!("avx512vnni") {
        // SAFETY: the CPU has AVX-512 VNNI.
        all.push(("vpdpbusd zmm", rate(24 * 64, &|n| unsafe { vpdpbusd_loop(n) })));
    }
    if is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2.
        all.push(("vpmaddwd + vpaddd ymm (exact, the AVX2 kernel's)", rate(12 * 16, &|n| unsafe { vpmaddwd_loop(n) })));
        // SAFETY: the CPU has AVX2.
        all.push((
            "vpmaddubsw + vpmaddwd + vpaddd ymm (saturates; onnxruntime's AVX2 u8s8)",
            rate(12 * 32, &|n| unsafe { vpmaddubsw_loop(n) }),
        ));
    }
    if is_x86_feature_detected!("avx512f") && amx_usable() {
        // SAFETY: AMX is usable (`amx_usable`).
        all.push(("tdpbusd", rate(4 * 16 * 16 * 64, &|n| unsafe { tdpbusd_loop(n) })));
        // SAFETY: AMX is usable (`amx_usable`).
        all.push(("tdpbusd + tileloadd from L1", rate(4 * 16 * 16 * 64, &|n| unsafe { tdpbusd_l1_loop(n) })));
    }
    all
}

/// `n` times 24 `vpdpbusd` into independent registers, as the 12 x 32 tile.
/// Assembly: with intrinsics LLVM reloads the operands around each one.
///
/// # Safety
/// AVX-512 VNNI must be present.
#[target_feature(enable = "avx512f,avx512vnni")]
unsafe fn vpdpbusd_loop(n: usize) {
    macro_rules! dp24 {
        ($($r:literal)*) => { concat!($("vpdpbusd zmm", $r, ", zmm30, zmm31\n",)*) };
    }
    asm!(
        "vpternlogd zmm30, zmm30, zmm30, 0xff",
        "vpternlogd zmm31, zmm31, zmm31, 0xff",
        "2:",
        dp24!(0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23),
        "dec {n}",
        "jnz 2b",
        n = inout(reg) n => _,
        out("zmm0") _, out("zmm1") _, out("zmm2") _, out("zmm3") _, out("zmm4") _, out("zmm5") _,
        out("zmm6") _, out("zmm7") _, out("zmm8") _, out("zmm9") _, out("zmm10") _, out("zmm11") _,
        out("zmm12") _, out("zmm13") _, out("zmm14") _, out("zmm15") _, out("zmm16") _, out("zmm17") _,
        out("zmm18") _, out("zmm19") _, out("zmm20") _, out("zmm21") _, out("zmm22") _, out("zmm23") _,
        out("zmm30") _, out("zmm31") _,
        options(nostack, nomem),
    );
}

/// The kernel's loop, its four tile loads per four products reading the
/// same 4 KB (in L1) every time: the ceiling of a layer whose data is never
/// further than L1. Without a spare tile each load waits for the products
/// that read the tile before it, so this runs well below [`tdpbusd_loop`].
///
/// # Safety
/// [`amx_usable`] must be true.
unsafe fn tdpbusd_l1_loop(n: usize) {
    let data = [1u8; 4096];
    asm!(
        "ldtilecfg [{cfg}]",
        "2:",
        "tileloadd tmm4, [{x} + {s}*1]",
        "tileloadd tmm6, [{x} + {s}*1 + 1024]",
        "tileloadd tmm7, [{x} + {s}*1 + 2048]",
        "tdpbusd tmm0, tmm4, tmm6",
        "tileloadd tmm5, [{x} + {s}*1 + 3072]",
        "tdpbusd tmm1, tmm4, tmm7",
        "tdpbusd tmm2, tmm5, tmm6",
        "tdpbusd tmm3, tmm5, tmm7",
        "dec {n}",
        "jnz 2b",
        "tilerelease",
        cfg = in(reg) TILES.0.as_ptr(),
        x = in(reg) data.as_ptr(),
        s = in(reg) 64usize,
        n = inout(reg) n => _,
        options(nostack, readonly),
    );
}

/// `n` times 12 `vpmaddwd` (16 multiply-adds each), each added into its
/// own accumulator: the AVX2 kernel's instruction pair without its loads.
///
/// # Safety
/// AVX2 must be present.
#[target_feature(enable = "avx2")]
unsafe fn vpmaddwd_loop(n: usize) {
    macro_rules! madd12 {
        ($($r:literal)*) => { concat!($("vpmaddwd ymm12, ymm14, ymm15\n", "vpaddd ymm", $r, ", ymm", $r, ", ymm12\n",)*) };
    }
    asm!(
        "vpcmpeqd ymm14, ymm14, ymm14",
        "vpcmpeqd ymm15, ymm15, ymm15",
        "2:",
        madd12!(0 1 2 3 4 5 6 7 8 9 10 11),
        "dec {n}",
        "jnz 2b",
        n = inout(reg) n => _,
        out("ymm0") _, out("ymm1") _, out("ymm2") _, out("ymm3") _, out("ymm4") _, out("ymm5") _,
        out("ymm6") _, out("ymm7") _, out("ymm8") _, out("ymm9") _, out("ymm10") _, out("ymm11") _,
        out("ymm12") _, out("ymm14") _, out("ymm15") _,
        options(nostack, nomem),
    );
}

/// `n` times 12 `vpmaddubsw` (32 byte products, summed in pairs into 16
/// bits, where they saturate) widened by `vpmaddwd` with ones and added:
/// MLAS's AVX2 u8 x s8 sequence, the rate onnxruntime multiplies at here.
///
/// # Safety
/// AVX2 must be present.
#[target_feature(enable = "avx2")]
unsafe fn vpmaddubsw_loop(n: usize) {
    macro_rules! madd12 {
        ($($r:literal)*) => { concat!($(
            "vpmaddubsw ymm12, ymm14, ymm15\n",
            "vpmaddwd ymm12, ymm12, ymm13\n",
            "vpaddd ymm", $r, ", ymm", $r, ", ymm12\n",
        )*) };
    }
    asm!(
        "vpcmpeqd ymm13, ymm13, ymm13",
        "vpcmpeqd ymm14, ymm14, ymm14",
        "vpcmpeqd ymm15, ymm15, ymm15",
        "2:",
        madd12!(0 1 2 3 4 5 6 7 8 9 10 11),
        "dec {n}",
        "jnz 2b",
        n = inout(reg) n => _,
        out("ymm0") _, out("ymm1") _, out("ymm2") _, out("ymm3") _, out("ymm4") _, out("ymm5") _,
        out("ymm6") _, out("ymm7") _, out("ymm8") _, out("ymm9") _, out("ymm10") _, out("ymm11") _,
        out("ymm12") _, out("ymm13") _, out("ymm14") _, out("ymm15") _,
        options(nostack, nomem),
    );
}

/// `n` times four `tdpbusd` into the four accumulator tiles, as the kernel.
///
/// # Safety
/// [`amx_usable`] must be true.
unsafe fn tdpbusd_loop(n: usize) {
    let ones = [1u8; 1024];
    asm!(
        "ldtilecfg [{cfg}]",
        "tileloadd tmm4, [{x} + {s}*1]",
        "tileloadd tmm5, [{x} + {s}*1]",
        "tileloadd tmm6, [{x} + {s}*1]",
        "tileloadd tmm7, [{x} + {s}*1]",
        "2:",
        "tdpbusd tmm0, tmm4, tmm6",
        "tdpbusd tmm1, tmm4, tmm7",
        "tdpbusd tmm2, tmm5, tmm6",
        "tdpbusd tmm3, tmm5, tmm7",
        "dec {n}",
        "jnz 2b",
        "tilerelease",
        cfg = in(reg) TILES.0.as_ptr(),
        x = in(reg) ones.as_ptr(),
        s = in(reg) 64usize,
        n = inout(reg) n => _,
        options(nostack, readonly),
    );
}
