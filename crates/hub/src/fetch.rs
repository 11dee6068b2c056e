//! `cargo xtask fetch --dataset NAME`: list the dataset repository's
//! parquet shards, download them through hf-hub's cache, decode every image
//! once, and store the result in the local dataset cache
//! ([`selfsup_data::cache`]) atomically.

use crate::catalog::{self, Spec};
use crate::client::{client, hub_error};
use crate::parquet_images::{self, Decoded};
use hf_hub::repository::RepoTreeEntry;
use indicatif::ProgressBar;
use selfsup_core::{Error, Result};
use selfsup_data::cache::{self, Manifest, SourceFile, Split, FORMAT_VERSION};
use selfsup_data::Dataset;
use std::path::{Path, PathBuf};

/// Options of one fetch.
#[derive(Debug, Clone)]
pub struct FetchOptions {
    /// The decoded-dataset cache root (normally [`cache::root`]).
    pub cache_root: PathBuf,
    /// Download and decode again even when the dataset is cached.
    pub force: bool,
    /// No progress bars.
    pub quiet: bool,
}

/// What a fetch did.
#[derive(Debug, Clone)]
pub struct FetchOutcome {
    /// The cached dataset's directory.
    pub dir: PathBuf,
    /// Its manifest.
    pub manifest: Manifest,
    /// True when the cached copy was used and nothing was downloaded.
    pub reused: bool,
}

fn split_files(spec: &Spec, files: &[(String, u64)], split: &str) -> Vec<(String, u64)> {
    let mut v: Vec<(String, u64)> = files
        .iter()
        .filter(|(p, _)| catalog::is_split_file(spec, p, split))
        .cloned()
        .collect();
    v.sort();
    v
}

/// The commit a downloaded file was resolved at: hf-hub stores it under
/// `.../snapshots/<commit>/<path in repo>`.
fn commit_of(local: &Path) -> Option<String> {
    let comps: Vec<String> = local
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    let i = comps.iter().position(|c| c == "snapshots")?;
    comps.get(i + 1).cloned()
}

fn bar(quiet: bool, len: u64, msg: String) -> ProgressBar {
    let pb = selfsup_core::progress::bar(
        len,
        "fetch",
        "{msg:40} [{bar:30}] {pos}/{len} {elapsed_precise}",
        quiet,
    );
    pb.set_message(msg);
    pb
}

/// Downloads and decodes the shards of one split, in path order.
fn fetch_split(
    repo: &hf_hub::HFRepositorySync<hf_hub::RepoTypeDataset>,
    spec: &Spec,
    files: &[(String, u64)],
    quiet: bool,
) -> Result<(Decoded, Vec<SourceFile>, String)> {
    let mut all = Decoded::default();
    let mut sources = Vec::new();
    let mut revision = String::new();
    for (path, size) in files {
        let pb = bar(quiet, 1, format!("download {path}"));
        let local = repo
            .download_file()
            .filename(path.clone())
            .send()
            .map_err(|e| hub_error(&format!("downloading {path} from {}", spec.repo), e))?;
        pb.finish_and_clear();
        if let Some(c) = commit_of(&local) {
            revision = c;
        }
        let pb = bar(quiet, 0, format!("decode {path}"));
        let on_rows = |n: usize, total: usize| {
            pb.set_length(total as u64);
            pb.set_position(n as u64);
        };
        let d = match parquet_images::read(&local, spec, &on_rows) {
            Ok(d) => d,
            Err(e) => {
                forget_download(&local);
                return Err(with_repo_path(e, &local, path));
            }
        };
        pb.finish_and_clear();
        if !all.is_empty() && d.attribute_names != all.attribute_names {
            return Err(Error::format(
                &local,
                format!("{path}: its boolean columns differ from the first shard's"),
            ));
        }
        if all.class_names.is_none() {
            all.class_names = d.class_names.clone();
        }
        all.attribute_names = d.attribute_names;
        all.images.extend(d.images);
        all.labels.extend(d.labels);
        all.attributes.extend(d.attributes);
        sources.push(SourceFile {
            path: path.clone(),
            bytes: *size,
        });
    }
    Ok((all, sources, revision))
}

/// Removes a download that did not decode (hf-hub's snapshot link and the
/// blob behind it), so the next fetch downloads it again instead of reusing
/// a damaged copy.
fn forget_download(local: &Path) {
    if let Ok(blob) = std::fs::canonicalize(local) {
        let _ = std::fs::remove_file(&blob);
    }
    let _ = std::fs::remove_file(local);
}

