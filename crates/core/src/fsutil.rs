//! Atomic file and directory writes.
//!
//! A killed run must never leave a half-written checkpoint or report: files
//! are written to a temporary name in the same directory and renamed into
//! place; whole stage directories are assembled beside the target and swapped
//! in.

use crate::{Error, Result};
use std::io::Write;
use std::path::{Path, PathBuf};

fn tmp_sibling(path: &Path, tag: &str) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.{tag}-{}", std::process::id()))
}

/// Writes `bytes` to `path` atomically (temp file + fsync + rename), creating
/// parent directories as needed.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    }
    let tmp = tmp_sibling(path, "tmp");
    let res = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = res {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io(path, e));
    }
    Ok(())
}

/// Builds directory `dir` atomically: `fill` writes into a fresh temporary
/// directory beside it, which then replaces `dir` (any previous content is
/// removed only after the new one is complete). If `fill` fails, `dir` is
/// left as it was.
pub fn write_dir_atomic(dir: &Path, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let parent = dir
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    let tmp = tmp_sibling(dir, "tmp");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    if let Err(e) = fill(&tmp) {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    let old = tmp_sibling(dir, "old");
    let had_old = dir.exists();
    if had_old {
        std::fs::rename(dir, &old).map_err(|e| Error::io(dir, e))?;
    }
    if let Err(e) = std::fs::rename(&tmp, dir) {
        if had_old {
            let _ = std::fs::rename(&old, dir);
        }
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(Error::io(dir, e));
    }
    if had_old {
        let _ = std::fs::remove_dir_all(&old);
    }
    Ok(())
}

/// The process id in a temporary name `.NAME.tmp-PID` / `.NAME.old-PID`.
fn temporary_pid(name: &str) -> Option<u32> {
    if !name.starts_with('.') {
        return None;
    }
    let (_, pid) = name.rsplit_once('-')?;
    let stem = &name[..name.len() - pid.len() - 1];
    (stem.ends_with(".tmp") || stem.ends_with(".old"))
        .then(|| pid.parse().ok())
        .flatten()
}

/// Removes, anywhere under `dir`, the temporaries that an interrupted
/// atomic write left behind (`.NAME.tmp-PID`, `.NAME.old-PID` of a process
/// that no longer runs).
pub fn remove_stale_temporaries(dir: &Path) -> Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io(dir, e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let path = entry.path();
        let file_type = entry.file_type().map_err(|e| Error::io(&path, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        match temporary_pid(&name) {
            Some(pid)
                if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() =>
            {
                let removed = if file_type.is_dir() {
                    std::fs::remove_dir_all(&path)
                } else {
                    std::fs::remove_file(&path)
                };
                removed.map_err(|e| Error::io(&path, e))?;
            }
            None if file_type.is_dir() => remove_stale_temporaries(&path)?,
            _ => {}
        }
    }
    Ok(())
}

/// Serialises `value` as pretty JSON into `path` atomically.
pub fn write_json_atomic<T: serde::Serialize>(path: &Path, value: &T) -> Result<()> {
    let mut bytes = serde_json::to_vec_pretty(value)
        .map_err(|e| Error::format(path, format!("cannot serialise JSON: {e}")))?;
    bytes.push(b'\n');
    write_atomic(path, &bytes)
}

/// Reads and parses a JSON file, naming the file in any error.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_slice(&bytes).map_err(|e| Error::format(path, format!("invalid JSON: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_dir_keeps_old_content_on_failure() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("stage");
        write_dir_atomic(&dir, |d| write_atomic(&d.join("a.txt"), b"one")).unwrap();
        let err = write_dir_atomic(&dir, |d| {
            write_atomic(&d.join("a.txt"), b"two")?;
            Err(Error::invalid("x", "boom"))
        });
        assert!(err.is_err());
        assert_eq!(std::fs::read(dir.join("a.txt")).unwrap(), b"one");
        // no temp directories left behind
        let names: Vec<_> = std::fs::read_dir(root.path()).unwrap().collect();
        assert_eq!(names.len(), 1);
        write_dir_atomic(&dir, |d| write_atomic(&d.join("b.txt"), b"three")).unwrap();
        assert!(!dir.join("a.txt").exists());
        assert_eq!(std::fs::read(dir.join("b.txt")).unwrap(), b"three");
    }

    #[test]
    fn read_json_names_the_file() {
        let root = tempfile::tempdir().unwrap();
        let p = root.path().join("c.json");
        std::fs::write(&p, b"{nope").unwrap();
        let e = read_json::<serde_json::Value>(&p).unwrap_err().to_string();
        assert!(e.contains("c.json") && e.contains("invalid JSON"), "{e}");
    }
}
