//! `cargo xtask publish`: turn a run directory into a Hugging Face model
//! repository — `model.safetensors`, `config.json` (and `tokenizer.json`
//! for text runs) and a `README.md` model card whose YAML front matter and
//! tables come from the run's report — and upload it in one commit.
//!
//! Runs understood:
//! - a pipeline run (`report.json` + `pretrain-<method>/`): the pretrained
//!   backbone of the method with the best gain over scratch (or `--method`);
//! - a text run (`report.json` + `checkpoint/`, a `BertForMaskedLM` folder);
//! - a single stage directory (`config.json` + `model.safetensors`, e.g. a
//!   `pretrain` or `transfer` output), with a `report.json` beside or above
//!   it used for metrics when present.

use crate::catalog;
use crate::client::{client, hub_error, parse_repo_id};
use selfsup_core::fsutil::{read_json, write_atomic, write_dir_atomic};
use selfsup_core::{Error, Result};
use serde_json::Value;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// What to publish and where.
#[derive(Debug, Clone)]
pub struct PublishOptions {
    /// The run directory.
    pub run: PathBuf,
    /// `user/name` of the model repository.
    pub repo: String,
    /// Create the repository as private.
    pub private: bool,
    /// Only write the Hub folder.
    pub dry_run: bool,
    /// Where the Hub folder goes (default `<run>/hub`).
    pub out: Option<PathBuf>,
    /// Pipeline runs: which method's pretrained backbone (default: best gain).
    pub method: Option<String>,
}

/// What was written (and uploaded).
#[derive(Debug, Clone)]
pub struct PublishOutcome {
    /// The Hub folder on disk.
    pub folder: PathBuf,
    /// Files in it, sorted.
    pub files: Vec<String>,
    /// URL of the commit, when uploaded.
    pub commit_url: Option<String>,
}

/// The pieces of a run that go to the Hub.
#[derive(Debug, Clone)]
struct RunParts {
    /// Checkpoint directory (config.json + model.safetensors [+ tokenizer.json]).
    checkpoint: PathBuf,
    /// The report the metrics come from, if any.
    report: Option<Value>,
    /// `rotation`, `simclr`, ..., or `masked-lm`.
    method: String,
    /// The checkpoint's own config.json.
    config: Value,
}

/// The shared pretraining of `method` in a pipeline run.
fn method_dir(run: &Path, method: &str) -> PathBuf {
    selfsup_core::layout::RunLayout::new(run, false).pretrain(0, method)
}

fn locate(run: &Path, method: Option<&str>) -> Result<RunParts> {
    if !run.is_dir() {
        return Err(Error::invalid(
            "--run",
            format!("{} is not a directory", run.display()),
        ));
    }
    let report_path = run.join("report.json");
    let report: Option<Value> = if report_path.is_file() {
        Some(read_json(&report_path)?)
    } else {
        None
    };
    // The method is known here except for a stage directory, whose
    // config.json names it.
    let (checkpoint, method) = if run.join("checkpoint/config.json").is_file() {
        (run.join("checkpoint"), Some("masked-lm".to_string()))
    } else if run.join("model.safetensors").is_file() {
        (run.to_path_buf(), None)
    } else {
        let report = report.as_ref().ok_or_else(|| {
            Error::format(
                run,
                "not a run: no report.json, no checkpoint/, no model.safetensors",
            )
        })?;
        let m = match method {
            Some(m) => m.to_string(),
            None => best_method(report).ok_or_else(|| {
                Error::format(
                    &report_path,
                    "no pretrained method in this report (only scratch?); pass --method or publish a stage directory",
                )
            })?,
        };
        let dir = method_dir(run, &m);
        if !dir.join("model.safetensors").is_file() {
            return Err(Error::format(
                &dir,
                format!("no model.safetensors for method `{m}` in this run"),
            ));
        }
        (dir, Some(m))
    };
    for f in ["config.json", "model.safetensors"] {
        if !checkpoint.join(f).is_file() {
            return Err(Error::format(checkpoint.join(f), "missing"));
        }
    }
    let config: Value = read_json(&checkpoint.join("config.json"))?;
    if let (Some(r), Some(m)) = (&report, &method) {
        check_weights_match_report(r, m, &config, &checkpoint)?;
    }
    let method = method.unwrap_or_else(|| {
        config["method"]
            .as_str()
            .unwrap_or("supervised")
            .to_string()
    });
    Ok(RunParts {
        checkpoint,
        report,
        method,
        config,
    })
}

