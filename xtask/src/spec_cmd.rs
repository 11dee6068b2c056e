//! `spec`: print (or write) the resolved experiment spec a `pipeline`
//! command would run, or the spec of an earlier run from its report.json.

use crate::spec_args::SpecArgs;
use anyhow::{bail, Context, Result};
use clap::Args;
use selfsup::spec::Experiment;
use std::path::PathBuf;

#[derive(Args)]
pub struct SpecCmdArgs {
    /// A pipeline preset to start from (as `pipeline --preset`).
    #[arg(long)]
    preset: Option<String>,
    #[command(flatten)]
    spec: SpecArgs,
    /// Instead: rebuild the spec of a run from its report.json (for runs
    /// written before experiment.toml existed).
    #[arg(long)]
    from_report: Option<PathBuf>,
    /// Write the spec to this file (which must not exist yet) instead of
    /// printing it.
    #[arg(long)]
    out: Option<PathBuf>,
}

pub fn run_spec(a: SpecCmdArgs) -> Result<()> {
    let spec = match &a.from_report {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            let report: serde_json::Value = serde_json::from_str(&text)
                .with_context(|| format!("{}: not valid JSON", path.display()))?;
            let e = Experiment::from_report(&report, path)?;
            e.validate()?;
            e
        }
        None => a.spec.resolve(a.preset.as_deref(), &[])?,
    };
    let text = spec.to_toml();
    match a.out {
        None => print!("{text}"),
        Some(out) if out.exists() => {
            bail!(
                "{} exists; give a new file (nothing was written)",
                out.display()
            )
        }
        Some(out) => {
            selfsup::core::fsutil::write_atomic(&out, text.as_bytes())?;
            println!("wrote {}", out.display());
        }
    }
    Ok(())
}
