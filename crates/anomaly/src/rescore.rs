//! A run's per-image scores read back from its `scores.csv`
//! ([`crate::report::scores_csv`]), so that score combinations can be
//! evaluated without training again: the `knn-all+pixel` score under other
//! pixel weights, or any single score's AUROC.

use crate::detector::fuse;
use crate::metrics::auroc;
use selfsup_core::metrics::mean_std;
use selfsup_core::{Error, Result};
use std::path::Path;

/// The scored images of one (task, seed) run.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoredRun {
    /// What was normal.
    pub task: String,
    /// Detector seed.
    pub seed: u64,
    /// Whether each scored image is an anomaly.
    pub anomalous: Vec<bool>,
    /// One column per score, in the file's order: (name, values).
    pub columns: Vec<(String, Vec<f64>)>,
}

impl ScoredRun {
    /// The values of the score `name`, or an error naming the file.
    pub fn column(&self, name: &str, path: &Path) -> Result<&[f64]> {
        self.columns
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
            .ok_or_else(|| Error::format(path, format!("no {name:?} column")))
    }
}

/// Columns before the scores.
const FIXED: [&str; 5] = ["task", "seed", "item", "group", "anomalous"];

/// Reads `scores.csv`; runs in first-seen order.
pub fn read_scores_csv(path: &Path) -> Result<Vec<ScoredRun>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let mut lines = text.lines().enumerate();
    let header = lines
        .next()
        .map(|(_, l)| split_csv(l))
        .ok_or_else(|| Error::format(path, "empty file; expected a header line"))?;
    if header.len() <= FIXED.len() || header[..FIXED.len()] != FIXED {
        return Err(Error::format(
            path,
            format!(
                "header must start with {} and name at least one score",
                FIXED.join(",")
            ),
        ));
    }
    let names = &header[FIXED.len()..];
    let mut runs: Vec<ScoredRun> = Vec::new();
    for (i, line) in lines.filter(|(_, l)| !l.is_empty()) {
        let bad = |msg: String| Error::format(path, format!("line {}: {msg}", i + 1));
        let f = split_csv(line);
        if f.len() != header.len() {
            return Err(bad(format!(
                "{} fields, header has {}",
                f.len(),
                header.len()
            )));
        }
        let seed: u64 = f[1]
            .parse()
            .map_err(|_| bad(format!("seed {:?} is not a count", f[1])))?;
        let anomalous = match f[4].as_str() {
            "0" => false,
            "1" => true,
            other => return Err(bad(format!("anomalous is {other:?}, not 0 or 1"))),
        };
        let pos = match runs.iter().position(|r| r.task == f[0] && r.seed == seed) {
            Some(p) => p,
            None => {
                runs.push(ScoredRun {
                    task: f[0].clone(),
                    seed,
                    anomalous: Vec::new(),
                    columns: names.iter().map(|n| (n.clone(), Vec::new())).collect(),
                });
                runs.len() - 1
            }
        };
        let run = &mut runs[pos];
        run.anomalous.push(anomalous);
        for ((name, col), v) in run.columns.iter_mut().zip(&f[FIXED.len()..]) {
            col.push(
                v.parse()
                    .map_err(|_| bad(format!("{name} {v:?} is not a number")))?,
            );
        }
    }
    if runs.is_empty() {
        return Err(Error::format(path, "no scored images"));
    }
    Ok(runs)
}

/// AUROC of `ln knn-all + w ln pixel-knn` on each run.
pub fn fused_aurocs(runs: &[ScoredRun], w: f64, path: &Path) -> Result<Vec<f64>> {
    runs.iter()
        .map(|r| {
            let s = fuse(r.column("knn-all", path)?, r.column("pixel-knn", path)?, w);
            Ok(auroc(&s, &r.anomalous))
        })
        .collect()
}

/// A markdown table of AUROCs: one row per score column of the file and one
/// per pixel weight `w` of `knn-all+pixel`; columns: each task's AUROC
/// (mean over seeds), the mean over tasks, and its spread (standard
/// deviation over seeds).
pub fn table(runs: &[ScoredRun], weights: &[f64], path: &Path) -> Result<String> {
    let mut rows: Vec<(String, Vec<f64>)> = runs[0]
        .columns
        .iter()
        .map(|(name, _)| {
            let a = runs
                .iter()
                .map(|r| Ok(auroc(r.column(name, path)?, &r.anomalous)))
                .collect::<Result<Vec<f64>>>()?;
            Ok((name.clone(), a))
        })
        .collect::<Result<_>>()?;
    for &w in weights {
        rows.push((
            format!("knn-all+pixel, w = {w}"),
            fused_aurocs(runs, w, path)?,
        ));
    }
    let mut tasks: Vec<&str> = Vec::new();
    let mut seeds: Vec<u64> = Vec::new();
    for r in runs {
        if !tasks.contains(&r.task.as_str()) {
            tasks.push(&r.task);
        }
        if !seeds.contains(&r.seed) {
            seeds.push(r.seed);
        }
    }
    let mut md = format!("| score | {} | mean | ± (seeds) |\n", tasks.join(" | "));
    md.push_str(&format!("|---|{}---|---|\n", "---|".repeat(tasks.len())));
    for (name, a) in rows {
        let of = |keep: &dyn Fn(&ScoredRun) -> bool| -> Vec<f64> {
            runs.iter()
                .zip(&a)
                .filter(|(r, _)| keep(r))
                .map(|(_, &v)| v)
                .collect()
        };
        let per_task: Vec<f64> = tasks
            .iter()
            .map(|t| mean_std(&of(&|r| r.task == *t)).0)
            .collect();
        let per_seed: Vec<f64> = seeds
            .iter()
            .map(|s| mean_std(&of(&|r| r.seed == *s)).0)
            .collect();
        let cells: Vec<String> = per_task.iter().map(|v| format!("{v:.4}")).collect();
        let (mean, spread) = mean_std(&per_seed);
        md.push_str(&format!(
            "| {name} | {} | {mean:.4} | {spread:.4} |\n",
            cells.join(" | ")
        ));
    }
    Ok(md)
}

