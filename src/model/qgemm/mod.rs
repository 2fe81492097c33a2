//! lookout's int8 matrix product for ONNX's dynamically quantized linear
//! layers: u8 activations quantized per tensor at run time, times i8
//! weights packed once at load, accumulated exactly in i32, and turned into
//! f32 with the layer's scales and bias in the same pass over the output.
//!
//! Why not tract's: tract 0.23 lowers `MatMulInteger` to an i8 x i8 product
//! plus zero-point corrections and a chain of element-wise ops, and that
//! path barely uses a second core (BENCHMARKS.md). The layout here is the
//! one onnxruntime's MLAS uses: weights in panels of [`NR`] columns, 4
//! consecutive k per column, so one x86 `vpdpbusd` multiplies 4 bytes of a
//! row (broadcast) by 4 k of 16 columns, and ARM's `sdot` does the same for
//! 4 columns; AMX's `tdpbusd` reads 16 such steps of 16 columns as one
//! tile. Kernels: AMX, AVX-512 VNNI, AVX-VNNI and AVX2 (`x86.rs`), `sdot`
//! and plain NEON (`aarch64.rs`), chosen once per model by
//! [`Kernel::choose`]; `scalar.rs` holds the portable routines they must
//! equal. Each kernel has its own test against the oracle.
//!
//! The integer part is exact. The epilogue is ONNX's `Cast`, `Mul` and `Add`
//! in that order with no fused multiply-add, so a layer's output equals what
//! the ONNX graph defines, bit for bit ([`scalar::reference`] is the test
//! oracle).

#[cfg(target_arch = "aarch64")]
mod aarch64;
mod rowwise;
mod scalar;
#[cfg(target_arch = "x86_64")]
mod x86;

use super::lines::Lines;
use super::workers::{Disjoint, Workers};

pub(crate) use rowwise::{add_residual, LayerNorm};
pub(crate) use scalar::{min_max, quantize_into, scale_and_zero_point};

/// Columns per weight panel.
pub(crate) const NR: usize = 32;

/// Zero steps after the last panel: AMX reads 16 steps at a time, past a
/// panel's end (where the activations it multiplies are zero padding).
const STEP_SLACK: usize = 15;

/// One k-step of a panel: 4 consecutive k of each of the panel's 32
/// columns, column after column (`[col][k]`), aligned for vector loads.
#[repr(C, align(64))]
#[derive(Clone, Copy)]
pub(crate) struct Step(pub(crate) [i8; NR * 4]);

impl Step {
    /// Writes four rows' values for a panel's columns: with SSE2's or
    /// NEON's byte shuffles, a byte at a time on other CPUs. Left to the
    /// compiler, the byte loop was vectorized in one build and not in the
    /// next, after a change elsewhere in the crate: packing ViT-L took 132
    /// ms of CPU in one and 261 in the other (118 this way; Zen 4).
    #[inline]
    fn interleave(&mut self, rows: [&[i8; NR]; 4]) {
        #[cfg(target_arch = "x86_64")]
        x86::interleave(self, rows);
        #[cfg(target_arch = "aarch64")]
        aarch64::interleave(self, rows);
        #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
        self.interleave_bytes(rows);
    }

    #[cfg_attr(any(target_arch = "x86_64", target_arch = "aarch64"), allow(dead_code))]
    fn interleave_bytes(&mut self, [c0, c1, c2, c3]: [&[i8; NR]; 4]) {
        for (c, at) in self.0.chunks_exact_mut(4).enumerate() {
            at.copy_from_slice(&[c0[c], c1[c], c2[c], c3[c]]);
        }
    }
}

/// A `[K, N]` i8 weight matrix in panel layout, with what the epilogue needs
/// from it.
pub(crate) struct PackedWeights {
    pub(crate) k: usize,
    pub(crate) n: usize,
    /// K rounded up to a multiple of 4, divided by 4.
    k4: usize,
    /// `panels * k4` steps, panel after panel, then [`STEP_SLACK`]; padding
    /// is zero.
    steps: Vec<Step>,
    /// Sum over k of each column, padded with zeros to the panels' width.
    col_sums: Vec<i32>,
    /// Per-column zero points, padded; `None` when all are zero (symmetric
    /// weights, onnxruntime's default), which saves a term per output.
    zero_points: Option<Vec<i32>>,
    /// No weight is -128 (onnxruntime's symmetric int8 range is -127..127),
    /// so two products with any activation byte sum within i16: the plain
    /// NEON kernel then adds two k-steps before widening.
    #[cfg_attr(not(target_arch = "aarch64"), allow(dead_code))]
    no_i8_min: bool,
    /// Every pair of weights a column multiplies with k = 2i and 2i + 1
    /// keeps any two activation bytes' products within i16: same-signed
    /// pairs add up to 128 or less, as onnxruntime's `reduce_range` (7-bit)
    /// weights always do. The AVX2 kernel then multiplies bytes
    /// ([`Kernel::Avx2Pairs`]) and stays exact.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pub(crate) pairs_fit_i16: bool,
}

