//! MJPEG stream splitting: arbitrary bytes pushed in arbitrary chunks. Every
//! frame handed out is one SOI..EOI JPEG within the size bound, and the
//! buffer does not grow past it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lookout::capture::mjpeg::{Splitter, MAX_FRAME};

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, stream)) = data.split_first() else { return };
    let chunk = usize::from(chunk).max(1);
    let mut s = Splitter::default();
    let mut frames = vec![];
    for piece in stream.chunks(chunk) {
        s.push(piece);
        while let Some(f) = s.next_frame() {
            frames.push(f);
        }
    }
    for f in frames.into_iter().flatten() {
        assert!(f.starts_with(&[0xFF, 0xD8]) && f.ends_with(&[0xFF, 0xD9]), "{f:02x?}");
        assert!(f.len() <= MAX_FRAME + 2);
    }
});
