//! Replays image files: one file, or a directory's images in name order.
//! Used for tests, demos and cameras that drop snapshots into a folder.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::{CaptureError, FrameSource};
use crate::frame::Frame;

const EXTENSIONS: [&str; 5] = ["jpg", "jpeg", "png", "bmp", "mjpg"];

pub struct FilesSource {
    files: Vec<PathBuf>,
    next: usize,
    looping: bool,
    /// Time between frames; zero replays as fast as frames are taken.
    period: Duration,
    due: Instant,
    seq: u64,
    name: String,
}

impl FilesSource {
    pub fn open(path: &Path, looping: bool, fps: f64) -> Result<FilesSource, CaptureError> {
        let name = format!("files:{}", path.display());
        let open_err = |reason: String| CaptureError::Open { source_name: name.clone(), reason };
        let files = if path.is_dir() {
            let mut files: Vec<PathBuf> = std::fs::read_dir(path)
                .map_err(|e| open_err(e.to_string()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.extension()
                        .and_then(|e| e.to_str())
                        .is_some_and(|e| EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
                })
                .collect();
            files.sort();
            files
        } else if path.is_file() {
            vec![path.to_owned()]
        } else {
            return Err(open_err("no such file or directory".into()));
        };
        if files.is_empty() {
            return Err(open_err(format!("no images ({}) in the directory", EXTENSIONS.join(", "))));
        }
        let period = if fps > 0.0 { Duration::from_secs_f64(1.0 / fps) } else { Duration::ZERO };
        Ok(FilesSource { files, next: 0, looping, period, due: Instant::now(), seq: 0, name })
    }
}

impl FrameSource for FilesSource {
    fn next_frame(&mut self) -> Result<Option<Frame>, CaptureError> {
        if self.next == self.files.len() {
            if !self.looping {
                return Ok(None);
            }
            self.next = 0;
        }
        if !self.period.is_zero() {
            std::thread::sleep(self.due.saturating_duration_since(Instant::now()));
            self.due = Instant::now().max(self.due) + self.period;
        }
        let path = &self.files[self.next];
        self.next += 1;
        let origin = path.display().to_string();
        let data =
            std::fs::read(path).map_err(|e| CaptureError::Read { origin: origin.clone(), reason: e.to_string() })?;
        let seq = self.seq;
        self.seq += 1;
        Ok(Some(Frame::encoded(seq, data, origin)))
    }

    fn is_live(&self) -> bool {
        !self.period.is_zero()
    }

    fn name(&self) -> String {
        self.name.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replays_images_in_name_order_then_ends_or_loops() {
        let d = tempfile::tempdir().unwrap();
        for name in ["b.jpg", "a.png", "notes.txt", "c.JPEG"] {
            std::fs::write(d.path().join(name), name).unwrap();
        }
        let mut s = FilesSource::open(d.path(), false, 0.0).unwrap();
        let mut got = vec![];
        while let Some(f) = s.next_frame().unwrap() {
            got.push((f.seq, String::from_utf8(f.data).unwrap()));
        }
        assert_eq!(got, vec![(0, "a.png".into()), (1, "b.jpg".into()), (2, "c.JPEG".into())]);
        assert!(!s.is_live());

        let mut s = FilesSource::open(d.path(), true, 0.0).unwrap();
        let seqs: Vec<u64> = (0..5).map(|_| s.next_frame().unwrap().unwrap().seq).collect();
        assert_eq!(seqs, vec![0, 1, 2, 3, 4]);
    }

    #[test]
    fn an_empty_directory_is_an_open_error() {
        let d = tempfile::tempdir().unwrap();
        let e = FilesSource::open(d.path(), false, 0.0).err().unwrap().to_string();
        assert!(e.contains("no images"), "{e}");
    }
}
