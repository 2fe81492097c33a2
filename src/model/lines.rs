//! Growable buffers that start on a 64-byte cache line.
//!
//! A `Vec` as big as a layer's activations comes from `mmap`, 16 bytes past
//! a page: every 64-byte AMX tile row or zmm load then straddles two cache
//! lines. On the Xeon of BENCHMARKS.md ("Buffers on cache lines") a
//! stand-alone tile loop ran 6-10 % slower with its activation tiles 16
//! bytes off, and the whole large model 2-5 %. The kernels' scratch lives
//! here.

use std::marker::PhantomData;

#[repr(C, align(64))]
#[derive(Clone, Copy)]
struct Line([u8; 64]);

/// Element types for which zero bytes, and any bytes, are a value.
pub(crate) trait Plain: Copy {}
impl Plain for u8 {}
impl Plain for f32 {}

#[derive(Default)]
pub(crate) struct Lines<T: Plain> {
    lines: Vec<Line>,
    len: usize,
    _t: PhantomData<T>,
}

impl<T: Plain> Lines<T> {
    /// Like `Vec::resize` with zeros: elements kept from before stay as
    /// they were.
    pub(crate) fn resize(&mut self, len: usize) {
        self.lines.resize((len * size_of::<T>()).div_ceil(64), Line([0; 64]));
        self.len = len;
    }
}

impl<T: Plain> std::ops::Deref for Lines<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        // SAFETY: `lines` holds at least `len` T's worth of initialized
        // bytes (`resize`), aligned for any `Plain` type, and any bytes
        // are a `T`.
        unsafe { std::slice::from_raw_parts(self.lines.as_ptr().cast(), self.len) }
    }
}

impl<T: Plain> std::ops::DerefMut for Lines<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        // SAFETY: as in `deref`, and `&mut self` is exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.lines.as_mut_ptr().cast(), self.len) }
    }
}

#[cfg(test)]
mod tests {
    use super::Lines;

    #[test]
    fn starts_on_a_line_and_keeps_values_as_it_grows() {
        let mut b = Lines::<f32>::default();
        b.resize(10);
        b.iter_mut().enumerate().for_each(|(i, v)| *v = i as f32);
        for len in [1000, 7, 200_000, 300_001] {
            b.resize(len);
            assert_eq!((b.len(), b.as_ptr() as usize % 64), (len, 0));
        }
        assert_eq!(&b[..7], &[0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        assert!(b[16..].iter().all(|&v| v == 0.0), "grown with zeros");
    }
}