/// Refuses weights that are not the ones the report describes: the
/// pretraining's held-out loss in its config.json must be the one in the
/// report's `pretraining` row of that method and seed (a run changed after
/// its report was written would otherwise ship new weights with old
/// accuracies).
fn check_weights_match_report(
    report: &Value,
    method: &str,
    config: &Value,
    checkpoint: &Path,
) -> Result<()> {
    let Some(rows) = report["pretraining"].as_array() else {
        return Ok(());
    };
    let seed = config["seed"].as_u64();
    let row = rows
        .iter()
        .find(|r| r["method"].as_str() == Some(method) && r["seed"].as_u64() == seed);
    let (Some(row), Some(have)) = (row, config["metrics"]["val_loss"].as_f64()) else {
        return Ok(());
    };
    match row["val_loss"].as_f64() {
        Some(want) if want != have => Err(Error::format(
            checkpoint.join("config.json"),
            format!(
                "these weights (held-out loss {have}) are not the ones report.json describes ({want}); \
                 the run was changed after its report was written: run it again before publishing"
            ),
        )),
        _ => Ok(()),
    }
}

/// The pretrained method with the largest gain over scratch in `gains`.
fn best_method(report: &Value) -> Option<String> {
    let gains = report["gains"].as_array()?;
    gains
        .iter()
        .filter_map(|g| Some((g["method"].as_str()?, g["gain_vs_scratch_points"].as_f64()?)))
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(m, _)| m.to_string())
        .or_else(|| {
            report["pretext"]
                .as_array()?
                .first()?
                .as_str()
                .map(str::to_string)
        })
}

/// A YAML scalar: JSON's double-quoted strings are valid YAML.
fn y(s: &str) -> String {
    serde_json::to_string(s).expect("strings serialise")
}

/// The Hub dataset id a report's dataset name corresponds to, if known
/// (`celeba:Eyeglasses` and class selections like `svhn[1,7]` name their
/// source dataset).
fn hub_dataset(name: &str) -> Option<&'static str> {
    let base = name.split([':', '[']).next().unwrap_or(name);
    match base {
        "fashion-mnist" | "fashion-mnist-full" => Some("zalando-datasets/fashion_mnist"),
        other => catalog::spec(other).ok().map(|s| s.repo),
    }
}

/// One reported metric: (value, description).
type Metric = (f64, String);

fn metrics(parts: &RunParts) -> Vec<Metric> {
    let Some(r) = &parts.report else {
        return Vec::new();
    };
    if parts.method == "masked-lm" {
        let h = &r["heldout"];
        return [
            ("top1", "held-out masked-token top-1 accuracy"),
            ("top5", "held-out masked-token top-5 accuracy"),
            ("perplexity", "held-out perplexity over masked positions"),
        ]
        .iter()
        .filter_map(|(k, d)| Some((h[*k].as_f64()?, d.to_string())))
        .collect();
    }
    let Some(rows) = r["summary"].as_array() else {
        return Vec::new();
    };
    rows.iter()
        .filter(|s| s["method"].as_str() == Some(parts.method.as_str()))
        .filter_map(|s| {
            Some((
                s["mean"].as_f64()? * 100.0,
                format!(
                    "{} accuracy, {} labels per class, mean of {} seeds",
                    s["protocol"].as_str()?,
                    s["labels_per_class"].as_u64()?,
                    s["n"].as_u64()?
                ),
            ))
        })
        .collect()
}

