//! The f32 work on either side of an int8 product, done by the same op so
//! that tract does not run it as a chain of element-wise ops (in a ViT-L
//! they cost 13 % of the run, more than the fused attention's
//! non-product work): the layer norm before a layer (ONNX
//! `LayerNormalization` over the last axis) and the scaled skip connection
//! after one (`Add(Mul(y, lambda), residual)`, BEiT's layer scale; plain
//! ViTs have no `lambda`).
//!
//! Both follow the ONNX definitions operation by operation (no fused
//! multiply-add), with sums in 16 fixed lanes, so every CPU computes the
//! same bits.

use super::super::workers::Workers;
use super::widest;

/// `LayerNormalization` with `stash_type` f32: per row, `d = x - mean(x)`,
/// `y = d * (1 / sqrt(mean(d * d) + eps)) * gamma + beta`.
pub(crate) struct LayerNorm {
    pub(crate) gamma: Vec<f32>,
    pub(crate) beta: Option<Vec<f32>>,
    pub(crate) eps: f32,
}

impl LayerNorm {
    /// Normalizes the rows of `x` (each `gamma.len()` long) into `y` on the
    /// workers; returns the range of `y` with 0 included, which
    /// `DynamicQuantizeLinear` quantizes over.
    pub(crate) fn apply(&self, x: &[f32], y: &mut [f32], workers: &Workers) -> (f32, f32) {
        let k = self.gamma.len();
        assert!(k > 0 && x.len().is_multiple_of(k) && y.len() == x.len(), "input is not rows of {k}");
        let rows = |x: &[f32], y: &mut [f32]| {
            x.chunks_exact(k).zip(y.chunks_exact_mut(k)).fold((0f32, 0f32), |range, (x, y)| {
                let (lo, hi) = self.row(x, y);
                (if lo < range.0 { lo } else { range.0 }, if hi > range.1 { hi } else { range.1 })
            })
        };
        let per = workers.share(x.len() / k, x.len()) * k;
        let mut ranges = vec![(0f32, 0f32); x.len().div_ceil(per)];
        workers.each(ranges.iter_mut().zip(x.chunks(per)).zip(y.chunks_mut(per)), |((r, x), y)| *r = rows(x, y));
        widest(&ranges)
    }

    fn row(&self, x: &[f32], y: &mut [f32]) -> (f32, f32) {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512 F.
            return unsafe { row_avx512(x, y, &self.gamma, self.beta.as_deref(), self.eps) };
        }
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2.
            return unsafe { row_avx2(x, y, &self.gamma, self.beta.as_deref(), self.eps) };
        }
        row(x, y, &self.gamma, self.beta.as_deref(), self.eps)
    }
}

/// [`row`] compiled for AVX-512: the same operations, wider registers.
///
/// # Safety
/// AVX-512 F must be present.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn row_avx512(x: &[f32], y: &mut [f32], gamma: &[f32], beta: Option<&[f32]>, eps: f32) -> (f32, f32) {
    row(x, y, gamma, beta, eps)
}

/// [`row`] for AVX2-only CPUs (Zen 1-3, Haswell to Comet Lake): without
/// it they ran the SSE2 build.
///
/// # Safety
/// AVX2 must be present.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn row_avx2(x: &[f32], y: &mut [f32], gamma: &[f32], beta: Option<&[f32]>, eps: f32) -> (f32, f32) {
    row(x, y, gamma, beta, eps)
}

#[inline(always)]
fn row(x: &[f32], y: &mut [f32], gamma: &[f32], beta: Option<&[f32]>, eps: f32) -> (f32, f32) {
    let n = x.len() as f32;
    let mean = lanes_sum(x, |v| v) / n;
    let var = lanes_sum(x, |v| (v - mean) * (v - mean)) / n;
    let inv = 1.0 / (var + eps).sqrt();
    // Whole chunks of 16 with fixed-size arrays, so that LLVM vectorizes
    // (NEON, AVX2 or AVX-512); the remainder goes to lanes 0.. likewise.
    let (mut lo, mut hi) = ([0f32; 16], [0f32; 16]);
    let zeros = [0f32; 16];
    let mut chunk = |x: &[f32], y: &mut [f32], g: &[f32], b: &[f32]| {
        for l in 0..x.len() {
            let v = (x[l] - mean) * inv * g[l] + b[l];
            y[l] = v;
            lo[l] = if v < lo[l] { v } else { lo[l] };
            hi[l] = if v > hi[l] { v } else { hi[l] };
        }
    };
    let whole = x.len() / 16 * 16;
    for c in (0..whole).step_by(16) {
        let b = beta.map_or(&zeros[..], |b| &b[c..c + 16]);
        chunk(&x[c..c + 16], &mut y[c..c + 16], &gamma[c..c + 16], b);
    }
    let rest = x.len() - whole;
    let b = beta.map_or(&zeros[..rest], |b| &b[whole..]);
    chunk(&x[whole..], &mut y[whole..], &gamma[whole..], b);
    let lo = lo.iter().fold(0f32, |a, &b| if b < a { b } else { a });
    let hi = hi.iter().fold(0f32, |a, &b| if b > a { b } else { a });
    (lo, hi)
}

/// `f` summed over `xs` in 16 lanes, then the lanes in order.
#[inline(always)]
fn lanes_sum(xs: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut acc = [0f32; 16];
    let mut chunks = xs.chunks_exact(16);
    for c in &mut chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a += f(v);
        }
    }
    for (a, &v) in acc.iter_mut().zip(chunks.remainder()) {
        *a += f(v);
    }
    acc.iter().sum()
}

