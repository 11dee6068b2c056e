//! `cargo xtask bench --rounds N`: the PyTorch rows and ours, alternated N
//! times, and each of our rows' ratio to PyTorch summarised over rounds.
//!
//! On a shared machine the speed drifts within minutes; with one round, a
//! slow spell during our rows (or PyTorch's) decides the ratio. Alternating
//! the two and taking the median of the per-round ratios lets each round
//! compare rows measured minutes apart at most, and shows the spread.

use selfsup::bench::{median_spread, BenchRow};
use serde::Serialize;

/// A row and the round (1-based) it was measured in.
pub struct Measured {
    /// 1 to `--rounds`.
    pub round: usize,
    /// The measurement.
    pub row: BenchRow,
}

/// One of our rows against PyTorch's same model and objective, over rounds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RatioSummary {
    /// Backbone name.
    pub model: String,
    /// Pretext whose step is timed.
    pub objective: String,
    /// Our implementation (`fast`, `stock`, ...).
    #[serde(rename = "impl")]
    pub implementation: String,
    /// Our images/s over PyTorch's, in each round that has both rows.
    pub per_round: Vec<f64>,
    /// Median of `per_round`.
    pub median: f64,
    /// Smallest and largest of `per_round`.
    pub min: f64,
    /// See `min`.
    pub max: f64,
}

/// PyTorch's images/s for `row`'s model and objective in round `round`.
pub fn pytorch_in_round(all: &[Measured], round: usize, row: &BenchRow) -> Option<f64> {
    all.iter()
        .find(|m| {
            m.round == round
                && m.row.implementation == "pytorch"
                && m.row.model == row.model
                && m.row.objective == row.objective
        })
        .map(|m| m.row.images_per_s)
}

/// The ratio of each of our (model, objective, impl) rows to PyTorch's,
/// round by round, in the order the rows first appear; rows without a
/// PyTorch counterpart in any round are left out.
pub fn ratio_summaries(all: &[Measured]) -> Vec<RatioSummary> {
    let mut out: Vec<RatioSummary> = Vec::new();
    for m in all.iter().filter(|m| m.row.implementation != "pytorch") {
        let Some(torch) = pytorch_in_round(all, m.round, &m.row) else {
            continue;
        };
        let ratio = m.row.images_per_s / torch;
        let same = |s: &RatioSummary| {
            s.model == m.row.model
                && s.objective == m.row.objective
                && s.implementation == m.row.implementation
        };
        match out.iter_mut().find(|s| same(s)) {
            Some(s) => s.per_round.push(ratio),
            None => out.push(RatioSummary {
                model: m.row.model.clone(),
                objective: m.row.objective.clone(),
                implementation: m.row.implementation.clone(),
                per_round: vec![ratio],
                median: 0.0,
                min: 0.0,
                max: 0.0,
            }),
        }
    }
    for s in &mut out {
        s.median = median_spread(&s.per_round).0;
        s.min = s.per_round.iter().copied().fold(f64::INFINITY, f64::min);
        s.max = s
            .per_round
            .iter()
            .copied()
            .fold(f64::NEG_INFINITY, f64::max);
    }
    out
}

/// The summary as a markdown table.
pub fn print_summaries(summaries: &[RatioSummary]) {
    println!();
    println!("| model | objective | impl | vs pytorch, per round | median | min | max |");
    println!("|---|---|---|---|---|---|---|");
    for s in summaries {
        let per: Vec<String> = s.per_round.iter().map(|r| format!("{r:.2}")).collect();
        println!(
            "| {} | {} | {} | {} | {:.2} | {:.2} | {:.2} |",
            s.model,
            s.objective,
            s.implementation,
            per.join(", "),
            s.median,
            s.min,
            s.max
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(model: &str, imp: &str, ips: f64) -> BenchRow {
        BenchRow {
            model: model.into(),
            implementation: imp.into(),
            objective: "rotation".into(),
            batch: 8,
            images_per_s: ips,
            spread: 0.0,
            step_ms: 1.0,
            gflops: None,
            gpu_mem_mb: None,
            phases_ms: None,
            tokens_per_s: None,
            seq_len: None,
        }
    }

    #[test]
    fn ratios_pair_rows_of_the_same_round_and_take_the_median() {
        let all = vec![
            Measured {
                round: 1,
                row: row("convnet", "pytorch", 100.0),
            },
            Measured {
                round: 1,
                row: row("convnet", "fast", 120.0),
            },
            Measured {
                round: 1,
                row: row("resnet18", "fast", 10.0),
            },
            Measured {
                round: 2,
                row: row("convnet", "pytorch", 200.0),
            },
            Measured {
                round: 2,
                row: row("convnet", "fast", 100.0),
            },
            Measured {
                round: 3,
                row: row("convnet", "pytorch", 100.0),
            },
            Measured {
                round: 3,
                row: row("convnet", "fast", 90.0),
            },
        ];
        let s = ratio_summaries(&all);
        // resnet18 has no PyTorch row: no ratio.
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].per_round, vec![1.2, 0.5, 0.9]);
        assert_eq!(s[0].median, 0.9);
        assert_eq!((s[0].min, s[0].max), (0.5, 1.2));
    }
}