/// One CSV line's fields; a field in double quotes may hold commas and
/// doubled quotes.
fn split_csv(line: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        let field = out.last_mut().expect("never empty");
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                field.push('"');
                chars.next();
            }
            ('"', _) => quoted = !quoted,
            (',', false) => out.push(String::new()),
            _ => field.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(text: &str) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("scores.csv");
        std::fs::write(&p, text).unwrap();
        (dir, p)
    }

    #[test]
    fn reads_runs_and_fuses_their_scores() {
        let (_d, p) = write(
            "task,seed,item,group,anomalous,knn-all,pixel-knn\n\
             \"a,b\",0,0,x,0,0.1,1.0\n\
             \"a,b\",0,1,y,1,0.2,2.0\n\
             \"a,b\",0,2,y,1,0.05,4.0\n",
        );
        let runs = read_scores_csv(&p).unwrap();
        assert_eq!(runs.len(), 1);
        assert_eq!((runs[0].task.as_str(), runs[0].seed), ("a,b", 0));
        assert_eq!(runs[0].anomalous, [false, true, true]);
        // knn-all alone (w = 0) ranks item 2 below the normal item 0: the
        // anomalies outscore it in 1 of 2 pairs.
        assert_eq!(fused_aurocs(&runs, 0.0, &p).unwrap(), [0.5]);
        // w = 1: the normal item scores ln 0.1, the anomalies ln 0.4 and
        // ln 0.2: both above it.
        assert_eq!(fused_aurocs(&runs, 1.0, &p).unwrap(), [1.0]);
    }

    #[test]
    fn the_table_averages_tasks_over_seeds() {
        let (_d, p) = write(
            "task,seed,item,group,anomalous,knn-all,pixel-knn\n\
             a,0,0,g,0,0.1,1.0\na,0,1,g,1,0.2,2.0\na,0,2,g,1,0.05,4.0\n\
             a,1,0,g,0,0.1,1.0\na,1,1,g,1,0.2,2.0\na,1,2,g,1,0.3,4.0\n",
        );
        let runs = read_scores_csv(&p).unwrap();
        let md = table(&runs, &[1.0], &p).unwrap();
        let lines: Vec<&str> = md.lines().collect();
        assert_eq!(lines[0], "| score | a | mean | ± (seeds) |");
        // knn-all: seed 0 scores 0.5, seed 1 scores 1.0.
        let spread = (0.125f64).sqrt();
        assert_eq!(
            lines[2],
            format!("| knn-all | 0.7500 | 0.7500 | {spread:.4} |")
        );
        assert_eq!(
            lines[4],
            "| knn-all+pixel, w = 1 | 1.0000 | 1.0000 | 0.0000 |"
        );
    }

    #[test]
    fn bad_files_are_named_with_the_line() {
        let (_d, p) = write("task,seed\n");
        let e = read_scores_csv(&p).unwrap_err().to_string();
        assert!(e.contains("scores.csv") && e.contains("header"), "{e}");
        let (_d, p) = write("task,seed,item,group,anomalous,knn\nt,0,0,g,2,0.5\n");
        let e = read_scores_csv(&p).unwrap_err().to_string();
        assert!(e.contains("line 2") && e.contains("anomalous"), "{e}");
        let (_d, p) = write("task,seed,item,group,anomalous,knn\nt,0,0,g,1,abc\n");
        let e = read_scores_csv(&p).unwrap_err().to_string();
        assert!(e.contains("line 2") && e.contains("knn"), "{e}");
        let (_d, p) = write("task,seed,item,group,anomalous,knn\nt,0,0,g,1,0.3\n");
        let runs = read_scores_csv(&p).unwrap();
        let e = fused_aurocs(&runs, 1.0, &p).unwrap_err().to_string();
        assert!(e.contains("knn-all"), "{e}");
    }
}
