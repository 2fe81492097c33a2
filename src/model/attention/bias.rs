//! A block's attention bias, kept as small as its values allow.
//!
//! BEiT's relative position bias is `[H, T, T]` floats once the exporter
//! has folded it: 2.5 MB per block of ViT-L, 60 MB for its 24 blocks, read
//! from memory on every inference (5 % of the large model's latency on
//! this project's Xeon). Between two patch tokens it only depends on their
//! offset on the patch grid, since the model gathers it from a table by
//! that offset. So with `T = L + G * G` tokens (`L` leading ones, such as
//! the class token, then a `G x G` grid), a head's bias is its
//! `(2G - 1) x (2G - 1)` offsets plus the `L` rows and columns of the
//! leading tokens: 72 KB per ViT-L block. Each head's rows are written
//! into its scores, in the core's cache, before the product adds to them.
//!
//! The form is found from the values, not from the graph that computed
//! them: a bias is kept in it only when every value equals, bit for bit,
//! the one its offset gives. Any other bias stays as it is.

/// Leading tokens looked for before the grid (class, distillation, ...).
const MAX_LEAD: usize = 8;

/// Values a row is written with at once (a 512-bit vector of f32): rows
/// and tables are padded by this many, so that each grid row is one copy
/// of a fixed size, the excess overwritten by the next or left past the
/// row's end.
const CHUNK: usize = 16;

#[derive(Debug)]
pub(super) struct Bias {
    /// The block's head count, or 1 for one bias every head adds.
    pub(super) heads: usize,
    pub(super) tokens: usize,
    form: Form,
}

#[derive(Debug)]
enum Form {
    /// `[heads, T, T]` as given.
    Dense(Vec<f32>),
    /// Per head: `offsets`, `(2G - 1)` rows of `2G - 1` values, row `dy +
    /// G - 1` and entry `G - 1 - dx` holding the bias from a grid token to
    /// the one `dy` rows and `dx` columns before it (so that a query's
    /// values for one grid row of keys are consecutive); `lead_rows`, the
    /// `L` leading tokens' whole rows; `lead_cols`, each grid token's `L`
    /// values for the leading tokens.
    Relative { grid: usize, lead: usize, offsets: Vec<f32>, lead_rows: Vec<f32>, lead_cols: Vec<f32> },
}

impl Bias {
    /// The bias of `values` (`heads * tokens * tokens` of them), in its
    /// smaller form where it has one.
    pub(super) fn new(heads: usize, tokens: usize, values: &[f32]) -> Bias {
        assert_eq!(values.len(), heads * tokens * tokens, "a [{heads}, {tokens}, {tokens}] bias");
        let form = relative(heads, tokens, values).unwrap_or_else(|| Form::Dense(values.to_vec()));
        Bias { heads, tokens, form }
    }

    /// Which of the bias's heads head `h` adds.
    fn head(&self, h: usize) -> usize {
        if self.heads == 1 {
            0
        } else {
            h
        }
    }

    /// How many values past the last row's `T` [`Bias::write`] may write.
    pub(super) const OVERRUN: usize = CHUNK;

