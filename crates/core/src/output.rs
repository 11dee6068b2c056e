//! The output policy every command follows for its `--out`: it must be
//! absent, an empty directory, or a directory selfsup wrote; a user's own
//! files are never overwritten or deleted. A directory selfsup wrote is
//! replaced only with `--force`, or continued with `--resume`. The check
//! runs before any work, and creates the directory, so an `--out` that is a
//! file or cannot be written is found at once.
//!
//! A run directory carries [`MARKER_FILE`]: the command that wrote it,
//! its spec, and whether it finished ([`RunState`]). `--resume` continues
//! only a run of the same spec; another spec is refused, naming the first
//! setting that differs, unless the command allows it
//! ([`Policy::other_spec`]).

use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The marker selfsup leaves in every output directory it writes.
pub const MARKER_FILE: &str = ".selfsup-run.json";

/// Whether a run finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunState {
    /// Started and not (yet) finished: interrupted, failed or running.
    Running,
    /// Every output of the run was written.
    Complete,
}

/// The content of [`MARKER_FILE`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunMarker {
    /// Always `selfsup`.
    pub tool: String,
    /// The command that wrote the directory (`pipeline`, `pretrain`, ...).
    pub command: String,
    /// Whether it finished.
    pub state: RunState,
    /// The spec it ran (absent in markers of older runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<serde_json::Value>,
}

/// What an output path holds.
#[derive(Debug, Clone, PartialEq)]
pub enum Existing {
    /// Nothing.
    Absent,
    /// An empty directory.
    Empty,
    /// A directory selfsup wrote (`None`: one written before the marker
    /// existed, recognised by its `config.json` or `report.json`).
    Ours(Option<RunMarker>),
    /// A non-empty directory selfsup did not write.
    Foreign,
    /// A file, or something else that is not a directory.
    NotADirectory,
}

/// What a command may do with an output directory that selfsup wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Policy {
    /// Replace it.
    pub force: bool,
    /// Keep it and continue (the command decides what it reuses).
    pub resume: bool,
    /// With `resume`: continue it under another spec (the command reuses
    /// only what still matches) instead of refusing.
    pub other_spec: bool,
}

/// Reads the marker of `dir`, if it has one.
pub fn marker(dir: &Path) -> Option<RunMarker> {
    let bytes = std::fs::read(dir.join(MARKER_FILE)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Whether `dir` looks like output selfsup wrote before the marker existed:
/// a stage (`config.json` with a `stage` field) or a report (`report.json`
/// with a `config` field).
fn legacy_output(dir: &Path) -> bool {
    let has = |file: &str, field: &str| {
        std::fs::read(dir.join(file))
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .is_some_and(|v| v.get(field).is_some())
    };
    has("config.json", "stage") || has("report.json", "config")
}

/// What `path` holds now.
pub fn inspect(path: &Path) -> Result<Existing> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Existing::Absent),
        Err(e) => return Err(Error::io(path, e)),
    };
    if !meta.is_dir() {
        return Ok(Existing::NotADirectory);
    }
    let mut entries = std::fs::read_dir(path).map_err(|e| Error::io(path, e))?;
    if entries.next().is_none() {
        return Ok(Existing::Empty);
    }
    Ok(match marker(path) {
        Some(m) => Existing::Ours(Some(m)),
        None if legacy_output(path) => Existing::Ours(None),
        None => Existing::Foreign,
    })
}

/// Writes the marker of `dir` (atomically).
pub fn mark(
    dir: &Path,
    command: &str,
    state: RunState,
    spec: Option<&serde_json::Value>,
) -> Result<()> {
    let m = RunMarker {
        tool: "selfsup".into(),
        command: command.into(),
        state,
        spec: spec.cloned(),
    };
    crate::fsutil::write_json_atomic(&dir.join(MARKER_FILE), &m)
}

/// With `--resume`: refuses to continue, in `out`, a run whose marker
/// records a spec other than `spec`, naming the first differing setting.
fn check_same_spec(out: &Path, earlier: &RunMarker, spec: &serde_json::Value) -> Result<()> {
    use crate::jsondiff::{at, first_difference};
    let Some(old) = &earlier.spec else {
        return Ok(()); // an older run: nothing to compare with
    };
    match first_difference(old, spec, "") {
        None => Ok(()),
        Some(key) => Err(Error::invalid(
            out.join(MARKER_FILE).display().to_string(),
            format!(
                "--resume continues a run with the same spec, and {key} differs (it ran with {}, now {}); \
                 run it with the spec it had (its experiment.toml), or give --force to start over, or another --out",
                at(old, &key),
                at(spec, &key)
            ),
        )),
    }
}

