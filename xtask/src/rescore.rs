//! `rescore`: an anomaly run's AUROCs recomputed from its `scores.csv`,
//! with the `knn-all+pixel` score under other pixel weights.

use anyhow::Result;
use clap::Args;
use selfsup::anomaly::detector::check_non_negative;
use selfsup::anomaly::rescore::{read_scores_csv, table};
use std::path::PathBuf;

#[derive(Args)]
pub struct RescoreArgs {
    /// A `cargo xtask anomaly` run's scores.csv (or the run directory).
    #[arg(long)]
    scores: PathBuf,
    /// Pixel weights of the knn-all+pixel score to evaluate, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "0.5,1,2,3,4")]
    pixel_weights: Vec<f64>,
}

/// Prints the markdown table of every score and pixel weight.
pub fn run(a: RescoreArgs) -> Result<()> {
    let path = if a.scores.is_dir() {
        a.scores.join("scores.csv")
    } else {
        a.scores
    };
    for &w in &a.pixel_weights {
        check_non_negative("--pixel-weights", w)?;
    }
    let runs = read_scores_csv(&path)?;
    print!("{}", table(&runs, &a.pixel_weights, &path)?);
    Ok(())
}