impl PackedWeights {
    /// Packs row-major `w` (`k * n` values); `zero_points` holds one value
    /// for the whole matrix or one per column.
    pub(crate) fn pack<'w>(k: usize, n: usize, w: &'w [i8], zero_points: &[i8]) -> PackedWeights {
        assert_eq!(w.len(), k * n, "weights are not [k, n]");
        assert!(zero_points.len() == 1 || zero_points.len() == n, "zero points are neither one nor one per column");
        let panels = n.div_ceil(NR);
        let k4 = k.div_ceil(4);
        // Four rows at a time, each step built whole and written at once.
        // A byte at a time, row after row, every row revisiting the steps
        // of all panels, packing was most of a ViT-L's load (0.33-0.54 s
        // of 0.47-0.72 s on the Zen 4 of BENCHMARKS.md; 0.20-0.25 s this
        // way, mostly the first touch of the packed weights' pages).
        let mut steps = vec![Step([0; NR * 4]); panels * k4 + STEP_SLACK];
        let full = n / NR;
        for (s, rows) in w.chunks(4 * n).enumerate() {
            let row = |lane: usize| rows.get(lane * n..(lane + 1) * n);
            if let [Some(r0), Some(r1), Some(r2), Some(r3)] = [0, 1, 2, 3].map(row) {
                for p in 0..full {
                    let cols = |r: &'w [i8]| -> &'w [i8; NR] { r[p * NR..][..NR].try_into().expect("NR values") };
                    steps[p * k4 + s].interleave([cols(r0), cols(r1), cols(r2), cols(r3)]);
                }
            }
            // The last panel when n is not whole panels, and the last rows
            // when k is not a multiple of 4.
            let done = if rows.len() == 4 * n { full } else { 0 };
            for (lane, row) in rows.chunks_exact(n).enumerate() {
                for (c, &v) in row.iter().enumerate().skip(done * NR) {
                    steps[c / NR * k4 + s].0[c % NR * 4 + lane] = v;
                }
            }
        }
        let mut col_sums = vec![0i32; panels * NR];
        for row in w.chunks_exact(n) {
            for (sum, &v) in col_sums.iter_mut().zip(row) {
                *sum += v as i32;
            }
        }
        let zp = |c: usize| if c >= n { 0 } else { zero_points[if zero_points.len() == 1 { 0 } else { c }] as i32 };
        let zero_points = zero_points.iter().any(|&z| z != 0).then(|| (0..panels * NR).map(zp).collect());
        let pairs_fit_i16 = cfg!(target_arch = "x86_64") && pairs_fit_i16(w, n);
        PackedWeights { k, n, k4, steps, col_sums, zero_points, no_i8_min: !w.contains(&i8::MIN), pairs_fit_i16 }
    }

    fn panels(&self) -> usize {
        self.n.div_ceil(NR)
    }

    /// Bytes held, for the load report.
    pub(crate) fn bytes(&self) -> usize {
        self.steps.len() * std::mem::size_of::<Step>() + (self.col_sums.len() + self.n) * 4
    }
}

/// Whether `u8 * w0 + u8 * w1` fits in i16 for every pair of rows 2i and
/// 2i + 1 of row-major `w` (`n` columns) and any two bytes: `vpmaddubsw`'s
/// pair sums, which saturate beyond. Stops after the first pair of rows
/// where one does not fit (in full-range weights, one of the first).
fn pairs_fit_i16(w: &[i8], n: usize) -> bool {
    // A lone last row (k odd) pairs with zeros, which always fit. Within a
    // pair of rows no early exit, so that the loop vectorizes: an
    // iterator chain with one took 0.3 s of a base model's load (Zen 3).
    w.chunks_exact(2 * n).all(|rows| {
        let (r0, r1) = rows.split_at(n);
        r0.iter().zip(r1).fold(true, |ok, (&a, &b)| {
            let (a, b) = (a as i16, b as i16);
            ok & ((a ^ b) < 0 || a == 0 || b == 0 || a.abs() + b.abs() <= 128)
        })
    })
}

/// A kernel: the instruction set one panel is computed with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kernel {
    /// AMX `tdpbusd` on 16 x 64-byte tiles (Xeon Sapphire Rapids and
    /// later), with the AVX-512 quantizer and epilogue.
    #[cfg(target_arch = "x86_64")]
    Amx,
    /// AVX-512 VNNI `vpdpbusd` on zmm (Ice Lake and later, Zen 4 and later).
    #[cfg(target_arch = "x86_64")]
    Avx512Vnni,
    /// AVX-VNNI `vpdpbusd` on ymm (Alder Lake and later, including the
    /// N100-class mini PCs, which have no AVX-512).
    #[cfg(target_arch = "x86_64")]
    AvxVnni,
    /// AVX2 without VNNI (Haswell to Comet Lake, Zen 1-3): activations
    /// widened to 16 bits, `vpmaddwd`, exact (no saturating `vpmaddubsw`).
    #[cfg(target_arch = "x86_64")]
    Avx2,
    /// AVX2 on weights whose pairs fit in i16 ([`PackedWeights::pairs_fit_i16`]):
    /// bytes multiplied by `vpmaddubsw`, their pair sums widened by `vpmaddwd`,
    /// 3 instructions per 32 multiply-adds where [`Kernel::Avx2`] takes 4.
    /// Chosen per layer group, never for weights that do not fit.
    #[cfg(target_arch = "x86_64")]
    Avx2Pairs,
    /// ARMv8.2 `sdot` (Cortex-A55/A76 and later: Pi 5, Jetson Orin).
    #[cfg(target_arch = "aarch64")]
    Dot,
    /// Plain NEON widening multiplies (Cortex-A72: Pi 4; A57: Jetson Nano).
    #[cfg(target_arch = "aarch64")]
    Neon,
}

