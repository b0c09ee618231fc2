//! Where a camera's frames come from: its URL, and the `file:` / `dir:` feeds. Listing and
//! ordering are plain functions; the only I/O is reading the directory and the files.

use std::collections::{BTreeSet, HashMap};
use std::ffi::OsString;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

/// A camera's `url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CameraUrl {
    /// One image, re-read every interval: a code held in view.
    File(PathBuf),
    /// A directory: each new image file is one frame, in name order, read once.
    Dir(PathBuf),
    /// A V4L2 capture device (feature `camera`).
    V4l2(PathBuf),
}

/// Why a `url` is not a camera URL. Fix the config.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    #[error("{0:?} is not file:/path/image.png, dir:/path/ or v4l2:/dev/videoN")]
    Scheme(String),
    #[error("{0:?} names no path after the scheme")]
    NoPath(String),
}

impl CameraUrl {
    pub fn parse(s: &str) -> Result<CameraUrl, UrlError> {
        let (scheme, rest) = s
            .split_once(':')
            .ok_or_else(|| UrlError::Scheme(s.into()))?;
        // `file:///x` is the same as `file:/x`.
        let path = rest.strip_prefix("//").unwrap_or(rest);
        if path.is_empty() {
            return Err(UrlError::NoPath(s.into()));
        }
        let path = PathBuf::from(path);
        match scheme {
            "file" => Ok(CameraUrl::File(path)),
            "dir" => Ok(CameraUrl::Dir(path)),
            "v4l2" => Ok(CameraUrl::V4l2(path)),
            _ => Err(UrlError::Scheme(s.into())),
        }
    }
}

impl fmt::Display for CameraUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (scheme, p) = match self {
            CameraUrl::File(p) => ("file", p),
            CameraUrl::Dir(p) => ("dir", p),
            CameraUrl::V4l2(p) => ("v4l2", p),
        };
        write!(f, "{scheme}:{}", p.display())
    }
}

/// Whether a directory entry can be a frame: writers put a file in place under a hidden or
/// `.part`/`.tmp` name and rename it, so those are never read half-written.
fn is_candidate(name: &Path) -> bool {
    let Some(s) = name.to_str() else {
        return true; // Not UTF-8: still a frame (and probably a bad one, reported as such).
    };
    !(s.starts_with('.') || s.ends_with(".part") || s.ends_with(".tmp") || s.ends_with('~'))
}

/// The `dir:` feed's bookkeeping: which files were taken, which are still being written.
///
/// A file is taken once its size is the same in two listings in a row (a `cp` in progress
/// grows between them), so a frame costs one interval of latency and is never read half
/// written. Taken names are remembered while the file exists, so the set is bounded by the
/// directory; a file removed and written again under the same name is a new frame.
#[derive(Debug, Default)]
pub struct DirFrames {
    taken: BTreeSet<OsString>,
    growing: HashMap<OsString, u64>,
}

impl DirFrames {
    /// Given one listing (name, size), returns the names to read now, in name order.
    pub fn ready(&mut self, listing: &[(OsString, u64)]) -> Vec<OsString> {
        self.taken
            .retain(|n| listing.iter().any(|(name, _)| name == n));
        let mut ready = Vec::new();
        let mut growing = HashMap::new();
        for (name, size) in listing {
            if self.taken.contains(name) || !is_candidate(Path::new(name)) {
                continue;
            }
            if self.growing.get(name) == Some(size) {
                ready.push(name.clone());
            } else {
                growing.insert(name.clone(), *size);
            }
        }
        self.growing = growing;
        ready.sort();
        self.taken.extend(ready.iter().cloned());
        ready
    }
}

/// Lists the regular files of `dir` with their sizes. An error means the directory is gone.
pub fn list_dir(dir: &Path) -> io::Result<Vec<(OsString, u64)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let Ok(meta) = entry.metadata() else {
            continue; // Removed between the listing and the stat.
        };
        if meta.is_file() {
            out.push((entry.file_name(), meta.len()));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_into_their_three_forms() {
        let p = |s| CameraUrl::parse(s);
        assert_eq!(p("file:/a/b.png"), Ok(CameraUrl::File("/a/b.png".into())));
        assert_eq!(p("file:///a/b.png"), Ok(CameraUrl::File("/a/b.png".into())));
        assert_eq!(p("dir:/frames/"), Ok(CameraUrl::Dir("/frames/".into())));
        assert_eq!(p("dir:rel"), Ok(CameraUrl::Dir("rel".into())));
        assert_eq!(
            p("v4l2:/dev/video0"),
            Ok(CameraUrl::V4l2("/dev/video0".into()))
        );
        assert!(matches!(p("/dev/video0"), Err(UrlError::Scheme(_))));
        assert!(matches!(p("http://cam/x"), Err(UrlError::Scheme(_))));
        assert!(matches!(p("dir:"), Err(UrlError::NoPath(_))));
        assert_eq!(
            CameraUrl::parse("v4l2:/dev/video0").unwrap().to_string(),
            "v4l2:/dev/video0"
        );
    }

    fn listing(files: &[(&str, u64)]) -> Vec<(OsString, u64)> {
        files.iter().map(|(n, s)| ((*n).into(), *s)).collect()
    }

    fn names(v: Vec<OsString>) -> Vec<String> {
        v.into_iter().map(|n| n.into_string().unwrap()).collect()
    }

    #[test]
    fn dir_frames_come_in_name_order_once_each() {
        let mut d = DirFrames::default();
        let l = listing(&[("b.png", 10), ("a.png", 20)]);
        assert!(
            d.ready(&l).is_empty(),
            "first sight: not yet known complete"
        );
        assert_eq!(names(d.ready(&l)), ["a.png", "b.png"]);
        assert!(d.ready(&l).is_empty(), "processed files are not re-read");
        let l = listing(&[("a.png", 20), ("b.png", 10), ("c.png", 5)]);
        d.ready(&l);
        assert_eq!(names(d.ready(&l)), ["c.png"]);
    }

    #[test]
    fn dir_frames_wait_for_a_growing_file_and_skip_temporaries() {
        let mut d = DirFrames::default();
        d.ready(&listing(&[("a.png", 10), (".a.png", 1), ("b.png.part", 1)]));
        assert!(
            d.ready(&listing(&[("a.png", 30)])).is_empty(),
            "still growing"
        );
        assert_eq!(names(d.ready(&listing(&[("a.png", 30)]))), ["a.png"]);
        assert!(d
            .ready(&listing(&[(".a.png", 1), ("b.png.part", 1)]))
            .is_empty());
    }

    #[test]
    fn dir_frames_forget_removed_files_so_a_rewrite_is_a_new_frame() {
        let mut d = DirFrames::default();
        let l = listing(&[("a.png", 10)]);
        d.ready(&l);
        assert_eq!(names(d.ready(&l)), ["a.png"]);
        d.ready(&[]);
        d.ready(&l);
        assert_eq!(names(d.ready(&l)), ["a.png"]);
    }
}
