//! `cargo xtask fetch` end to end against the Hub stand-in on 127.0.0.1
//! (the real hf-hub client, the real parquet decoding): a dataset is
//! downloaded, decoded and cached once, then reused without the network.

#[path = "../../crates/hub/tests/stand_in/mod.rs"]
mod stand_in;

use stand_in::{mnist_split, parquet_file, start, State, DIGITS};
use std::path::Path;
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};

/// Runs xtask against the stand-in at `url`, with its caches under `home`.
fn xtask(url: &str, home: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(args)
        .env("HF_ENDPOINT", url)
        .env("HF_HOME", home.join("hf-home"))
        .env("HF_HUB_CACHE", home.join("hf-home/hub"))
        .env("SELFSUP_CACHE", home.join("cache"))
        .env_remove("HF_TOKEN")
        .output()
        .expect("run xtask")
}

#[test]
fn fetch_downloads_decodes_caches_and_then_reuses() {
    let state = Arc::new(Mutex::new(State::default()));
    {
        let mut st = state.lock().unwrap();
        let repo = st.repos.entry("datasets/ylecun/mnist".into()).or_default();
        let (tr, ytr) = mnist_split(30);
        let (te, yte) = mnist_split(10);
        for (split, images, labels) in [("train", &tr, &ytr), ("test", &te, &yte)] {
            repo.insert(
                format!("mnist/{split}-00000-of-00001.parquet"),
                parquet_file("image", "label", images, labels, &DIGITS, &[]),
            );
        }
    }
    let server = start(state.clone());
    let home = tempfile::tempdir().unwrap();

    let out = xtask(
        &server.url,
        home.path(),
        &["fetch", "--dataset", "mnist", "--quiet"],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(home.path().join("cache/datasets/mnist/dataset.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        (&manifest["train_images"], &manifest["test_images"]),
        (&serde_json::json!(30), &serde_json::json!(10))
    );
    assert_eq!(manifest["image_shape"], serde_json::json!([1, 28, 28]));

    // Cached: the second fetch downloads nothing.
    let downloads = |st: &State| st.log.iter().filter(|l| l.contains(".parquet")).count();
    let before = downloads(&state.lock().unwrap());
    let out = xtask(
        &server.url,
        home.path(),
        &["fetch", "--dataset", "mnist", "--quiet"],
    );
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(downloads(&state.lock().unwrap()), before);

    // A dataset the catalog lacks is an error (1); a missing flag is usage (2).
    let out = xtask(
        &server.url,
        home.path(),
        &["fetch", "--dataset", "imagenet-22k"],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("imagenet-22k"));
    let out = xtask(&server.url, home.path(), &["fetch"]);
    assert_eq!(out.status.code(), Some(2));
}