/// The model card (README.md) of a run: YAML front matter for the Hub,
/// then the recipe, the results and how to load the weights.
fn model_card(repo: &str, parts: &RunParts) -> String {
    let r = parts.report.as_ref();
    let dataset = r
        .and_then(|r| r["dataset"].as_str().or(r["corpus"].as_str()))
        .or(parts.config["dataset"].as_str())
        .unwrap_or("unknown")
        .to_string();
    let dataset = without_local_paths(&Value::String(dataset))
        .as_str()
        .unwrap_or("unknown")
        .to_string();
    let is_text = parts.method == "masked-lm";
    let ms = metrics(parts);
    let mut s = String::from("---\nlibrary_name: selfsup\ntags:\n- self-supervised\n- candle\n");
    let _ = writeln!(s, "- {}", y(&parts.method));
    if is_text {
        s.push_str("- bert\n- fill-mask\n");
    }
    if let Some(d) = hub_dataset(&dataset) {
        let _ = writeln!(s, "datasets:\n- {}", y(d));
    }
    if !ms.is_empty() {
        s.push_str("metrics:\n");
        s.push_str(if is_text {
            "- accuracy\n- perplexity\n"
        } else {
            "- accuracy\n"
        });
        let task = if is_text {
            "fill-mask"
        } else {
            "image-classification"
        };
        let _ = writeln!(
            s,
            "model-index:\n- name: {}\n  results:\n  - task:\n      type: {task}\n    dataset:\n      name: {}\n      type: {}\n    metrics:",
            y(repo),
            y(&dataset),
            y(hub_dataset(&dataset).unwrap_or(&dataset))
        );
        for (v, d) in &ms {
            let kind = if d.contains("perplexity") {
                "perplexity"
            } else {
                "accuracy"
            };
            let _ = writeln!(
                s,
                "    - type: {kind}\n      value: {}\n      name: {}",
                (v * 1e4).round() / 1e4,
                y(d)
            );
        }
    }
    s.push_str("---\n\n");
    let _ = writeln!(s, "# {repo}\n");
    if is_text {
        let _ = writeln!(
            s,
            "A small BERT encoder pretrained with masked-token prediction by [selfsup](https://github.com/selfsup/selfsup) (Rust, Candle) on `{dataset}`. The folder loads in Hugging Face `transformers` as `BertForMaskedLM` (with `tokenizer.json`).\n"
        );
    } else {
        // A class selection pretrains on the whole dataset (the stage's
        // config says which) and is evaluated on the selection.
        let config = without_local_paths(&parts.config);
        let pretrained_on = config["dataset"].as_str().unwrap_or(&dataset);
        let evaluated = if pretrained_on == dataset {
            String::new()
        } else {
            format!(", then transferred to and evaluated on `{dataset}`")
        };
        let _ = writeln!(
            s,
            "A `{}` backbone pretrained without labels by the **{}** objective of [selfsup](https://github.com/selfsup/selfsup) (Rust, Candle) on `{pretrained_on}`{evaluated}.\n",
            parts.config["backbone"]["kind"].as_str().unwrap_or("?"),
            parts.method
        );
    }
    s.push_str("## Results\n\n");
    if ms.is_empty() {
        s.push_str("This run has no report with test metrics.\n\n");
    } else {
        s.push_str("From the run's `report.json`:\n\n| metric | value |\n|---|---|\n");
        for (v, d) in &ms {
            let shown = if d.contains("perplexity") {
                format!("{v:.1}")
            } else if is_text {
                format!("{:.2}%", v * 100.0)
            } else {
                format!("{v:.2}%")
            };
            let _ = writeln!(s, "| {d} | {shown} |");
        }
        if let Some(r) = r {
            if let Some(g) = r["gains"].as_array().and_then(|g| {
                g.iter()
                    .find(|g| g["method"].as_str() == Some(parts.method.as_str()))
            }) {
                let _ = writeln!(
                    s,
                    "\nBest protocol ({}) vs training from scratch: {:+.2} points.",
                    g["best_protocol"].as_str().unwrap_or("?"),
                    g["gain_vs_scratch_points"].as_f64().unwrap_or(f64::NAN)
                );
            }
            if let Some(b) = r["baselines"]["unigram"]["top1"].as_f64() {
                let _ = writeln!(
                    s,
                    "\nUnigram-frequency baseline top-1: {:.2}% (perplexity {:.1}).",
                    b * 100.0,
                    r["baselines"]["unigram"]["perplexity"]
                        .as_f64()
                        .unwrap_or(f64::NAN)
                );
            }
        }
        s.push('\n');
    }
    s.push_str(
        "## Training recipe\n\nThe checkpoint's `config.json`, as written by selfsup:\n\n```json\n",
    );
    s.push_str(
        &serde_json::to_string_pretty(&without_local_paths(&parts.config)).unwrap_or_default(),
    );
    s.push_str("\n```\n\n");
    if let Some(cfg) = r.map(|r| &r["config"]).filter(|c| !c.is_null()) {
        s.push_str("The run's settings (`report.json` → `config`):\n\n```json\n");
        s.push_str(&serde_json::to_string_pretty(&without_local_paths(cfg)).unwrap_or_default());
        s.push_str("\n```\n\n");
    }
    s.push_str("## Use it\n\n");
    if is_text {
        let _ = writeln!(
            s,
            "```sh\ncargo xtask text --checkpoint <download dir> --fill \"Rust is a [MASK] language.\"\n```\n\n```python\nfrom transformers import BertForMaskedLM, PreTrainedTokenizerFast\nmodel = BertForMaskedLM.from_pretrained({repo:?})\n```"
        );
    } else {
        let _ = writeln!(
            s,
            "With selfsup, start any stage from this backbone:\n\n```sh\ncargo xtask transfer --init hub:{repo} --dataset {dataset} --labels-per-class 10\n```\n\nIn your own Rust code, `model.safetensors` holds the backbone's tensors under the names selfsup's backbones use (`VarBuilder::from_mmaped_safetensors` in Candle), and `config.json` its architecture and input normalisation."
        );
    }
    s
}

