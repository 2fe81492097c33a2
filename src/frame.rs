//! The captured frame: the one type every frame source produces and the
//! preprocessor consumes.

use std::time::SystemTime;

/// How the bytes of a [`Frame`] are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PixelFormat {
    /// Packed 8-bit R, G, B.
    Rgb8,
    /// Packed 8-bit B, G, R (OpenCV and some pipes).
    Bgr8,
    /// One 8-bit luma byte per pixel.
    Gray8,
    /// YUYV 4:2:2 (YUY2), what most USB webcams deliver uncompressed.
    Yuyv,
    /// NV12: a Y plane then an interleaved UV plane at half resolution.
    Nv12,
    /// A compressed image (JPEG/MJPEG, PNG, BMP); size comes from its header.
    Encoded,
}

impl PixelFormat {
    /// Byte length of a raw frame of this format, `None` for encoded frames
    /// or sizes the format cannot represent (odd widths for YUYV, odd sizes
    /// for NV12).
    pub fn frame_len(self, width: u32, height: u32) -> Option<usize> {
        let (w, h) = (width as usize, height as usize);
        match self {
            PixelFormat::Rgb8 | PixelFormat::Bgr8 => w.checked_mul(h)?.checked_mul(3),
            PixelFormat::Gray8 => w.checked_mul(h),
            PixelFormat::Yuyv if w % 2 == 0 => w.checked_mul(h)?.checked_mul(2),
            PixelFormat::Nv12 if w % 2 == 0 && h % 2 == 0 => w.checked_mul(h)?.checked_mul(3).map(|n| n / 2),
            _ => None,
        }
    }
}

/// One captured image.
#[derive(Debug, Clone)]
pub struct Frame {
    /// Counts frames from one source from 0; gaps show frames the daemon
    /// dropped because inference was busy.
    pub seq: u64,
    /// Wall-clock time of capture, published with the result so consumers
    /// can tell a fresh classification from a replayed one.
    pub captured_at: SystemTime,
    /// Declared size; 0x0 for encoded frames until decoded.
    pub width: u32,
    pub height: u32,
    pub format: PixelFormat,
    pub data: Vec<u8>,
    /// Where the frame came from (a file path, a device), for log lines.
    pub origin: String,
}

impl Frame {
    /// A compressed image (JPEG...) captured now; its size comes from its
    /// header when decoded.
    pub fn encoded(seq: u64, data: Vec<u8>, origin: impl Into<String>) -> Frame {
        Frame {
            seq,
            captured_at: SystemTime::now(),
            width: 0,
            height: 0,
            format: PixelFormat::Encoded,
            data,
            origin: origin.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_len_matches_layouts() {
        assert_eq!(PixelFormat::Rgb8.frame_len(4, 2), Some(24));
        assert_eq!(PixelFormat::Gray8.frame_len(4, 2), Some(8));
        assert_eq!(PixelFormat::Yuyv.frame_len(4, 2), Some(16));
        assert_eq!(PixelFormat::Yuyv.frame_len(3, 2), None);
        assert_eq!(PixelFormat::Nv12.frame_len(4, 2), Some(12));
        assert_eq!(PixelFormat::Nv12.frame_len(4, 3), None);
        assert_eq!(PixelFormat::Encoded.frame_len(4, 2), None);
    }
}
