//! Splits an MJPEG byte stream (concatenated JPEGs, as `rpicam-vid`,
//! `gst-launch ... ! jpegenc ! fdsink` and `ffmpeg -f mjpeg -` write them)
//! into frames.
//!
//! Searching for FF D9 is not enough: APPn segments (EXIF thumbnails) hold
//! whole JPEGs of their own, and a pipe that restarts mid-frame leaves a
//! truncated image followed by a new SOI. So the scanner walks the marker
//! segments by their lengths and only scans entropy-coded data for markers,
//! where a real 0xFF is always stuffed as FF 00.

/// A frame larger than this without an end marker is garbage, not a frame
/// (a 4K MJPEG frame is a few MB); it bounds the buffer a broken pipe fills.
pub const MAX_FRAME: usize = 32 << 20;

/// What [`scan`] found at the start of a buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scan {
    /// `buf[start..end]` is one complete JPEG, SOI to EOI; drop `..end`.
    Frame { start: usize, end: usize },
    /// No complete frame yet; the first `discard` bytes are not part of any
    /// frame and can be dropped before more data is appended.
    Incomplete { discard: usize },
    /// `buf[..skip]` is a broken frame (truncated, bad marker, too large);
    /// drop it and scan again. After a structural error `skip` only passes
    /// the broken frame's SOI: a frame cut inside a header segment makes the
    /// scanner jump by a length that lands inside the next frame, whose SOI
    /// must survive. (On corrupt input, a thumbnail's SOI inside an APPn
    /// segment may then be found as a frame of its own.)
    Corrupt { skip: usize, reason: &'static str },
}

/// Finds the first JPEG in `buf`. Pure and total: any input gives an answer
/// that makes progress (`discard`/`skip`/`end` > 0) or asks for more data.
pub fn scan(buf: &[u8]) -> Scan {
    let Some(start) = find_soi(buf, 0) else {
        // Keep a trailing 0xFF: it may be the first half of the next SOI.
        let keep = usize::from(buf.last() == Some(&0xFF));
        return Scan::Incomplete { discard: buf.len() - keep };
    };
    let mut i = start + 2;
    loop {
        if i - start > MAX_FRAME {
            return Scan::Corrupt { skip: i, reason: "frame larger than 32 MiB without an end marker" };
        }
        // A marker: FF, optional FF fill bytes, then the code.
        match buf.get(i) {
            None => return Scan::Incomplete { discard: start },
            Some(0xFF) => {}
            Some(_) => return Scan::Corrupt { skip: start + 2, reason: "expected a marker between segments" },
        }
        let mut j = i + 1;
        while buf.get(j) == Some(&0xFF) {
            j += 1;
        }
        let Some(&code) = buf.get(j) else { return Scan::Incomplete { discard: start } };
        match code {
            0xD9 => return Scan::Frame { start, end: j + 1 },
            // A new image before this one ended: the writer restarted.
            0xD8 => return Scan::Corrupt { skip: i, reason: "truncated frame (a new image started)" },
            0x00 => return Scan::Corrupt { skip: start + 2, reason: "invalid marker FF 00" },
            // Markers without a length.
            0x01 | 0xD0..=0xD7 => {
                i = j + 1;
                continue;
            }
            _ => {}
        }
        let (Some(&hi), Some(&lo)) = (buf.get(j + 1), buf.get(j + 2)) else {
            return Scan::Incomplete { discard: start };
        };
        let len = usize::from(hi) << 8 | usize::from(lo);
        if len < 2 {
            return Scan::Corrupt { skip: start + 2, reason: "segment length below 2" };
        }
        i = j + 1 + len;
        if code == 0xDA {
            // Entropy-coded data follows the scan header: it ends at the
            // first FF not followed by 00 (stuffing) or a restart marker.
            match entropy_end(buf, i) {
                Some(k) => i = k,
                None => {
                    if buf.len() - start > MAX_FRAME {
                        return Scan::Corrupt {
                            skip: buf.len(),
                            reason: "frame larger than 32 MiB without an end marker",
                        };
                    }
                    return Scan::Incomplete { discard: start };
                }
            }
        }
    }
}