impl Kernel {
    /// Every kernel this CPU runs, best first.
    pub(crate) fn supported() -> Vec<Kernel> {
        #[allow(unused_mut)]
        let mut all = vec![];
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            let avx512 = has!("avx512f") && has!("avx512bw") && has!("avx512vl");
            if avx512 && x86::amx_usable() {
                all.push(Kernel::Amx);
            }
            if avx512 && has!("avx512vnni") {
                all.push(Kernel::Avx512Vnni);
            }
            if has!("avxvnni") && has!("avx2") && has!("fma") {
                all.push(Kernel::AvxVnni);
            }
            if has!("avx2") && has!("fma") {
                // Avx2Pairs after Avx2, so that it is never the default: a
                // group of layers gets it where its weights allow (`for_weights`).
                all.extend([Kernel::Avx2, Kernel::Avx2Pairs]);
            }
        }
        #[cfg(target_arch = "aarch64")]
        {
            if std::arch::is_aarch64_feature_detected!("dotprod") {
                all.push(Kernel::Dot);
            }
            all.push(Kernel::Neon);
        }
        all
    }

    /// The kernel a model runs with: the first this CPU runs whose name
    /// contains `want` (`lookout bench --int8-kernel`, to compare kernels on
    /// one machine), else the best. `None` where lookout has none (32-bit
    /// ARM, x86 without AVX2): tract's own int8 path runs instead.
    pub(crate) fn choose(want: Option<&str>) -> Result<Option<Kernel>, String> {
        let supported = Kernel::supported();
        let Some(want) = want else { return Ok(supported.first().copied()) };
        match supported.iter().find(|k| k.name().contains(want)) {
            Some(&k) => Ok(Some(k)),
            None => {
                let names: Vec<&str> = supported.iter().map(|k| k.name()).collect();
                Err(format!("no int8 kernel of this CPU's {names:?} is named like {want:?}"))
            }
        }
    }

    /// The kernel a group of layers runs with: [`Kernel::Avx2Pairs`] in
    /// place of [`Kernel::Avx2`] where every layer's weight pairs fit in
    /// i16, and the other way round where one's do not.
    pub(crate) fn for_weights(self, fit: bool) -> Kernel {
        match (self, fit) {
            #[cfg(target_arch = "x86_64")]
            (Kernel::Avx2, true) => Kernel::Avx2Pairs,
            #[cfg(target_arch = "x86_64")]
            (Kernel::Avx2Pairs, false) => Kernel::Avx2,
            (k, _) => k,
        }
    }

    /// As the load log and `lookout bench` print it.
    pub(crate) fn name(self) -> &'static str {
        match self {
            #[cfg(target_arch = "x86_64")]
            Kernel::Amx => "lookout_amx_u8i8_32x32",
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512Vnni => "lookout_avx512vnni_u8i8_12x32",
            #[cfg(target_arch = "x86_64")]
            Kernel::AvxVnni => "lookout_avxvnni_u8i8_6x16",
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => "lookout_avx2_u8i8_6x8",
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2Pairs => "lookout_avx2pairs_u8i8_4x16",
            #[cfg(target_arch = "aarch64")]
            Kernel::Dot => "lookout_arm64dot_i8i8_6x16",
            #[cfg(target_arch = "aarch64")]
            Kernel::Neon => "lookout_arm64neon_i8i8_2x16",
        }
    }

    /// What the kernel adds to every activation byte: `sdot` multiplies
    /// signed bytes, so it gets `q - 128` (`q ^ 0x80`) and the epilogue adds
    /// `128 * col_sum` back.
    fn activation_offset(self) -> i32 {
        match self {
            #[cfg(target_arch = "x86_64")]
            Kernel::Amx | Kernel::Avx512Vnni | Kernel::AvxVnni | Kernel::Avx2 | Kernel::Avx2Pairs => 0,
            #[cfg(target_arch = "aarch64")]
            Kernel::Dot | Kernel::Neon => 128,
        }
    }

    /// Bytes per activation value in the kernel's rows: the AVX2 kernel
    /// multiplies 16-bit values, so it gets them widened already.
    fn activation_bytes(self) -> usize {
        match self {
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => 2,
            _ => 1,
        }
    }

    /// Bytes of one activation row (with padding), and rows allocated: AMX
    /// loads 64 bytes of k and 16 rows at once, so rows are padded to both
    /// with zeros (which add nothing to the sums). The other kernels read
    /// a tile's rows side by side: rows a multiple of 2 KiB apart (an MLP
    /// out layer's k = 4096) fall into the same few L1 sets and evict each
    /// other, so such rows get one cache line more (on the Zen 4 of
    /// BENCHMARKS.md, that layer went from 262 to 376-409 GMAC/s on two
    /// threads).
    fn activation_layout(self, rows: usize, k: usize) -> (usize, usize) {
        match self {
            #[cfg(target_arch = "x86_64")]
            Kernel::Amx => (k.div_ceil(64) * 64, rows.div_ceil(16) * 16),
            _ => {
                let stride = k.div_ceil(4) * 4 * self.activation_bytes();
                (if stride.is_multiple_of(2048) { stride + 64 } else { stride }, rows)
            }
        }
    }

    /// Whether the kernel wants its activations as AMX tiles: each block of
    /// 16 rows stored as its 64-byte column chunks one after another (16 x
    /// 64 bytes each), so a tile load reads 1 KB in a row. Rows one after
    /// another, as the other kernels read them, made the AMX kernel 10-45 %
    /// slower per layer (`cargo bench --bench int8`, Xeon of BENCHMARKS.md).
    fn tiled(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        return self == Kernel::Amx;
        #[cfg(not(target_arch = "x86_64"))]
        false
    }

    /// `quantize_into` for one row, returning the sum of its bytes.
    fn quantize_row(self, x: &[f32], q: &mut [u8], scale: f32, zero_point: u8) -> i32 {
        match self {
            // SAFETY: supported() saw AVX-512 F, BW and VL, or AVX2.
            #[cfg(target_arch = "x86_64")]
            Kernel::Amx | Kernel::Avx512Vnni => unsafe { x86::quantize_row_avx512(x, q, scale, zero_point) },
            #[cfg(target_arch = "x86_64")]
            Kernel::AvxVnni | Kernel::Avx2Pairs => unsafe { x86::quantize_row_avx2(x, q, scale, zero_point, false) },
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => unsafe { x86::quantize_row_avx2(x, q, scale, zero_point, true) },
            // SAFETY: NEON is part of every aarch64 CPU.
            #[cfg(target_arch = "aarch64")]
            _ => unsafe { aarch64::quantize_row(x, q, scale, zero_point) },
            #[allow(unreachable_patterns)]
            _ => {
                quantize_into(x, q, scale, zero_point);
                q.iter().map(|&v| v as i32).sum()
            }
        }
    }

    fn min_max(self, xs: &[f32]) -> (f32, f32) {
        match self {
            // SAFETY: supported() saw AVX-512 F, or AVX2.
            #[cfg(target_arch = "x86_64")]
            Kernel::Amx | Kernel::Avx512Vnni => unsafe { x86::min_max_avx512(xs) },
            #[cfg(target_arch = "x86_64")]
            Kernel::AvxVnni | Kernel::Avx2 | Kernel::Avx2Pairs => unsafe { x86::min_max_avx2(xs) },
            #[cfg(target_arch = "aarch64")]
            Kernel::Dot | Kernel::Neon => aarch64::min_max(xs),
            #[allow(unreachable_patterns)]
            _ => min_max(xs),
        }
    }

    /// # Safety
    /// The kernel must be one of [`Kernel::supported`]; `a` was quantized
    /// for it and `job` built from `a`; `panel < job.w.panels()`.
    unsafe fn panel(self, a: &Activations, job: &Job, panel: usize) {
        match self {
            #[cfg(target_arch = "x86_64")]
            Kernel::Amx => x86::panel_amx(a, job, panel),
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512Vnni => x86::panel_avx512vnni(a, job, panel),
            #[cfg(target_arch = "x86_64")]
            Kernel::AvxVnni => x86::panel_avxvnni(a, job, panel),
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => x86::panel_avx2(a, job, panel),
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2Pairs => x86::panel_avx2pairs(a, job, panel),
            #[cfg(target_arch = "aarch64")]
            Kernel::Dot => aarch64::panel_dot(a, job, panel),
            #[cfg(target_arch = "aarch64")]
            Kernel::Neon => aarch64::panel_neon(a, job, panel),
        }
    }
}