/// Claims `out` for `command` under `policy` before any work: refuses a
/// file, a foreign directory, or an earlier selfsup output without
/// `--force`/`--resume` (and with `--resume`, one of another `spec` unless
/// [`Policy::other_spec`]); with `--force` empties it; creates it; removes
/// temporary directories an interrupted save left in it; and marks it
/// [`RunState::Running`] with `spec`.
pub fn claim(
    out: &Path,
    command: &str,
    policy: Policy,
    spec: Option<&serde_json::Value>,
) -> Result<()> {
    let refuse = |msg: String| Err(Error::invalid(out.display().to_string(), msg));
    match inspect(out)? {
        Existing::NotADirectory => {
            return refuse("--out exists and is not a directory; give a directory".into())
        }
        Existing::Foreign => {
            return refuse(
                "--out is a non-empty directory selfsup did not write; nothing in it is touched. \
                 Give an empty or new directory"
                    .into(),
            )
        }
        Existing::Ours(m) if !policy.force && !policy.resume => {
            let what = m.map_or("an earlier selfsup output".to_string(), |m| {
                format!("the output of an earlier `{}` ({:?})", m.command, m.state).to_lowercase()
            });
            return refuse(format!(
                "--out holds {what}; give --resume to continue it, --force to replace it, or another --out"
            ));
        }
        Existing::Ours(_) if policy.force && !policy.resume => {
            std::fs::remove_dir_all(out).map_err(|e| Error::io(out, e))?;
        }
        Existing::Ours(Some(earlier)) if !policy.other_spec => {
            if let Some(spec) = spec {
                check_same_spec(out, &earlier, spec)?;
            }
        }
        _ => {}
    }
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    crate::fsutil::remove_stale_temporaries(out)?;
    mark(out, command, RunState::Running, spec)
}

/// Marks `out` as [`RunState::Complete`], keeping the spec it was claimed
/// with.
pub fn complete(out: &Path, command: &str) -> Result<()> {
    let spec = marker(out).and_then(|m| m.spec);
    mark(out, command, RunState::Complete, spec.as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_users_files_are_never_touched() {
        let dir = tempfile::tempdir().unwrap();
        let theirs = dir.path().join("theirs");
        std::fs::create_dir(&theirs).unwrap();
        std::fs::write(theirs.join("thesis.tex"), "years of work").unwrap();
        for policy in [
            Policy::default(),
            Policy {
                force: true,
                ..Policy::default()
            },
        ] {
            let e = claim(&theirs, "pipeline", policy, None)
                .unwrap_err()
                .to_string();
            assert!(e.contains("did not write"), "{e}");
        }
        let file = dir.path().join("notes.txt");
        std::fs::write(&file, "mine").unwrap();
        let e = claim(
            &file,
            "pretrain",
            Policy {
                force: true,
                ..Policy::default()
            },
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("not a directory"), "{e}");
        assert_eq!(
            std::fs::read_to_string(theirs.join("thesis.tex")).unwrap(),
            "years of work"
        );
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "mine");
    }

    #[test]
    fn an_earlier_run_needs_resume_or_force() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("run");
        claim(&out, "pipeline", Policy::default(), None).unwrap();
        std::fs::write(out.join("report.json"), "{}").unwrap();
        complete(&out, "pipeline").unwrap();
        let e = claim(&out, "pipeline", Policy::default(), None)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("--resume") && e.contains("--force") && e.contains("complete"),
            "{e}"
        );
        claim(
            &out,
            "pipeline",
            Policy {
                resume: true,
                ..Policy::default()
            },
            None,
        )
        .unwrap();
        assert!(out.join("report.json").exists(), "--resume keeps the run");
        assert_eq!(marker(&out).unwrap().state, RunState::Running);
        claim(
            &out,
            "pipeline",
            Policy {
                force: true,
                ..Policy::default()
            },
            None,
        )
        .unwrap();
        assert!(!out.join("report.json").exists(), "--force replaces it");
        // Stale temporaries of an interrupted save go.
        let stale = out.join(".stage.tmp-999999");
        std::fs::create_dir(&stale).unwrap();
        claim(
            &out,
            "pipeline",
            Policy {
                resume: true,
                ..Policy::default()
            },
            None,
        )
        .unwrap();
        assert!(!stale.exists());
    }

    #[test]
    fn resume_continues_only_the_same_spec() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("run");
        let spec = serde_json::json!({"transfer": {"epochs": 5, "lr": 0.01}});
        claim(&out, "pipeline", Policy::default(), Some(&spec)).unwrap();
        complete(&out, "pipeline").unwrap();
        assert_eq!(marker(&out).unwrap().spec.as_ref(), Some(&spec));
        let resume = Policy {
            resume: true,
            ..Policy::default()
        };
        claim(&out, "pipeline", resume, Some(&spec)).unwrap();
        let mut other = spec.clone();
        other["transfer"]["epochs"] = serde_json::json!(6);
        let e = claim(&out, "pipeline", resume, Some(&other))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(".selfsup-run.json")
                && e.contains("transfer.epochs")
                && e.contains("5, now 6"),
            "{e}"
        );
        assert_eq!(
            marker(&out).unwrap().spec.as_ref(),
            Some(&spec),
            "untouched"
        );
        let reuse = Policy {
            other_spec: true,
            ..resume
        };
        claim(&out, "pipeline", reuse, Some(&other)).unwrap();
        assert_eq!(marker(&out).unwrap().spec.as_ref(), Some(&other));
    }

    #[test]
    fn outputs_from_before_the_marker_count_as_ours() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.json"), r#"{"stage": "pretrain"}"#).unwrap();
        assert_eq!(inspect(dir.path()).unwrap(), Existing::Ours(None));
    }
}