/// `value` with every string that is an absolute local path (a dataset
/// directory, the `init` of a transfer stage, a corpus) cut to its last
/// component: a published folder tells nothing about the publisher's disk.
fn without_local_paths(value: &Value) -> Value {
    match value {
        Value::String(s) if Path::new(s).is_absolute() || s.starts_with('~') => {
            Value::String(Path::new(s).file_name().map_or_else(
                || "<local path>".into(),
                |n| n.to_string_lossy().into_owned(),
            ))
        }
        Value::Array(a) => Value::Array(a.iter().map(without_local_paths).collect()),
        Value::Object(o) => Value::Object(
            o.iter()
                .map(|(k, v)| (k.clone(), without_local_paths(v)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// The files a Hub folder holds.
const HUB_FILES: [&str; 4] = [
    "README.md",
    "config.json",
    "model.safetensors",
    "tokenizer.json",
];

/// Refuses a run that did not finish and a Hub folder that would overwrite
/// anything but an earlier Hub folder: the run itself, a directory holding
/// it, a place inside it other than `<run>/hub`, a file, or a directory of
/// other files.
fn check_folder(run: &Path, folder: &Path) -> Result<()> {
    use selfsup_core::output::{marker, RunState};
    if marker(run).is_some_and(|m| m.state == RunState::Running) {
        return Err(Error::invalid(
            "--run",
            format!(
                "{} did not finish (interrupted, failed or still running); its report may not match its weights",
                run.display()
            ),
        ));
    }
    let absolute = |p: &Path| -> PathBuf {
        let p = std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
        p.components().collect()
    };
    let (run_abs, out_abs) = (absolute(run), absolute(folder));
    let inside_run = out_abs.starts_with(&run_abs) && out_abs != run_abs.join("hub");
    if run_abs.starts_with(&out_abs) || inside_run {
        return Err(Error::invalid(
            "--out",
            format!(
                "{} would replace part of the run {}; give a directory outside it (or none: <run>/hub)",
                folder.display(),
                run.display()
            ),
        ));
    }
    let refuse = |what: &str| {
        Err(Error::invalid(
            "--out",
            format!("{} {what}; nothing was written", folder.display()),
        ))
    };
    match std::fs::read_dir(folder) {
        Ok(entries) => {
            for e in entries {
                let name = e.map_err(|e| Error::io(folder, e))?.file_name();
                if !HUB_FILES.contains(&name.to_string_lossy().as_ref()) {
                    return refuse("holds files that are not a Hub folder's");
                }
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(_) if folder.exists() => refuse("exists and is not a directory"),
        Err(e) => Err(Error::io(folder, e)),
    }
}

/// Writes the Hub folder of `opts.run` (to `opts.out` or `<run>/hub`)
/// atomically and returns it with its file list.
pub fn write_folder(opts: &PublishOptions) -> Result<(PathBuf, Vec<String>)> {
    parse_repo_id(&opts.repo)?;
    let parts = locate(&opts.run, opts.method.as_deref())?;
    let folder = opts.out.clone().unwrap_or_else(|| opts.run.join("hub"));
    check_folder(&opts.run, &folder)?;
    let card = model_card(&opts.repo, &parts);
    let mut files = vec![
        "README.md".to_string(),
        "config.json".to_string(),
        "model.safetensors".to_string(),
    ];
    if parts.checkpoint.join("tokenizer.json").is_file() {
        files.push("tokenizer.json".to_string());
    }
    write_dir_atomic(&folder, |tmp| {
        write_atomic(&tmp.join("README.md"), card.as_bytes())?;
        for f in files
            .iter()
            .filter(|f| *f != "README.md" && *f != "config.json")
        {
            let from = parts.checkpoint.join(f);
            std::fs::copy(&from, tmp.join(f)).map_err(|e| Error::io(&from, e))?;
        }
        let config = serde_json::to_vec_pretty(&without_local_paths(&parts.config))
            .map_err(|e| Error::format(parts.checkpoint.join("config.json"), e.to_string()))?;
        write_atomic(&tmp.join("config.json"), &config)?;
        Ok(())
    })?;
    files.sort();
    Ok((folder, files))
}

/// Writes the Hub folder and, unless `dry_run`, creates the repository if
/// needed and uploads the folder in one commit.
pub fn publish(opts: &PublishOptions) -> Result<PublishOutcome> {
    let (user, name) = parse_repo_id(&opts.repo)?;
    let (folder, files) = write_folder(opts)?;
    if opts.dry_run {
        return Ok(PublishOutcome {
            folder,
            files,
            commit_url: None,
        });
    }
    let hub = client()?;
    hub.create_repository()
        .repo_id(&opts.repo)
        .repo_type(hf_hub::RepoTypeModel)
        .private(opts.private)
        .exist_ok(true)
        .send()
        .map_err(|e| hub_error(&format!("creating model repository {}", opts.repo), e))?;
    let info = hub
        .model(user, name)
        .upload_folder()
        .folder_path(folder.clone())
        // The run's folder name only: no local absolute path leaves the machine.
        .commit_message(format!(
            "Upload selfsup run {}",
            opts.run
                .file_name()
                .map_or_else(|| "run".into(), |n| n.to_string_lossy())
        ))
        .send()
        .map_err(|e| {
            hub_error(
                &format!("uploading {} to {}", folder.display(), opts.repo),
                e,
            )
        })?;
    Ok(PublishOutcome {
        folder,
        files,
        commit_url: info.commit_url,
    })
}

/// Downloads a published backbone (`config.json` + `model.safetensors`)
/// for `--init hub:<user/name>` and returns the local directory holding
/// both (hf-hub's cache snapshot; offline once cached).
pub fn download_checkpoint(repo_id: &str) -> Result<PathBuf> {
    let (user, name) = parse_repo_id(repo_id)?;
    let hub = client()?;
    let repo = hub.model(user, name);
    let mut dir = None;
    for f in ["config.json", "model.safetensors"] {
        let p = match repo
            .download_file()
            .filename(f)
            .local_files_only(true)
            .send()
        {
            Ok(p) => p,
            Err(_) => repo
                .download_file()
                .filename(f)
                .send()
                .map_err(|e| hub_error(&format!("downloading {f} of {repo_id}"), e))?,
        };
        dir = p.parent().map(Path::to_path_buf);
    }
    dir.ok_or_else(|| Error::invalid("--init", format!("hub:{repo_id}: nothing downloaded")))
}

#[cfg(test)]
mod tests {
    use super::hub_dataset;

    #[test]
    fn report_dataset_names_map_to_their_hub_repos() {
        assert_eq!(hub_dataset("svhn"), Some("ufldl-stanford/svhn"));
        assert_eq!(hub_dataset("celeba:Eyeglasses"), Some("flwrlabs/celeba"));
        assert_eq!(
            hub_dataset("tiny-imagenet[n01855672,n01443537]"),
            Some("zh-plus/tiny-imagenet")
        );
        assert_eq!(
            hub_dataset("fashion-mnist-full"),
            Some("zalando-datasets/fashion_mnist")
        );
        assert_eq!(hub_dataset("/data/my-folder"), None);
    }
}

#[cfg(test)]
mod path_tests {
    use super::*;

    #[test]
    fn local_paths_are_cut_to_their_last_component() {
        let v = serde_json::json!({
            "dataset": "/home/me/private/birds",
            "recipe": {"init": "/srv/runs/a/pretrain-simclr", "protocol": "finetune"},
            "list": ["~/corpus.txt", "relative/stays"],
            "n": 3
        });
        let out = without_local_paths(&v);
        assert_eq!(out["dataset"], "birds");
        assert_eq!(out["recipe"]["init"], "pretrain-simclr");
        assert_eq!(out["recipe"]["protocol"], "finetune");
        assert_eq!(
            out["list"],
            serde_json::json!(["corpus.txt", "relative/stays"])
        );
        assert_eq!(out["n"], 3);
    }
}