/// `out = out * lambda + residual`, ONNX's `Mul` then `Add`; `lambda` holds
/// one value per column or one for all, or is absent (a plain skip).
pub(crate) fn add_residual(out: &mut [f32], lambda: Option<&[f32]>, residual: &[f32], workers: &Workers) {
    assert_eq!(out.len(), residual.len(), "residual and output differ in size");
    let n = lambda.map_or(1, <[f32]>::len).max(1);
    assert!(out.len().is_multiple_of(n), "output is not rows of {n}");
    let rows = |out: &mut [f32], residual: &[f32]| match lambda {
        Some(&[l]) => out.iter_mut().zip(residual).for_each(|(o, &r)| *o = *o * l + r),
        Some(l) => {
            for (o, r) in out.chunks_exact_mut(n).zip(residual.chunks_exact(n)) {
                for ((o, &r), &l) in o.iter_mut().zip(r).zip(l) {
                    *o = *o * l + r;
                }
            }
        }
        None => out.iter_mut().zip(residual).for_each(|(o, &r)| *o += r),
    };
    let per = workers.share(out.len() / n, out.len()) * n;
    workers.each(out.chunks_mut(per).zip(residual.chunks(per)), |(out, residual)| rows(out, residual));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The ONNX definition in f64, to compare within f32 rounding.
    fn reference(x: &[f32], gamma: &[f32], beta: &[f32], eps: f32) -> Vec<f32> {
        x.chunks(gamma.len())
            .flat_map(|row| {
                let n = row.len() as f64;
                let mean = row.iter().map(|&v| v as f64).sum::<f64>() / n;
                let var = row.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
                let inv = 1.0 / (var + eps as f64).sqrt();
                row.iter()
                    .zip(gamma)
                    .zip(beta)
                    .map(move |((&v, &g), &b)| ((v as f64 - mean) * inv * g as f64 + b as f64) as f32)
            })
            .collect()
    }

    #[test]
    fn layer_norm_follows_the_onnx_definition_on_every_path() {
        let mut rng = crate::model::qgemm::tests::Rng(0x9E37_79B9_7F4A_7C15);
        let mut next = || rng.f32();
        // A ViT-L row, and a width that is not a multiple of the lanes.
        for (rows, k) in [(197, 1024), (7, 37)] {
            let x: Vec<f32> = (0..rows * k).map(|i| next() * 4.0 + (i % k) as f32 * 0.01 + 3.0).collect();
            let gamma: Vec<f32> = (0..k).map(|_| next() + 1.0).collect();
            let beta: Vec<f32> = (0..k).map(|_| next()).collect();
            let norm = LayerNorm { gamma: gamma.clone(), beta: Some(beta.clone()), eps: 1e-6 };
            let want = reference(&x, &gamma, &beta, 1e-6);
            let mut one = vec![f32::NAN; x.len()];
            let range = norm.apply(&x, &mut one, &Workers::new(1, ""));
            let worst = one.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(worst < 2e-5, "rows {rows} k {k}: off by {worst}");
            let lo = one.iter().fold(0f32, |a, &b| a.min(b));
            let hi = one.iter().fold(0f32, |a, &b| a.max(b));
            assert_eq!(range, (lo, hi));
            // Threads split rows, never a row's sums: the same bits.
            let mut three = vec![f32::NAN; x.len()];
            assert_eq!(norm.apply(&x, &mut three, &Workers::new(3, "test-w")), range);
            assert!(one.iter().zip(&three).all(|(a, b)| a.to_bits() == b.to_bits()));
            // The portable row gives the bits the AVX-512 and AVX2 ones give.
            let mut portable = vec![f32::NAN; k];
            row(&x[..k], &mut portable, &gamma, Some(&beta), 1e-6);
            assert!(portable.iter().zip(&one).all(|(a, b)| a.to_bits() == b.to_bits()));
            #[cfg(target_arch = "x86_64")]
            if std::arch::is_x86_feature_detected!("avx2") {
                let mut avx2 = vec![f32::NAN; k];
                // SAFETY: the CPU has AVX2.
                unsafe { row_avx2(&x[..k], &mut avx2, &gamma, Some(&beta), 1e-6) };
                assert!(portable.iter().zip(&avx2).all(|(a, b)| a.to_bits() == b.to_bits()));
            }
        }
    }

    #[test]
    fn the_residual_is_scaled_per_column_then_added() {
        let out: Vec<f32> = (0..24).map(|i| i as f32 * 0.5 - 3.0).collect();
        let residual: Vec<f32> = (0..24).map(|i| 100.0 - i as f32).collect();
        let lambda = [0.1f32, -2.0, 3.0];
        for workers in [Workers::new(1, ""), Workers::new(2, "test-w")] {
            let mut got = out.clone();
            add_residual(&mut got, Some(&lambda), &residual, &workers);
            let want: Vec<f32> = (0..24).map(|i| out[i] * lambda[i % 3] + residual[i]).collect();
            assert_eq!(got, want);
            let mut one = out.clone();
            add_residual(&mut one, Some(&[0.5]), &residual, &workers);
            assert_eq!(one, (0..24).map(|i| out[i] * 0.5 + residual[i]).collect::<Vec<_>>());
            let mut plain = out.clone();
            add_residual(&mut plain, None, &residual, &workers);
            assert_eq!(plain, (0..24).map(|i| out[i] + residual[i]).collect::<Vec<_>>());
        }
    }
}
