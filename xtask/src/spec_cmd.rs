//! `spec`: print (or write) the resolved experiment spec a `pipeline`
//! command would run, or the spec of an earlier run from its report.json.

use crate::spec_args::SpecArgs;
use anyhow::{bail, Context, Result};
use clap::Args;
use selfsup::spec::{AnomalySpec, Experiment};
use std::path::{Path, PathBuf};

#[derive(Args)]
pub struct SpecCmdArgs {
    /// A pipeline preset to start from (as `pipeline --preset`).
    #[arg(long)]
    preset: Option<String>,
    #[command(flatten)]
    spec: SpecArgs,
    /// Instead: rebuild the spec of a run (pipeline, anomaly or text) from
    /// its report.json, for runs written before experiment.toml existed.
    #[arg(long)]
    from_report: Option<PathBuf>,
    /// Write the spec to this file (which must not exist yet) instead of
    /// printing it.
    #[arg(long)]
    out: Option<PathBuf>,
}

/// The spec of the run whose report is at `path`: a pipeline, anomaly or
/// text report, told apart by their fields.
fn from_report(path: &Path) -> Result<String> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let report: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("{}: not valid JSON", path.display()))?;
    if report.get("pretext").is_some() {
        let e = Experiment::from_report(&report, path)?;
        e.validate()?;
        Ok(e.to_toml())
    } else if report.get("transformations").is_some() {
        Ok(AnomalySpec::from_report(&report, path)?.to_toml())
    } else if report.get("tokens_per_s").is_some() {
        let cfg: selfsup::text::train::TextConfig =
            serde_json::from_value(report["config"].clone())
                .with_context(|| format!("{}: config", path.display()))?;
        Ok(toml::to_string(&cfg)?)
    } else {
        bail!(
            "{}: not a report of pipeline, anomaly or text (no pretext, transformations or tokens_per_s)",
            path.display()
        )
    }
}

pub fn run_spec(a: SpecCmdArgs) -> Result<()> {
    let text = match &a.from_report {
        Some(path) => from_report(path)?,
        None => a.spec.resolve(a.preset.as_deref(), &[])?.to_toml(),
    };
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