/// Activations quantized as ONNX's `DynamicQuantizeLinear` does, in rows
/// padded for the kernel, with the per-row terms of the zero-point algebra.
#[derive(Default)]
pub(crate) struct Activations {
    /// `rows * stride` bytes or more (`q ^ 0x80` for signed kernels, `q` as
    /// a little-endian u16 for the AVX2 kernel), row after row or in AMX
    /// tiles ([`Kernel::tiled`]). Only AMX reads padding against nonzero
    /// weights (the next panel's), so only its tiles' padding is kept 0;
    /// the sums of padding rows are never read.
    data: Lines<u8>,
    stride: usize,
    rows: usize,
    k: usize,
    pub(crate) scale: f32,
    pub(crate) zero_point: u8,
    /// Per row: `sum_k q - k * zero_point`, the factor of the weights' zero
    /// points (used only when those are not all zero).
    row_terms: Vec<i32>,
    offset: i32,
}

impl Activations {
    /// Quantizes `x` (`rows` rows of `k`) into this buffer, reusing its
    /// allocation, for `kernel`.
    pub(crate) fn quantize(&mut self, x: &[f32], k: usize, kernel: Kernel, workers: &Workers) {
        let range = parallel_min_max(x, workers, |xs| kernel.min_max(xs));
        self.quantize_in_range(x, range, k, kernel, workers)
    }

    /// [`Activations::quantize`] when the range of `x` (with 0 included)
    /// is known already: [`LayerNorm::apply`] finds it as it writes `x`.
    pub(crate) fn quantize_in_range(
        &mut self,
        x: &[f32],
        (min, max): (f32, f32),
        k: usize,
        kernel: Kernel,
        workers: &Workers,
    ) {
        assert!(k > 0 && x.len().is_multiple_of(k), "input is not rows of {k}");
        let rows = x.len() / k;
        let bytes = kernel.activation_bytes();
        let (stride, padded_rows) = kernel.activation_layout(rows, k);
        let (scale, zero_point) = scale_and_zero_point(min, max);
        // Not zeroed first: that cost the calling thread 2-3 ms per ViT-L
        // inference while the others waited. Row padding multiplies zero
        // weights, except in AMX tiles, which are written whole below.
        self.data.resize(padded_rows * stride);
        self.row_terms.resize(rows, 0);
        debug_assert!(padded_rows == rows || kernel.tiled(), "only tiles pad rows");
        let flip = if kernel.activation_offset() == 128 { 0x80 } else { 0 };
        let zp_term = k as i32 * zero_point as i32;
        let row_major = |x: &[f32], data: &mut [u8], terms: &mut [i32]| {
            for ((x, q), term) in x.chunks_exact(k).zip(data.chunks_exact_mut(stride)).zip(terms) {
                *term = kernel.quantize_row(x, &mut q[..k * bytes], scale, zero_point) - zp_term;
                if flip != 0 {
                    q[..k].iter_mut().for_each(|v| *v ^= flip);
                }
            }
        };
        let tiled = kernel.tiled();
        let quantize_rows = |x: &[f32], data: &mut [u8], terms: &mut [i32]| {
            if !tiled {
                return row_major(x, data, terms);
            }
            let mut block = vec![0u8; 16 * stride];
            for ((x, data), terms) in x.chunks(16 * k).zip(data.chunks_exact_mut(16 * stride)).zip(terms.chunks_mut(16))
            {
                row_major(x, &mut block, terms);
                for (r, row) in block.chunks_exact(stride).enumerate() {
                    for (c, bytes) in row.chunks_exact(64).enumerate() {
                        data[c * 1024 + r * 64..][..64].copy_from_slice(bytes);
                    }
                }
            }
        };
        // Tiled, a thread's share is whole blocks of 16 rows.
        let unit = if tiled { 16 } else { 1 };
        let per = workers.share(rows, x.len()).next_multiple_of(unit);
        workers.each(
            x.chunks(per * k).zip(self.data.chunks_mut(per * stride)).zip(self.row_terms.chunks_mut(per)),
            |((x, data), terms)| quantize_rows(x, data, terms),
        );
        self.stride = stride;
        self.rows = rows;
        self.k = k;
        self.scale = scale;
        self.zero_point = zero_point;
        self.offset = kernel.activation_offset();
    }
}

