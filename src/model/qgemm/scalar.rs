//! The portable int8 routines: what every vector kernel must reproduce bit
//! for bit, the fallback where a CPU has no vector form of a routine, and
//! (`reference`) the test oracle, which is ONNX's definition computed
//! naively, without the packing and zero-point algebra the kernels use.

/// Coefficients of the rational approximation of erf on [-4, 4] (Eigen's
/// `generic_fast_erf_float`): `x P(x^2) / Q(x^2)`, a few ulp from the true
/// value; beyond 4 erf is +-1 in f32.
pub(crate) const ERF_P: [f32; 7] = [
    -2.726_142_3e-10,
    2.770_681_4e-8,
    -2.101_024e-6,
    -5.692_506_4e-5,
    -7.349_906_3e-4,
    -2.954_600_1e-3,
    -1.609_603_3e-2,
];
pub(crate) const ERF_Q: [f32; 5] = [-1.456_607_2e-5, -2.133_740_6e-4, -1.682_827e-3, -7.373_329e-3, -1.426_474e-2];

/// erf in f32 with fused multiply-adds, so that it gives the vector
/// kernels' bits exactly.
#[cfg_attr(not(any(test, target_arch = "aarch64")), allow(dead_code))]
pub(crate) fn erf(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let p = ERF_P[1..].iter().fold(ERF_P[0], |p, &c| p.mul_add(x2, c));
    let q = ERF_Q[1..].iter().fold(ERF_Q[0], |q, &c| q.mul_add(x2, c));
    (x * p) / q
}

/// The range extended to include 0, ignoring NaN, as ONNX (and tract) do.
pub(crate) fn min_max(xs: &[f32]) -> (f32, f32) {
    const LANES: usize = 16;
    let mut mins = [0f32; LANES];
    let mut maxs = [0f32; LANES];
    let mut blocks = xs.chunks_exact(LANES);
    for block in &mut blocks {
        for i in 0..LANES {
            // `if x < m` (not f32::min) so NaN keeps the old value and the
            // loop maps to packed min/max instructions.
            mins[i] = if block[i] < mins[i] { block[i] } else { mins[i] };
            maxs[i] = if block[i] > maxs[i] { block[i] } else { maxs[i] };
        }
    }
    let mut min = 0f32;
    let mut max = 0f32;
    for &x in mins.iter().chain(blocks.remainder()) {
        min = if x < min { x } else { min };
    }
    for &x in maxs.iter().chain(blocks.remainder()) {
        max = if x > max { x } else { max };
    }
    (min, max)
}

/// tract-onnx's `scale_and_zero_point`, so both agree exactly.
pub(crate) fn scale_and_zero_point(min: f32, max: f32) -> (f32, u8) {
    let scale = (max - min) / u8::MAX as f32;
    let zero_point = (-min / scale).round_ties_even().clamp(0.0, 255.0);
    (scale, zero_point as u8)
}

/// `saturate(round_half_even(x / scale) + zero_point)`, vectorisable.
pub(crate) fn quantize_into(xs: &[f32], ys: &mut [u8], scale: f32, zero_point: u8) {
    // Adding then subtracting 1.5 * 2^23 rounds any |y| < 2^22 half to even
    // in the default rounding mode, without an SSE4.1 `roundps`; values are
    // clamped first because everything beyond +-1024 saturates anyway.
    const MAGIC: f32 = 12_582_912.0;
    let zp = zero_point as f32;
    for (x, y) in xs.iter().zip(ys.iter_mut()) {
        let q = *x / scale;
        // NaN becomes the zero point, as `NaN as i32 == 0` does in tract.
        let q = if q.is_nan() { 0.0 } else { q.clamp(-1024.0, 1024.0) };
        let q = (q + MAGIC) - MAGIC + zp;
        *y = q.clamp(0.0, 255.0) as u8;
    }
}

/// What ONNX defines for `Add(Mul(Cast(MatMulInteger(q, w, za, zb)),
/// Mul(a_scale, w_scale)), bias)`, computed naively: the test oracle.
#[cfg(test)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn reference(
    q: &[u8],
    za: u8,
    a_scale: f32,
    k: usize,
    w: &[i8],
    zb: &[i8],
    w_scale: &[f32],
    bias: Option<&[f32]>,
    gelu: Option<super::Gelu>,
) -> Vec<f32> {
    let n = w.len() / k;
    let mut out = vec![];
    for row in q.chunks_exact(k) {
        for c in 0..n {
            let zb = zb[if zb.len() == 1 { 0 } else { c }] as i32;
            let acc: i32 = (0..k).map(|i| (row[i] as i32 - za as i32) * (w[i * n + c] as i32 - zb)).sum();
            let s = a_scale * w_scale[if w_scale.len() == 1 { 0 } else { c }];
            let v = acc as f32 * s;
            let v = bias.map_or(v, |b| v + b[c]);
            out.push(gelu.map_or(v, |g| g.apply(v)));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// erf by its Maclaurin series in f64 (converges on [-4, 4] with ~1e-11
    /// error after cancellation).
    fn erf_f64(x: f64) -> f64 {
        let (mut term, mut sum) = (x, x);
        for n in 1..200 {
            term *= -x * x / n as f64;
            sum += term / (2 * n + 1) as f64;
        }
        sum * 2.0 / std::f64::consts::PI.sqrt()
    }

    #[test]
    fn erf_is_within_a_few_ulp_of_the_true_value() {
        let worst = (-5000..=5000)
            .map(|i| i as f32 / 1000.0)
            .map(|x| ((erf(x) as f64) - erf_f64(x.clamp(-4.0, 4.0) as f64)).abs())
            .fold(0f64, f64::max);
        assert!(worst < 4e-7, "max abs error {worst:e}");
        assert_eq!(erf(0.0), 0.0);
        assert_eq!(erf(-9.0), -erf(9.0), "odd");
        assert!(1.0 - erf(9.0) <= f32::EPSILON, "saturates within an ulp of 1: {}", erf(9.0));
    }

    #[test]
    fn quantization_matches_onnx_examples() {
        // From the ONNX operator documentation.
        let (min, max) = min_max(&[0., 2., -3., -2.5, 1.34, 0.5]);
        let (scale, zp) = scale_and_zero_point(min, max);
        let mut ys = [0u8; 6];
        quantize_into(&[0., 2., -3., -2.5, 1.34, 0.5], &mut ys, scale, zp);
        assert_eq!(ys, [153, 255, 0, 26, 221, 179]);
        assert_eq!(zp, 153);
        let mut ys = [0u8; 3];
        quantize_into(&[-127., 128., 0.5], &mut ys, 1.0, 127);
        assert_eq!(ys, [0, 255, 127], "0.5 / 1.0 is a tie and rounds to even");
    }
}