fn find_soi(buf: &[u8], from: usize) -> Option<usize> {
    buf.get(from..)?.windows(2).position(|w| w == [0xFF, 0xD8]).map(|p| p + from)
}

/// Index of the marker that ends entropy-coded data starting at `from`.
fn entropy_end(buf: &[u8], from: usize) -> Option<usize> {
    let mut k = from;
    while k + 1 < buf.len() {
        if buf[k] == 0xFF {
            match buf[k + 1] {
                0x00 | 0xD0..=0xD7 => k += 2,
                // Fill bytes before a marker: the marker starts here.
                _ => return Some(k),
            }
        } else {
            k += 1;
        }
    }
    None
}

/// Accumulates stream bytes and hands out whole frames.
#[derive(Default)]
pub struct Splitter {
    buf: Vec<u8>,
    /// The last scan stopped inside a frame. Such a frame only completes
    /// (or shows itself truncated) when an EOI or SOI arrives, so reads
    /// without either skip the rescan from the frame's start, which made
    /// large frames cost quadratic time.
    waiting: bool,
}

impl Splitter {
    pub fn push(&mut self, bytes: &[u8]) {
        let from = self.buf.len().saturating_sub(1);
        self.buf.extend_from_slice(bytes);
        if self.buf.len() > MAX_FRAME
            || self.buf[from..].windows(2).any(|w| w[0] == 0xFF && (w[1] == 0xD8 || w[1] == 0xD9))
        {
            self.waiting = false;
        }
    }