    /// Writes head `h`'s `T x T` bias into `out`, row `i` at `i * stride`
    /// (`stride >= T`). `out` holds `(T - 1) * stride + T + OVERRUN`
    /// values; what lies between the rows may be written too.
    pub(super) fn write(&self, h: usize, out: &mut [f32], stride: usize) {
        let t = self.tokens;
        let h = self.head(h);
        assert!(stride >= t && out.len() >= (t - 1) * stride + t + CHUNK);
        match &self.form {
            Form::Dense(values) => {
                for (i, row) in values[h * t * t..][..t * t].chunks_exact(t).enumerate() {
                    out[i * stride..][..t].copy_from_slice(row);
                }
            }
            &Form::Relative { grid, lead, ref offsets, ref lead_rows, ref lead_cols } => {
                for (i, row) in lead_rows[h * lead * t..][..lead * t].chunks_exact(t).enumerate() {
                    out[i * stride..][..t].copy_from_slice(row);
                }
                let side = 2 * grid - 1;
                let table = &offsets[h * (side * side + CHUNK)..][..side * side + CHUNK];
                let cols = &lead_cols[h * (t - lead) * lead..][..(t - lead) * lead];
                for g in 0..t - lead {
                    let (y, x) = (g / grid, g % grid);
                    let row = &mut out[(lead + g) * stride..][..t + CHUNK];
                    row[..lead].copy_from_slice(&cols[g * lead..][..lead]);
                    // Key row `yk` is `y - yk` rows before; its keys `xk =
                    // 0..G` are offsets `x - xk`, entries `G - 1 - x + xk`:
                    // from `first`, a table row earlier for each later key
                    // row.
                    let first = (y + grid - 1) * side + grid - 1 - x;
                    if grid > CHUNK {
                        for yk in 0..grid {
                            let (from, to) = (first - yk * side, lead + yk * grid);
                            row[to..to + grid].copy_from_slice(&table[from..from + grid]);
                        }
                        continue;
                    }
                    // `first + CHUNK <= table.len()` and `lead + (G - 1) G +
                    // CHUNK <= T + CHUNK` by the table's and row's sizes.
                    debug_assert!(first + CHUNK <= table.len() && (grid - 1) * side <= first);
                    let (mut from, mut to) = (table[first..].as_ptr(), row[lead..].as_mut_ptr());
                    for _ in 0..grid {
                        // SAFETY: reads within `table` (from `first` down
                        // by at most `G - 1` rows of `side`, which `first`
                        // holds), writes within `row` (above); distinct
                        // allocations.
                        unsafe { std::ptr::copy_nonoverlapping(from, to, CHUNK) };
                        (from, to) = (from.wrapping_sub(side), to.wrapping_add(grid));
                    }
                }
            }
        }
    }

    /// Whether the bias is kept in its smaller form.
    #[cfg(test)]
    pub(super) fn is_relative(&self) -> bool {
        matches!(self.form, Form::Relative { .. })
    }
}

/// `values` in the relative form, if they have it.
fn relative(heads: usize, t: usize, values: &[f32]) -> Option<Form> {
    let (lead, grid) = (0..=MAX_LEAD.min(t)).find_map(|lead| {
        let grid = (t - lead).isqrt();
        (grid >= 2 && grid * grid == t - lead).then_some((lead, grid))
    })?;
    let side = 2 * grid - 1;
    let per_head = side * side + CHUNK;
    let mut offsets = vec![0.0f32; heads * per_head];
    let mut seen = vec![false; side * side];
    let (mut lead_rows, mut lead_cols) = (Vec::with_capacity(heads * lead * t), Vec::with_capacity(heads * t * lead));
    for h in 0..heads {
        let head = &values[h * t * t..(h + 1) * t * t];
        let table = &mut offsets[h * per_head..][..side * side];
        seen.fill(false);
        lead_rows.extend_from_slice(&head[..lead * t]);
        for (g, row) in head[lead * t..].chunks_exact(t).enumerate() {
            lead_cols.extend_from_slice(&row[..lead]);
            let (y, x) = (g / grid, g % grid);
            // A grid row of keys reads a run of `grid` offsets (a division
            // per value to find them was 0.02 s of a ViT-L's load).
            for (yk, keys) in row[lead..].chunks_exact(grid).enumerate() {
                let at = (y + grid - 1 - yk) * side + grid - 1 - x;
                for ((&v, slot), seen) in keys.iter().zip(&mut table[at..at + grid]).zip(&mut seen[at..at + grid]) {
                    if !*seen {
                        (*slot, *seen) = (v, true);
                    } else if slot.to_bits() != v.to_bits() {
                        return None;
                    }
                }
            }
        }
    }
    Some(Form::Relative { grid, lead, offsets, lead_rows, lead_cols })
}

