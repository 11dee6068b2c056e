//! A whole run driven from Rust: read the shipped default spec, shrink it
//! to a minute's work, run pretrain -> transfer -> evaluate, print the table.
//!
//! Run: `cargo run --release --example spec_run`

use candle_core::Device;
use selfsup::pipeline::{run, PipelineOptions};
use selfsup::spec::Experiment;
use std::path::Path;

fn main() -> selfsup::core::Result<()> {
    let defaults = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/default.toml");
    let mut spec = Experiment::from_file(&defaults)?;
    spec.data.max_train = Some(2000);
    spec.data.max_test = Some(1000);
    spec.split.seeds = vec![0];
    spec.split.unlabeled = 1500;
    spec.methods.rotation.epochs = 1;
    spec.transfer.epochs = 10;
    spec.protocols.run = vec!["finetune".into(), "linear".into(), "knn".into()];
    spec.validate()?;
    let out = Path::new("models/examples/spec-run");
    let report = run(&PipelineOptions {
        spec,
        out: out.to_path_buf(),
        device: Device::Cpu,
        quiet: true,
        resume: false,
        reuse_pretraining: false,
        checkpoint_every: 1,
        // Running the example again replaces its own earlier output.
        force: true,
        embedding: Default::default(),
    })?;
    println!("{}", report.to_markdown());
    println!(
        "the spec of this run: {}",
        out.join("experiment.toml").display()
    );
    Ok(())
}