    /// The next complete frame, or the reason a broken one was dropped;
    /// `None` when more data is needed.
    pub fn next_frame(&mut self) -> Option<Result<Vec<u8>, &'static str>> {
        if self.waiting {
            return None;
        }
        match scan(&self.buf) {
            Scan::Frame { start, end } => {
                let frame = self.buf[start..end].to_vec();
                self.buf.drain(..end);
                Some(Ok(frame))
            }
            Scan::Incomplete { discard } => {
                self.buf.drain(..discard);
                // Outside a frame (garbage, text on stdout) every push is
                // scanned, so the junk is dropped at once.
                self.waiting = self.buf.starts_with(&[0xFF, 0xD8]);
                None
            }
            Scan::Corrupt { skip, reason } => {
                self.buf.drain(..skip);
                Some(Err(reason))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A structurally valid JPEG: SOI, APP0 holding `app`, a scan whose
    /// entropy data is `data`, EOI.
    fn jpeg(app: &[u8], data: &[u8]) -> Vec<u8> {
        let mut v = vec![0xFF, 0xD8, 0xFF, 0xE0];
        v.extend_from_slice(&((app.len() + 2) as u16).to_be_bytes());
        v.extend_from_slice(app);
        v.extend_from_slice(&[0xFF, 0xDA, 0x00, 0x03, 0x01]);
        v.extend_from_slice(data);
        v.extend_from_slice(&[0xFF, 0xD9]);
        v
    }

    fn split_all(stream: &[u8], chunk: usize) -> (Vec<Vec<u8>>, Vec<&'static str>) {
        let mut s = Splitter::default();
        let (mut frames, mut errors) = (vec![], vec![]);
        for c in stream.chunks(chunk) {
            s.push(c);
            while let Some(r) = s.next_frame() {
                match r {
                    Ok(f) => frames.push(f),
                    Err(e) => errors.push(e),
                }
            }
        }
        (frames, errors)
    }

    #[test]
    fn markers_inside_app_segments_and_stuffed_bytes_do_not_end_a_frame() {
        // An EXIF-like thumbnail: a whole JPEG (with its EOI) inside APP0.
        let thumb = jpeg(b"t", &[1, 2, 3]);
        let a = jpeg(&thumb, &[0x12, 0xFF, 0x00, 0x34, 0xFF, 0xD3, 0x56]);
        let b = jpeg(b"JFIF\0", &[0xFF, 0x00, 0xFF, 0x00]);
        let stream = [b"junk".as_slice(), &a, &b].concat();
        for chunk in [1, 2, 3, 7, 64, stream.len()] {
            let (frames, errors) = split_all(&stream, chunk);
            assert_eq!(frames, vec![a.clone(), b.clone()], "chunk {chunk}");
            assert!(errors.is_empty(), "chunk {chunk}: {errors:?}");
        }
    }

    #[test]
    fn the_bundled_sample_jpegs_split_back_into_the_same_files() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/digits/samples");
        let files: Vec<Vec<u8>> =
            ["0-zero.jpg", "1-one.jpg", "7-seven.jpg"].iter().map(|n| std::fs::read(dir.join(n)).unwrap()).collect();
        let (frames, errors) = split_all(&files.concat(), 1000);
        assert_eq!(frames, files);
        assert!(errors.is_empty());
    }

    #[test]
    fn a_truncated_frame_is_reported_and_the_next_one_survives() {
        let a = jpeg(b"a", &[1, 2, 3, 4, 5, 6]);
        let b = jpeg(b"b", &[7, 8]);
        let stream = [&a[..a.len() - 4], &b].concat();
        let (frames, errors) = split_all(&stream, 5);
        assert_eq!(frames, vec![b]);
        assert_eq!(errors, vec!["truncated frame (a new image started)"]);
    }

    #[test]
    fn a_frame_cut_inside_a_header_segment_does_not_swallow_the_next_one() {
        // The cut APP0 claims 40 bytes: its length jumps into `b`, past b's SOI.
        let a = jpeg(&[7u8; 38], &[1, 2, 3]);
        let b = jpeg(b"b", &[4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26]);
        let c = jpeg(b"c", &[9]);
        let (frames, errors) = split_all(&[&a[..10], &b, &c].concat(), 4);
        assert_eq!(frames, vec![b, c]);
        assert_eq!(errors, vec!["expected a marker between segments"]);
    }

    #[test]
    fn garbage_between_segments_is_corrupt_and_resyncs() {
        let good = jpeg(b"g", &[9]);
        let bad = [0xFF, 0xD8, 0x12, 0x34];
        let (frames, errors) = split_all(&[&bad[..], &good].concat(), 3);
        assert_eq!(frames, vec![good]);
        assert_eq!(errors, vec!["expected a marker between segments"]);
    }

    #[test]
    fn incomplete_input_keeps_only_what_may_start_a_frame() {
        assert_eq!(scan(b"no jpeg here"), Scan::Incomplete { discard: 12 });
        assert_eq!(scan(&[1, 2, 0xFF]), Scan::Incomplete { discard: 2 });
        assert_eq!(scan(&[1, 0xFF, 0xD8, 0xFF]), Scan::Incomplete { discard: 1 });
        assert_eq!(scan(&[]), Scan::Incomplete { discard: 0 });
        // A zero-length segment would loop forever if it did not count as corrupt.
        assert!(matches!(scan(&[0xFF, 0xD8, 0xFF, 0xE0, 0, 0]), Scan::Corrupt { skip: 2, .. }));
    }

    #[test]
    fn text_without_frames_does_not_accumulate() {
        let mut s = Splitter::default();
        for _ in 0..1000 {
            s.push(b"Setting pipeline to PLAYING ...\n");
            assert!(s.next_frame().is_none());
        }
        assert!(s.buf.is_empty());
    }

    #[test]
    fn every_answer_makes_progress_on_arbitrary_bytes() {
        // A tiny deterministic fuzz: xorshift bytes biased towards 0xFF and
        // marker codes, fed in odd chunks, must never stall or panic.
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut bytes = vec![];
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            bytes.push(match x % 6 {
                0 => 0xFF,
                1 => [0xD8, 0xD9, 0xDA, 0xE1, 0x00, 0xD0][(x >> 8) as usize % 6],
                _ => (x >> 16) as u8,
            });
        }
        let mut s = Splitter::default();
        let mut outcomes = 0;
        for c in bytes.chunks(37) {
            s.push(c);
            while let Some(r) = s.next_frame() {
                outcomes += 1;
                assert!(outcomes < bytes.len(), "no progress");
                if let Ok(f) = r {
                    assert!(f.starts_with(&[0xFF, 0xD8]) && f.ends_with(&[0xFF, 0xD9]));
                }
            }
        }
        assert!(s.buf.len() < bytes.len());
    }
}