/// BEiT's bias: a table of `(2G - 1)^2 + 3` values per head gathered by
/// each pair's offset, the class token's row, column and self last.
#[cfg(test)]
pub(super) fn beit(heads: usize, grid: usize, table: impl Fn(usize, usize) -> f32) -> Vec<f32> {
    let t = 1 + grid * grid;
    let side = 2 * grid - 1;
    let index = |i: usize, j: usize| match (i, j) {
        (0, 0) => side * side + 2,
        (0, _) => side * side,
        (_, 0) => side * side + 1,
        _ => {
            let ((yi, xi), (yj, xj)) = (((i - 1) / grid, (i - 1) % grid), ((j - 1) / grid, (j - 1) % grid));
            (yi + grid - 1 - yj) * side + (xi + grid - 1 - xj)
        }
    };
    (0..heads).flat_map(|h| (0..t * t).map(move |ij| (h, ij))).map(|(h, ij)| table(h, index(ij / t, ij % t))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every head's bias as `write` writes it, rows `T + 5` apart.
    fn rows(bias: &Bias, heads: usize) -> Vec<f32> {
        let t = bias.tokens;
        let stride = t + 5;
        let mut out = vec![];
        for h in 0..heads {
            let mut all = vec![f32::NAN; (t - 1) * stride + t + Bias::OVERRUN];
            bias.write(h, &mut all, stride);
            (0..t).for_each(|i| out.extend_from_slice(&all[i * stride..][..t]));
        }
        out
    }

    #[test]
    fn a_relative_position_bias_is_kept_small_and_rebuilt_bit_for_bit() {
        let value = |h: usize, k: usize| ((h * 7919 + k * 104_729) % 1000) as f32 / 997.0 - 0.5;
        // ViT-L's 14 x 14 grid, the digits model's 8 x 8, a grid wider
        // than one copy; and without a class token.
        for (heads, grid) in [(16, 14), (4, 8), (2, 17), (3, 2)] {
            let values = beit(heads, grid, value);
            let bias = Bias::new(heads, 1 + grid * grid, &values);
            assert!(bias.is_relative(), "grid {grid}");
            assert_eq!(rows(&bias, heads), values, "grid {grid}");
            let t = 1 + grid * grid;
            let patches: Vec<f32> = (0..heads)
                .flat_map(|h| (1..t).flat_map(move |i| (1..t).map(move |j| (h * t + i) * t + j)))
                .map(|at| values[at])
                .collect();
            let bias = Bias::new(heads, t - 1, &patches);
            assert!(bias.is_relative(), "grid {grid} without a class token");
            assert_eq!(rows(&bias, heads), patches);
        }
        // One bias every head adds.
        let values = beit(1, 14, value);
        let bias = Bias::new(1, 197, &values);
        assert!(bias.is_relative());
        assert_eq!(rows(&bias, 6)[5 * 197 * 197..], values[..]);
    }

    #[test]
    fn any_other_bias_is_kept_as_it_is() {
        let mut values = beit(2, 8, |h, k| (h * 100 + k) as f32);
        // One value off its offset's; one zero of the other sign; a token
        // count that is no grid after at most 8 leading tokens.
        let changes: [fn(&mut Vec<f32>); 2] = [
            |v| v[65 * 65 + 30 * 65 + 31] += 1.0,
            |v| {
                v.iter_mut().for_each(|x| *x = 0.0);
                v[2 * 65 + 3] = -0.0;
            },
        ];
        for change in changes {
            let mut changed = values.clone();
            change(&mut changed);
            let bias = Bias::new(2, 65, &changed);
            assert!(!bias.is_relative());
            assert_eq!(rows(&bias, 2), changed);
        }
        values.truncate(2 * 63 * 63);
        let dense = Bias::new(2, 63, &values);
        assert!(!dense.is_relative(), "63 tokens");
        assert_eq!(rows(&dense, 2), values);
    }
}
