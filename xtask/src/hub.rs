//! `fetch` and `publish`: the Hugging Face Hub commands, and `hub:` paths.

use anyhow::Result;
use clap::Args;
use std::path::PathBuf;

#[derive(Args)]
pub struct FetchArgs {
    /// svhn, cifar10, cifar100, mnist, fashion-mnist (cached as
    /// `fashion-mnist-full`), tiny-imagenet or celeba.
    #[arg(long)]
    dataset: String,
    /// Download and decode again even if the dataset is cached.
    #[arg(long)]
    force: bool,
    /// No progress bars.
    #[arg(long)]
    pub quiet: bool,
}

#[derive(Args)]
pub struct PublishArgs {
    /// Run directory: a pipeline run, a text run, or one stage directory.
    #[arg(long)]
    run: PathBuf,
    /// Model repository, `user/name`.
    #[arg(long)]
    repo: String,
    /// Create the repository as private.
    #[arg(long)]
    private: bool,
    /// Only write the Hub folder (to --out, default RUN/hub); upload nothing.
    #[arg(long)]
    dry_run: bool,
    /// Where to write the Hub folder.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Pipeline runs: publish this method's backbone (default: the best gain over scratch).
    #[arg(long)]
    method: Option<String>,
}

/// `hub:<user/name>` becomes the local directory of the downloaded
/// backbone; a plain path stays as it is.
pub fn resolve_init(init: Option<PathBuf>) -> Result<Option<PathBuf>> {
    let Some(p) = init else { return Ok(None) };
    match p.to_str().and_then(|s| s.strip_prefix("hub:")) {
        Some(repo) => Ok(Some(selfsup::hub::download_checkpoint(repo)?)),
        None => Ok(Some(p)),
    }
}

pub fn run_fetch(a: FetchArgs) -> Result<()> {
    let spec = selfsup::hub::catalog::spec(&a.dataset)?;
    if !a.quiet {
        eprintln!(
            "fetching {} from the Hub dataset {} ({})",
            a.dataset, spec.repo, spec.download
        );
    }
    let out = selfsup::hub::fetch(
        &a.dataset,
        &selfsup::hub::FetchOptions {
            cache_root: selfsup::data::cache::root(),
            force: a.force,
            quiet: a.quiet,
        },
    )?;
    let m = &out.manifest;
    let name = selfsup::data::cache::dataset_name(&a.dataset);
    println!(
        "{} {}: {} train + {} {} images of {:?}, {} classes, from {}@{} -> {}",
        if out.reused { "cached" } else { "fetched" },
        a.dataset,
        m.train_images,
        m.test_images,
        m.test_split,
        m.image_shape,
        m.classes.len(),
        m.repo,
        short_revision(&m.revision),
        out.dir.display()
    );
    println!("use it with --dataset {name}");
    Ok(())
}

pub fn run_publish(a: PublishArgs) -> Result<()> {
    let out = selfsup::hub::publish(&selfsup::hub::PublishOptions {
        run: a.run,
        repo: a.repo.clone(),
        private: a.private,
        dry_run: a.dry_run,
        out: a.out,
        method: a.method,
    })?;
    println!("wrote {} ({})", out.folder.display(), out.files.join(", "));
    match out.commit_url {
        Some(u) => println!("uploaded to {} in one commit: {u}", a.repo),
        None if a.dry_run => println!("dry run: nothing uploaded"),
        None => println!("uploaded to {}", a.repo),
    }
    Ok(())
}

/// The first 12 characters of a revision (a commit hash, or whatever a
/// cached dataset.json says), cut at a character boundary.
fn short_revision(revision: &str) -> String {
    revision.chars().take(12).collect()
}

#[cfg(test)]
mod tests {
    use super::short_revision;

    #[test]
    fn a_revision_is_cut_at_a_character_boundary() {
        assert_eq!(short_revision("0123456789abcdef"), "0123456789ab");
        assert_eq!(short_revision("ééééééééééééé"), "éééééééééééé");
        assert_eq!(short_revision("main"), "main");
    }
}