/// Errors about a download also name the file's path in the repository.
fn with_repo_path(e: Error, local: &Path, repo_path: &str) -> Error {
    match e {
        Error::Format { msg, .. } => Error::format(
            local,
            format!("(downloaded from {repo_path}) {msg}; the download was discarded, nothing was cached"),
        ),
        other => other,
    }
}

fn to_split(d: Decoded, spec: &Spec, classes: &[String]) -> Result<Split> {
    let n = d.len();
    let dataset = Dataset::new(
        d.images,
        (n, spec.channels, spec.size, spec.size),
        Some(d.labels),
        classes.to_vec(),
    )?;
    Ok(Split {
        dataset,
        attributes: d.attributes,
    })
}

/// Fetches dataset `name` into the cache (or reuses the cached copy).
pub fn fetch(name: &str, opts: &FetchOptions) -> Result<FetchOutcome> {
    let spec = catalog::spec(name)?;
    if cache::is_cached(&opts.cache_root, name) && !opts.force {
        let manifest = cache::read_manifest(&opts.cache_root, name)?;
        return Ok(FetchOutcome {
            dir: cache::dataset_dir(&opts.cache_root, name),
            manifest,
            reused: true,
        });
    }
    let hub = client()?;
    let (owner, repo_name) = spec
        .repo
        .split_once('/')
        .expect("catalog ids are owner/name");
    let repo = hub.dataset(owner, repo_name);
    let tree = repo
        .list_tree()
        .recursive(true)
        .send()
        .map_err(|e| hub_error(&format!("listing the files of dataset {}", spec.repo), e))?;
    let files: Vec<(String, u64)> = tree
        .into_iter()
        .filter_map(|e| match e {
            RepoTreeEntry::File { path, size, .. } => Some((path, size)),
            _ => None,
        })
        .collect();
    let where_ = if spec.config_dir.is_empty() {
        String::new()
    } else {
        format!(" under {}/", spec.config_dir)
    };
    let train_files = split_files(spec, &files, spec.train_split);
    if train_files.is_empty() {
        return Err(Error::invalid(
            "dataset",
            format!(
                "{} has no `{}` split (no {}-*.parquet{where_}); nothing was cached",
                spec.repo, spec.train_split, spec.train_split
            ),
        ));
    }
    let (test_split, test_files) = spec
        .test_splits
        .iter()
        .map(|s| (s.to_string(), split_files(spec, &files, s)))
        .find(|(_, f)| !f.is_empty())
        .ok_or_else(|| {
            Error::invalid(
                "dataset",
                format!(
                    "{} has no test split (looked for {}{where_}); nothing was cached",
                    spec.repo,
                    spec.test_splits.join(", ")
                ),
            )
        })?;
    let (train, train_sources, revision) = fetch_split(&repo, spec, &train_files, opts.quiet)?;
    let (test, test_sources, _) = fetch_split(&repo, spec, &test_files, opts.quiet)?;
    if test.attribute_names != train.attribute_names {
        return Err(Error::invalid(
            "dataset",
            format!(
                "{}: train and {test_split} splits have different boolean columns",
                spec.repo
            ),
        ));
    }
    let max_label = train
        .labels
        .iter()
        .chain(&test.labels)
        .copied()
        .max()
        .unwrap_or(0) as usize;
    let classes: Vec<String> = match &train.class_names {
        Some(names) if names.len() > max_label => names.clone(),
        _ => (0..=max_label).map(|k| k.to_string()).collect(),
    };
    let attributes = train.attribute_names.clone();
    let manifest = Manifest {
        format_version: FORMAT_VERSION,
        name: name.to_string(),
        repo: spec.repo.to_string(),
        revision,
        train_files: train_sources,
        test_files: test_sources,
        test_split,
        label_column: spec.label_column.to_string(),
        classes: classes.clone(),
        image_shape: [spec.channels, spec.size, spec.size],
        train_images: train.len(),
        test_images: test.len(),
        attributes,
    };
    let train = to_split(train, spec, &classes)?;
    let test = to_split(test, spec, &classes)?;
    let dir = cache::store(&opts.cache_root, &manifest, &train, &test)?;
    Ok(FetchOutcome {
        dir,
        manifest,
        reused: false,
    })
}
