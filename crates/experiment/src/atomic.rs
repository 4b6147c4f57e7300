use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// `.<name>.<pid>.tmp` in the folder of `path`: the same file system, so the rename is atomic.
fn temporary_beside(path: &Path) -> PathBuf {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    dir.join(format!(".{name}.{}.tmp", std::process::id()))
}

/// Write `bytes` to `path` atomically: write a temporary file beside it, flush it to disk,
/// then rename it over `path`. A crash leaves either the old file or the new one, never a
/// torn one.
pub fn atomic_write(path: &Path, bytes: &[u8]) -> Result<()> {
    atomic_write_with(path, |file| file.write_all(bytes).map_err(Into::into))
}

/// Like [`atomic_write`], with the content produced by `fill` into the temporary file.
pub fn atomic_write_with(
    path: &Path,
    fill: impl FnOnce(&mut std::fs::File) -> Result<()>,
) -> Result<()> {
    let tmp = temporary_beside(path);
    let result = (|| {
        let mut file = std::fs::File::create(&tmp)
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        fill(&mut file).with_context(|| format!("cannot write {}", tmp.display()))?;
        file.sync_all()
            .with_context(|| format!("cannot flush {}", tmp.display()))?;
        std::fs::rename(&tmp, path)
            .with_context(|| format!("cannot rename {} to {}", tmp.display(), path.display()))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Write several files so that either all of them are replaced or none: every temporary file
/// is written and flushed first (where a full disk or an I/O error shows), then all are
/// renamed. Used for the two metrics files, which must hold the same rows.
pub fn atomic_write_all(files: &[(&Path, &[u8])]) -> Result<()> {
    let mut written = Vec::new();
    let result = (|| {
        for (path, bytes) in files {
            let tmp = temporary_beside(path);
            written.push(tmp.clone());
            let mut file = std::fs::File::create(&tmp)
                .with_context(|| format!("cannot write {}", tmp.display()))?;
            file.write_all(bytes)
                .and_then(|()| file.sync_all())
                .with_context(|| format!("cannot write {}", tmp.display()))?;
        }
        for (tmp, (path, _)) in written.iter().zip(files) {
            std::fs::rename(tmp, path).with_context(|| {
                format!("cannot rename {} to {}", tmp.display(), path.display())
            })?;
        }
        Ok(())
    })();
    if result.is_err() {
        for tmp in &written {
            let _ = std::fs::remove_file(tmp);
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_content_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("a.json");
        atomic_write(&path, b"one").expect("write");
        atomic_write(&path, b"two").expect("write");
        assert_eq!(std::fs::read(&path).expect("read"), b"two");
        assert_eq!(std::fs::read_dir(dir.path()).expect("ls").count(), 1);
    }

    #[test]
    fn a_failing_writer_keeps_the_old_file() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("a.json");
        atomic_write(&path, b"old").expect("write");
        let err = atomic_write_with(&path, |_| anyhow::bail!("disk full"));
        assert!(err.is_err());
        assert_eq!(std::fs::read(&path).expect("read"), b"old");
        assert_eq!(std::fs::read_dir(dir.path()).expect("ls").count(), 1);
    }
}
