//! Where a pipeline run keeps its files, in one place for the pipeline,
//! `--resume` and `publish`:
//!
//! ```text
//! <root>/experiment.toml, report.json, report.md
//! <root>/figures/<method>-<kind>.png
//! <root>/pretrain-<method>/                 (shared pretraining)
//! <root>/seed<s>/pretrain-<method>/         (pretraining per seed)
//! <root>/seed<s>/k<K>/<method>-<protocol>/  (each transfer stage)
//! ```

use std::path::{Path, PathBuf};

/// The spec that reproduces a run.
pub const EXPERIMENT_FILE: &str = "experiment.toml";
/// The machine-readable report.
pub const REPORT_FILE: &str = "report.json";
/// The human-readable report.
pub const REPORT_MD_FILE: &str = "report.md";

/// The directory layout of one pipeline run.
#[derive(Debug, Clone)]
pub struct RunLayout {
    root: PathBuf,
    per_seed: bool,
}

impl RunLayout {
    /// The layout under `root`; `per_seed` when every seed pretrains its
    /// own encoder.
    pub fn new(root: impl Into<PathBuf>, per_seed: bool) -> Self {
        Self {
            root: root.into(),
            per_seed,
        }
    }

    /// The run directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `experiment.toml`.
    pub fn experiment(&self) -> PathBuf {
        self.root.join(EXPERIMENT_FILE)
    }

    /// `report.json`.
    pub fn report(&self) -> PathBuf {
        self.root.join(REPORT_FILE)
    }

    /// `report.md`.
    pub fn report_md(&self) -> PathBuf {
        self.root.join(REPORT_MD_FILE)
    }

    /// The pretraining of `method` that `seed` uses.
    pub fn pretrain(&self, seed: u64, method: &str) -> PathBuf {
        let name = format!("pretrain-{method}");
        if self.per_seed {
            self.seed(seed).join(name)
        } else {
            self.root.join(name)
        }
    }

    /// `seed<s>/`.
    pub fn seed(&self, seed: u64) -> PathBuf {
        self.root.join(format!("seed{seed}"))
    }

    /// The stage directory of `method` under `protocol` for `seed` and K.
    pub fn stage(&self, seed: u64, k: usize, method: &str, protocol: &str) -> PathBuf {
        self.seed(seed)
            .join(format!("k{k}"))
            .join(format!("{method}-{protocol}"))
    }

    /// A figure, as the path relative to the root (what the report lists)
    /// and the full path.
    pub fn figure(&self, method: &str, kind: &str) -> (String, PathBuf) {
        let rel = format!("figures/{method}-{kind}.png");
        let full = self.root.join(&rel);
        (rel, full)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_follow_the_documented_layout() {
        let l = RunLayout::new("/r", false);
        assert_eq!(l.pretrain(2, "simclr"), Path::new("/r/pretrain-simclr"));
        assert_eq!(
            l.stage(1, 10, "scratch", "lpft"),
            Path::new("/r/seed1/k10/scratch-lpft")
        );
        assert_eq!(l.figure("rotation", "loss").0, "figures/rotation-loss.png");
        let p = RunLayout::new("/r", true);
        assert_eq!(
            p.pretrain(2, "simclr"),
            Path::new("/r/seed2/pretrain-simclr")
        );
    }
}