/// One product to compute from shared activations: a weight matrix, the
/// per-column epilogue for this call, and where the `[rows, n]` result goes.
pub(crate) struct Job<'a> {
    w: &'a PackedWeights,
    /// Per column: `(offset - a_zero_point) * col_sum`.
    col_add: Vec<i32>,
    /// Per column: `a_scale * w_scale`, as ONNX's `Mul` of the two scales.
    scale: Vec<f32>,
    bias: Option<&'a [f32]>,
    gelu: Option<Gelu>,
    out: Disjoint,
}

/// torch's exact GELU as its ONNX export writes it, applied after the bias:
/// `((y * (erf(y / div) + add)) * mul)`, with the graph's own constants.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Gelu {
    pub(crate) div: f32,
    pub(crate) add: f32,
    pub(crate) mul: f32,
}

impl Gelu {
    /// The scalar form: ARM's epilogue and the tests (x86 has its own).
    #[cfg_attr(not(any(test, target_arch = "aarch64")), allow(dead_code))]
    pub(crate) fn apply(self, y: f32) -> f32 {
        (y * (scalar::erf(y / self.div) + self.add)) * self.mul
    }
}

impl<'a> Job<'a> {
    /// `w_scale` and `bias` hold one value per column (`w_scale` may hold
    /// one for all); `out` receives `a.rows() * w.n` values.
    pub(crate) fn new(
        a: &Activations,
        w: &'a PackedWeights,
        w_scale: &[f32],
        bias: Option<&'a [f32]>,
        gelu: Option<Gelu>,
        out: &'a mut [f32],
    ) -> Job<'a> {
        assert_eq!(a.k, w.k, "activations and weights disagree on k");
        assert_eq!(out.len(), a.rows * w.n, "output is not [rows, n]");
        assert!(w_scale.len() == 1 || w_scale.len() == w.n);
        assert!(bias.is_none_or(|b| b.len() == w.n));
        let width = w.panels() * NR;
        let za = a.offset - a.zero_point as i32;
        let col_add = w.col_sums.iter().map(|&s| za * s).collect();
        let scale = (0..width)
            .map(|c| if c < w.n { a.scale * w_scale[if w_scale.len() == 1 { 0 } else { c }] } else { 0.0 })
            .collect();
        // Every panel writes its own columns of the output.
        Job { w, col_add, scale, bias, gelu, out: Disjoint(out.as_mut_ptr()) }
    }
}

/// Runs every job's panels on the workers. A panel is the unit of work: it
/// reads all activation rows and one panel of weights, which stays in the
/// core's cache while the rows stream past it. Each thread gets a run of
/// adjacent panels: handing them out one at a time made two threads 25-40 %
/// slower on the Xeon (`cargo bench --bench int8`).
pub(crate) fn run(kernel: Kernel, a: &Activations, jobs: &[Job], workers: &Workers) {
    // Its pair sums would saturate: results wrong, silently.
    let needs_fit = kernel.for_weights(false) != kernel;
    assert!(!needs_fit || jobs.iter().all(|j| j.w.pairs_fit_i16), "{kernel:?} on weights whose pairs overflow i16");
    let work: Vec<(usize, usize)> =
        jobs.iter().enumerate().flat_map(|(j, job)| (0..job.w.panels()).map(move |p| (j, p))).collect();
    let flops = a.rows * a.k * jobs.iter().map(|j| j.w.n).sum::<usize>();
    workers.for_ranges(work.len(), flops / 64, &|range| {
        for &(j, p) in &work[range] {
            // SAFETY: `kernel` came from `Kernel::choose` on this CPU, `a`
            // was quantized for it, and the job's buffers were sized by
            // `Job::new`.
            unsafe { kernel.panel(a, &jobs[j], p) }
        }
    });
}

/// The names of the int8 kernels this CPU runs, best first.
pub fn int8_kernels() -> Vec<&'static str> {
    Kernel::supported().into_iter().map(Kernel::name).collect()
}

/// For `benches/int8.rs`: GMAC/s of a bare one-thread loop of each int8
/// instruction this CPU's kernels use, the ceiling a layer compares with.
#[doc(hidden)]
pub fn int8_peaks() -> Vec<(&'static str, f64)> {
    #[cfg(target_arch = "x86_64")]
    return x86::peaks().into_iter().map(|(name, rate)| (name, rate / 1e9)).collect();
    #[cfg(not(target_arch = "x86_64"))]
    vec![]
}

/// For `benches/int8.rs`: times one `[rows, k] x [k, n]` layer (quantize,
/// product, epilogue with a bias) with `kernel` (a name from
/// [`int8_kernels`]) on `threads` threads; returns the median seconds per
/// call over `runs`.
#[doc(hidden)]
pub fn bench_layer(kernel: &str, rows: usize, k: usize, n: usize, threads: usize, runs: usize) -> f64 {
    let kernel = Kernel::choose(Some(kernel)).ok().flatten().expect("a kernel from int8_kernels()");
    let workers = Workers::new(threads, "lookout-bench");
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let x: Vec<f32> = (0..rows * k).map(|_| (next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0).collect();
    // 7-bit weights for the kernel that needs its pairs to fit in i16.
    let bits = if kernel.for_weights(false) != kernel { 7 } else { 8 };
    let w: Vec<i8> = (0..k * n).map(|_| ((next() >> 56) as u8 as i8) >> (8 - bits)).collect();
    let packed = PackedWeights::pack(k, n, &w, &[0]);
    let (scale, bias) = (vec![0.001f32; n], vec![0.5f32; n]);
    let mut out = vec![0f32; rows * n];
    let mut a = Activations::default();
    let mut once = || {
        a.quantize(&x, k, kernel, &workers);
        let job = Job::new(&a, &packed, &scale, Some(&bias), None, &mut out);
        run(kernel, &a, &[job], &workers);
    };
    once();
    let mut times: Vec<f64> = (0..runs)
        .map(|_| {
            let t = std::time::Instant::now();
            once();
            t.elapsed().as_secs_f64()
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

/// `min_max` over the workers, with `min_max` the per-thread routine.
pub(crate) fn parallel_min_max(
    xs: &[f32],
    workers: &Workers,
    min_max: impl Fn(&[f32]) -> (f32, f32) + Sync,
) -> (f32, f32) {
    let chunk = workers.share(xs.len(), xs.len());
    let mut ranges = vec![(0f32, 0f32); xs.len().div_ceil(chunk)];
    workers.each(ranges.iter_mut().zip(xs.chunks(chunk)), |(r, xs)| *r = min_max(xs));
    widest(&ranges)
}

/// The union of per-part ranges, each with 0 included.
pub(crate) fn widest(ranges: &[(f32, f32)]) -> (f32, f32) {
    ranges.iter().fold((0f32, 0f32), |(a, b), &(c, d)| (if c < a { c } else { a }, if d > b { d } else { b }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic pseudo-random values (xorshift), no dependency.
    pub(crate) struct Rng(pub(crate) u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        pub(crate) fn f32(&mut self) -> f32 {
            (self.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        }
        fn i8(&mut self) -> i8 {
            (self.next() >> 56) as u8 as i8
        }
    }

    const GELU: Gelu = Gelu { div: std::f32::consts::SQRT_2, add: 1.0, mul: 0.5 };

    /// What the weights and activations are drawn from.
    #[derive(Clone, Copy, Debug, PartialEq)]
    enum Data {
        /// Every i8 weight, -128 included.
        Random,
        /// onnxruntime's symmetric weights, -127..127.
        Symmetric,
        /// Only the extremes where sums grow fastest: weights -127 and 127,
        /// activations at both ends of their range (signed -128 and 127).
        Extreme,
    }

    #[allow(clippy::too_many_arguments)]
    fn check(
        kernel: Kernel,
        data: Data,
        rows: usize,
        k: usize,
        n: usize,
        asymmetric: bool,
        with_bias: bool,
        gelu: Option<Gelu>,
        threads: usize,
    ) {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (rows * 31 + k * 7 + n) as u64);
        let x: Vec<f32> = match data {
            Data::Extreme => (0..rows * k).map(|i| if (i / 3) % 2 == 0 { -2.0 } else { 3.0 }).collect(),
            _ => (0..rows * k).map(|_| rng.f32() * 3.0 + 0.4).collect(),
        };
        let w: Vec<i8> = match data {
            Data::Random => (0..k * n).map(|_| rng.i8()).collect(),
            Data::Symmetric => (0..k * n).map(|_| rng.i8().max(-127)).collect(),
            Data::Extreme => (0..k * n).map(|i| if i % 5 < 3 { -127 } else { 127 }).collect(),
        };
        // Halved (-64..63) for the kernel whose pairs must fit in i16: the
        // extremes then add same-signed pairs to exactly 128.
        let w: Vec<i8> = if kernel.for_weights(false) != kernel { w.iter().map(|&v| v >> 1).collect() } else { w };
        let zb: Vec<i8> = if asymmetric { (0..n).map(|_| rng.i8() / 8).collect() } else { vec![0] };
        let w_scale: Vec<f32> = (0..n).map(|_| (rng.f32().abs() + 0.01) * 0.02).collect();
        let bias: Vec<f32> = (0..n).map(|_| rng.f32()).collect();
        let bias = with_bias.then_some(bias.as_slice());
        let workers = Workers::new(threads, "test-w");

        let packed = PackedWeights::pack(k, n, &w, &zb);
        // A buffer left dirty by a bigger layer, as the reused one is: the
        // quantizer must rewrite every padding byte.
        let mut a = Activations::default();
        a.data.resize((rows + 32) * (k + 64) * 2);
        a.data.fill(0xa5);
        a.quantize(&x, k, kernel, &workers);
        let mut out = vec![f32::NAN; rows * n];
        let job = Job::new(&a, &packed, &w_scale, bias, gelu, &mut out);
        run(kernel, &a, &[job], &workers);

        let mut q = vec![0u8; rows * k];
        let (min, max) = min_max(&x);
        let (scale, zp) = scale_and_zero_point(min, max);
        quantize_into(&x, &mut q, scale, zp);
        assert_eq!((a.scale.to_bits(), a.zero_point), (scale.to_bits(), zp));
        let want = scalar::reference(&q, zp, scale, k, &w, &zb, &w_scale, bias, gelu);
        let diff = out.iter().zip(&want).position(|(a, b)| a.to_bits() != b.to_bits());
        assert_eq!(diff, None, "{kernel:?} {data:?} rows {rows} k {k} n {n}: {:?}", diff.map(|i| (out[i], want[i])));
    }

    /// Every check of one kernel against the ONNX definition, and of its
    /// quantizer against the portable one.
    fn equals_the_onnx_definition_bit_for_bit(kernel: Kernel) {
        // Shapes that exercise every remainder: rows not a multiple of the
        // tile, k not a multiple of 4 (or of AMX's 64), n not a multiple of
        // a panel, one row (the classifier head), and a transformer layer's
        // shape. k of 8 and 12 steps of 4, odd and even, for the A72
        // kernel's pairs of steps; 33 rows for AMX's 32 + 16 blocks; rows
        // of 2 KiB, which the layout pads.
        for (rows, k, n) in [
            (1, 4, 1),
            (5, 7, 33),
            (13, 64, 32),
            (12, 100, 70),
            (25, 129, 65),
            (4, 47, 20),
            (33, 200, 64),
            (197, 256, 96),
            (14, 2048, 40),
        ] {
            for (asymmetric, bias, gelu) in [(false, true, None), (true, false, None), (true, true, Some(GELU))] {
                for data in [Data::Random, Data::Symmetric] {
                    check(kernel, data, rows, k, n, asymmetric, bias, gelu, 1);
                }
            }
            check(kernel, Data::Extreme, rows, k, n, false, true, None, 1);
        }
        check(kernel, Data::Random, 197, 512, 300, false, true, Some(GELU), 2);
        check(kernel, Data::Symmetric, 197, 512, 300, true, true, None, 3);
        quantizer_gives_the_portable_bytes(kernel);
    }

    /// One test per kernel, so a failure names it; a kernel this CPU lacks
    /// says it was skipped.
    macro_rules! kernel_tests {
        ($($(#[$cfg:meta])* $test:ident: $kernel:ident,)*) => {$(
            $(#[$cfg])*
            #[test]
            fn $test() {
                let kernel = Kernel::$kernel;
                if Kernel::supported().contains(&kernel) {
                    equals_the_onnx_definition_bit_for_bit(kernel);
                } else {
                    eprintln!("skipped: this CPU does not run {}", kernel.name());
                }
            }
        )*};
    }

    #[test]
    fn weight_pairs_fit_in_i16_up_to_a_same_signed_sum_of_128() {
        // One pair of rows: column c multiplies pairs[c].
        let fits = |pairs: &[(i8, i8)]| {
            let n = pairs.len();
            let w: Vec<i8> = pairs.iter().map(|p| p.0).chain(pairs.iter().map(|p| p.1)).collect();
            pairs_fit_i16(&w, n)
        };
        assert!(fits(&[(64, 64), (-64, -64), (127, -128), (-128, 127), (0, -128), (100, 28)]));
        for bad in [(65, 64), (-64, -65), (127, 127), (-128, -1), (2, 127)] {
            assert!(!fits(&[(0, 0), bad]), "{bad:?}");
        }
        assert!(!fits(&[(100, 29)]));
        // k odd: the last row pairs with zero, so even -128 fits.
        assert!(pairs_fit_i16(&[64, 64, 64, 64, -128, 127], 2));
        assert!(!pairs_fit_i16(&[64, 64, 65, 64, -128, 127], 2));
    }

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn the_avx2_kernel_multiplies_bytes_only_where_every_pair_fits() {
        assert_eq!(Kernel::Avx2.for_weights(true), Kernel::Avx2Pairs);
        assert_eq!(Kernel::Avx2.for_weights(false), Kernel::Avx2);
        assert_eq!(Kernel::Avx2Pairs.for_weights(false), Kernel::Avx2);
        assert_eq!(Kernel::Avx512Vnni.for_weights(true), Kernel::Avx512Vnni);
        // Never the default, whatever the CPU.
        assert_ne!(Kernel::choose(None), Ok(Some(Kernel::Avx2Pairs)));
        let seven = PackedWeights::pack(4, 3, &[63, -64, 5, 63, -64, 7, 1, 2, 3, 4, 5, 6], &[0]);
        let eight = PackedWeights::pack(4, 3, &[63, -64, 5, 66, -64, 7, 1, 2, 3, 4, 5, 6], &[0]);
        assert!(seven.pairs_fit_i16 && !eight.pairs_fit_i16);
    }

    kernel_tests! {
        #[cfg(target_arch = "x86_64")]
        amx_equals_the_onnx_definition: Amx,
        #[cfg(target_arch = "x86_64")]
        avx512vnni_equals_the_onnx_definition: Avx512Vnni,
        #[cfg(target_arch = "x86_64")]
        avxvnni_equals_the_onnx_definition: AvxVnni,
        #[cfg(target_arch = "x86_64")]
        avx2_equals_the_onnx_definition: Avx2,
        #[cfg(target_arch = "x86_64")]
        avx2pairs_equals_the_onnx_definition: Avx2Pairs,
        #[cfg(target_arch = "aarch64")]
        arm64dot_equals_the_onnx_definition: Dot,
        #[cfg(target_arch = "aarch64")]
        arm64neon_equals_the_onnx_definition: Neon,
    }

    #[test]
    fn the_cpu_gets_the_kernel_it_must() {
        // cross/test.sh names the kernel a CPU model must get, so that a run
        // on the wrong (emulated) CPU cannot pass by skipping every kernel.
        if let Ok(want) = std::env::var("LOOKOUT_EXPECT_INT8_KERNEL") {
            assert_eq!(Kernel::choose(None).unwrap().map(Kernel::name), Some(want.as_str()));
        }
        if Kernel::supported().is_empty() {
            eprintln!("no lookout int8 kernel on this CPU; tract's path is used and tested instead");
        }
    }

    #[test]
    fn a_kernel_is_chosen_by_part_of_its_name() {
        let supported = Kernel::supported();
        assert_eq!(Kernel::choose(None), Ok(supported.first().copied()));
        for &k in &supported {
            assert_eq!(Kernel::choose(Some(k.name())), Ok(Some(k)));
        }
        let err = Kernel::choose(Some("nosuchkernel")).unwrap_err();
        assert!(err.contains("nosuchkernel"), "{err}");
    }

    fn quantizer_gives_the_portable_bytes(kernel: Kernel) {
        // The values, read back from the kernel's layout (16-bit for AVX2),
        // and their sum.
        let quantize = |xs: &[f32], scale: f32, zp: u8| -> (Vec<u8>, i32) {
            let bytes = kernel.activation_bytes();
            let mut got = vec![0xa5u8; xs.len() * bytes];
            let sum = kernel.quantize_row(xs, &mut got, scale, zp);
            assert!(got.chunks(bytes).all(|v| v[1..].iter().all(|&b| b == 0)), "{kernel:?}: a high byte is not 0");
            (got.into_iter().step_by(bytes).collect(), sum)
        };
        let mut rng = Rng(7);
        let mut xs: Vec<f32> = (0..1000).map(|i| rng.f32() * [1.0, 10.0, 0.01, 300.0][i % 4]).collect();
        xs[5] = f32::NAN;
        xs[6] = f32::INFINITY;
        xs[7] = f32::NEG_INFINITY;
        xs[100] = -0.0;
        // Exact ties on x / scale: with scale 1 every x.5 is one.
        let ties: Vec<f32> = (0..300).map(|i| i as f32 - 127.5).collect();
        for (xs, scale, zp) in
            [(&xs[..], 0.05, 131), (&xs[..37], 2.0, 0), (&ties[..], 1.0, 128), (&ties[..3], 1.0, 255)]
        {
            let mut want = vec![0u8; xs.len()];
            quantize_into(xs, &mut want, scale, zp);
            let (got, sum) = quantize(xs, scale, zp);
            assert_eq!(got, want, "{kernel:?} on {} values", xs.len());
            assert_eq!(sum, want.iter().map(|&v| v as i32).sum::<i32>());
        }
        for xs in [&xs[..], &xs[8..], &xs[8..71], &ties[..], &[3.0][..], &[][..]] {
            assert_eq!(kernel.min_max(xs), min_max(xs), "{} values", xs.len());
        }
        // Values whose quotient is at or next to a half, for scales with no
        // exact inverse (where `x * (1 / scale)` can round differently from
        // `x / scale`), and scales whose inverse is not a normal float.
        let drawn: Vec<f32> = (0..200).map(|_| (rng.f32().abs() + 1e-3) * 0.05).collect();
        for &scale in [0.1f32, 0.3, 1.0 / 3.0, 0.012_345_7, 7.7, 3.0 / 255.0, 0.017_3, 1e-39, 3e38].iter().chain(&drawn)
        {
            let near: Vec<f32> = (-300..300)
                .map(|n| (n as f32 + 0.5) * scale)
                .flat_map(|x| [x, x.next_up(), x.next_down(), x.next_up().next_up(), x.next_down().next_down()])
                .collect();
            let mut want = vec![0u8; near.len()];
            quantize_into(&near, &mut want, scale, 128);
            let (got, _) = quantize(&near, scale, 128);
            let diff = got.iter().zip(&want).position(|(a, b)| a != b);
            assert_eq!(diff, None, "{kernel:?}, scale {scale}: {:?}", diff.map(|i| (near[i], got[i], want[i])));
        }
    }

    #[test]
    fn the_shuffled_interleave_writes_what_the_byte_loop_writes() {
        let rows: [[i8; NR]; 4] = std::array::from_fn(|r| std::array::from_fn(|c| (r * 37 + c * 11) as i8 ^ -77));
        let [a, b, c, d] = &rows;
        let (mut shuffled, mut bytes) = (Step([0; NR * 4]), Step([0; NR * 4]));
        shuffled.interleave([a, b, c, d]);
        bytes.interleave_bytes([a, b, c, d]);
        assert_eq!(shuffled.0, bytes.0);
        // Column 5's four k, in row order.
        assert_eq!(bytes.0[20..24], [a[5], b[5], c[5], d[5]]);
    }

    #[test]
    fn packing_pads_with_zeros_and_sums_columns() {
        let w: Vec<i8> = (0..5 * 3).map(|i| i as i8 - 7).collect();
        let p = PackedWeights::pack(5, 3, &w, &[0]);
        assert_eq!((p.k4, p.panels(), p.steps.len()), (2, 1, 2 + STEP_SLACK));
        // Column 1 holds k = 0..4 in step 0 and k = 4 then padding in step 1.
        assert_eq!(&p.steps[0].0[4..8], &[w[1], w[4], w[7], w[10]]);
        assert_eq!(&p.steps[1].0[4..8], &[w[13], 0, 0, 0]);
        assert!(p.steps[0].0[12..].iter().all(|&v| v == 0), "columns past n are zero");
        assert_eq!(p.col_sums[..4], [-5, 0, 5, 0]);
        assert!(p.zero_points.is_none());
        assert_eq!(PackedWeights::pack(5, 3, &w, &[0, 2, 0]).zero_points.unwrap()[..4], [0, 2, 0, 0]);
    }
}
