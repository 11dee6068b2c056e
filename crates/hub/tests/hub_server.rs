//! The real hf-hub client against a Hub stand-in on 127.0.0.1: dataset
//! repositories serving parquet files generated here in the public
//! datasets' schemas (image `struct<bytes, path>`, int64 label, ClassLabel
//! names in the `huggingface` metadata; CelebA's boolean attribute
//! columns), and the model-repository endpoints an upload uses (create,
//! preupload, commit). No test touches the internet.
//!
//! The environment (HF_ENDPOINT, HF_HOME, HF_TOKEN, SELFSUP_CACHE) is
//! process-wide, so the scenarios run one after another in one test.

mod stand_in;

use selfsup_data::cache;
use selfsup_hub::{fetch, publish, FetchOptions, PublishOptions};
use stand_in::*;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

struct Env {
    _tmp: tempfile::TempDir,
    cache_root: PathBuf,
    hf_home: PathBuf,
}

fn env(server_url: &str) -> Env {
    let tmp = tempfile::tempdir().unwrap();
    let cache_root = tmp.path().join("selfsup-cache");
    let hf_home = tmp.path().join("hf-home");
    std::env::set_var("HF_ENDPOINT", server_url);
    std::env::set_var("HF_HOME", &hf_home);
    std::env::set_var("HF_HUB_CACHE", hf_home.join("hub"));
    std::env::set_var("HF_TOKEN", TOKEN);
    std::env::set_var("SELFSUP_CACHE", &cache_root);
    Env {
        _tmp: tmp,
        cache_root,
        hf_home,
    }
}

fn opts(e: &Env, force: bool) -> FetchOptions {
    FetchOptions {
        cache_root: e.cache_root.clone(),
        force,
        quiet: true,
    }
}

fn leftovers(root: &Path) -> Vec<String> {
    std::fs::read_dir(root.join("datasets"))
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with('.'))
                .collect()
        })
        .unwrap_or_default()
}

fn fetch_decode_cache_and_offline_reuse() {
    let state = Arc::new(Mutex::new(State::default()));
    let (tr, ytr) = mnist_split(30);
    let (te, yte) = mnist_split(12);
    {
        let mut st = state.lock().unwrap();
        let repo = st.repos.entry("datasets/ylecun/mnist".into()).or_default();
        repo.insert(
            "mnist/train-00000-of-00001.parquet".into(),
            parquet_file("image", "label", &tr, &ytr, &DIGITS, &[]),
        );
        repo.insert(
            "mnist/test-00000-of-00001.parquet".into(),
            parquet_file("image", "label", &te, &yte, &DIGITS, &[]),
        );
        repo.insert("README.md".into(), b"# MNIST".to_vec());
        // CIFAR-10's schema: `img` column, RGB, two train shards.
        let names = [
            "airplane",
            "automobile",
            "bird",
            "cat",
            "deer",
            "dog",
            "frog",
            "horse",
            "ship",
            "truck",
        ];
        let cifar = st
            .repos
            .entry("datasets/uoft-cs/cifar10".into())
            .or_default();
        for (shard, off) in [(0, 0u8), (1, 100)] {
            let imgs: Vec<Vec<u8>> = (0..5).map(|i| png(32, 32, off + i, true)).collect();
            cifar.insert(
                format!("plain_text/train-0000{shard}-of-00002.parquet"),
                parquet_file("img", "label", &imgs, &[0, 1, 2, 3, 9], &names, &[]),
            );
        }
        let imgs: Vec<Vec<u8>> = (0..3).map(|i| png(32, 32, 200 + i, true)).collect();
        cifar.insert(
            "plain_text/test-00000-of-00001.parquet".into(),
            parquet_file("img", "label", &imgs, &[4, 5, 6], &names, &[]),
        );
    }
    let server = start(state.clone());
    let e = env(&server.url);

    let out = fetch("mnist", &opts(&e, false)).unwrap();
    assert!(!out.reused);
    assert_eq!(out.manifest.repo, "ylecun/mnist");
    assert_eq!(out.manifest.revision, COMMIT);
    assert_eq!(
        (out.manifest.train_images, out.manifest.test_images),
        (30, 12)
    );
    assert_eq!(out.manifest.classes, DIGITS);
    let pair = selfsup_data::load("mnist").unwrap();
    assert_eq!(pair.train.image_shape(), (1, 28, 28));
    assert_eq!(pair.train.labels().unwrap()[..3], [0, 1, 2]);
    assert!(
        pair.train.image(3).iter().all(|&p| p == 35),
        "label 3 -> shade 35"
    );
    assert_eq!(pair.test.len(), 12);
    assert!(
        e.hf_home.join("hub").is_dir(),
        "downloads go through hf-hub's cache"
    );

    let cifar = fetch("cifar10", &opts(&e, false)).unwrap();
    assert_eq!(cifar.manifest.train_files.len(), 2);
    let pair = selfsup_data::load("cifar10").unwrap();
    assert_eq!(pair.train.image_shape(), (3, 32, 32));
    assert_eq!(pair.train.len(), 10);
    assert_eq!(
        pair.train.image(5)[0],
        100,
        "second shard follows the first"
    );
    assert_eq!(pair.test.labels().unwrap(), &[4, 5, 6]);
    assert_eq!(pair.train.class_names()[9], "truck");

    // Offline: the server is gone; the cached datasets still load and a
    // plain fetch reuses them without a request.
    let requests = state.lock().unwrap().log.len();
    drop(server);
    let again = fetch("mnist", &opts(&e, false)).unwrap();
    assert!(again.reused);
    assert_eq!(selfsup_data::load("mnist").unwrap().train.len(), 30);
    assert_eq!(state.lock().unwrap().log.len(), requests);
    // A dataset never fetched says what to run.
    let err = selfsup_data::load("svhn").unwrap_err().to_string();
    assert!(err.contains("cargo xtask fetch --dataset svhn"), "{err}");
    // No network and nothing cached: a clear error, nothing cached.
    let err = fetch("svhn", &opts(&e, false)).unwrap_err().to_string();
    assert!(
        err.contains("could not be reached") && err.contains("ufldl-stanford/svhn"),
        "{err}"
    );
    assert!(!err.contains(TOKEN));
    assert!(!cache::is_cached(&e.cache_root, "svhn"));
    assert!(leftovers(&e.cache_root).is_empty());
}

fn bad_inputs_leave_the_cache_consistent() {
    let state = Arc::new(Mutex::new(State::default()));
    let (tr, ytr) = mnist_split(20);
    let good_train = parquet_file("image", "label", &tr, &ytr, &DIGITS, &[]);
    let (te, yte) = mnist_split(10);
    let good_test = parquet_file("image", "label", &te, &yte, &DIGITS, &[]);
    {
        let mut st = state.lock().unwrap();
        // Fashion-MNIST with no test split.
        st.repos
            .entry("datasets/zalando-datasets/fashion_mnist".into())
            .or_default()
            .insert(
                "fashion_mnist/train-00000-of-00001.parquet".into(),
                good_train.clone(),
            );
        // MNIST whose test file is truncated.
        let m = st.repos.entry("datasets/ylecun/mnist".into()).or_default();
        m.insert(
            "mnist/train-00000-of-00001.parquet".into(),
            good_train.clone(),
        );
        m.insert(
            "mnist/test-00000-of-00001.parquet".into(),
            good_test[..good_test.len() / 2].to_vec(),
        );
    }
    let server = start(state.clone());
    let e = env(&server.url);

    let err = fetch("fashion-mnist", &opts(&e, false))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("has no test split") && err.contains("fashion_mnist/"),
        "{err}"
    );
    assert!(!cache::is_cached(&e.cache_root, "fashion-mnist"));

    let err = fetch("mnist", &opts(&e, false)).unwrap_err().to_string();
    assert!(
        err.contains("test-00000-of-00001.parquet") && err.contains("not a readable parquet file"),
        "{err}"
    );
    assert!(!cache::is_cached(&e.cache_root, "mnist"));
    assert!(leftovers(&e.cache_root).is_empty());

    // Fixed on the server: the bad download is not reused, the fetch works.
    {
        let mut st = state.lock().unwrap();
        let m = st.repos.get_mut("datasets/ylecun/mnist").unwrap();
        m.insert(
            "mnist/test-00000-of-00001.parquet".into(),
            good_test.clone(),
        );
    }
    fetch("mnist", &opts(&e, false)).unwrap();
    let before = cache::load(&e.cache_root, "mnist").unwrap();

    // A corrupt image cell: refetch with --force fails, naming file and
    // row, and the previously cached copy is untouched.
    let mut bad_images = te.clone();
    bad_images[7] = b"\x89PNG\r\n\x1a\n garbage".to_vec();
    {
        let mut st = state.lock().unwrap();
        let m = st.repos.get_mut("datasets/ylecun/mnist").unwrap();
        m.insert(
            "mnist/test-00000-of-00001.parquet".into(),
            parquet_file("image", "label", &bad_images, &yte, &DIGITS, &[]),
        );
    }
    let err = fetch("mnist", &opts(&e, true)).unwrap_err().to_string();
    assert!(err.contains("row 7") && err.contains("PNG/JPEG"), "{err}");
    let after = cache::load(&e.cache_root, "mnist").unwrap();
    assert_eq!(after.0, before.0);
    assert_eq!(after.2.dataset, before.2.dataset);
    assert!(leftovers(&e.cache_root).is_empty());
    drop(server);
}

fn celeba_attributes_label_a_one_class_problem() {
    let state = Arc::new(Mutex::new(State::default()));
    let glasses: Vec<bool> = (0..12).map(|i| i % 4 == 0).collect();
    let smiling: Vec<bool> = (0..12).map(|i| i % 2 == 0).collect();
    let imgs: Vec<Vec<u8>> = (0..12).map(|i| png(40, 48, i * 10, true)).collect();
    let ids: Vec<i64> = (0..12).map(|i| i % 3).collect();
    let file = parquet_file(
        "image",
        "celeb_id",
        &imgs,
        &ids,
        &[],
        &[("Eyeglasses", glasses.clone()), ("Smiling", smiling)],
    );
    {
        let mut st = state.lock().unwrap();
        let r = st
            .repos
            .entry("datasets/flwrlabs/celeba".into())
            .or_default();
        r.insert("data/train-00000-of-00001.parquet".into(), file.clone());
        r.insert("data/test-00000-of-00001.parquet".into(), file);
    }
    let server = start(state);
    let e = env(&server.url);
    let out = fetch("celeba", &opts(&e, false)).unwrap();
    assert_eq!(out.manifest.attributes, ["Eyeglasses", "Smiling"]);
    assert_eq!(out.manifest.image_shape, [3, 32, 32], "cropped and resized");
    let pair = selfsup_data::load("celeba:Eyeglasses").unwrap();
    let want: Vec<u32> = glasses.iter().map(|&g| u32::from(g)).collect();
    assert_eq!(pair.test.labels().unwrap(), &want[..]);
    assert_eq!(pair.train.class_names(), ["not Eyeglasses", "Eyeglasses"]);
    drop(server);
}

/// A run directory shaped like `cargo xtask pipeline`'s output.
fn pipeline_run(dir: &Path) {
    let ck = dir.join("pretrain-rotation");
    std::fs::create_dir_all(&ck).unwrap();
    std::fs::write(
        ck.join("config.json"),
        serde_json::to_vec_pretty(&serde_json::json!({
            "stage": "pretrain", "method": "rotation", "dataset": "fashion-mnist",
            "backbone": {"kind": "convnet", "in_channels": 1, "widths": [16, 32, 64], "convs_per_stage": 2},
            "input_shape": [1, 28, 28], "head_outputs": 4
        }))
        .unwrap(),
    )
    .unwrap();
    std::fs::write(ck.join("model.safetensors"), b"weights-bytes").unwrap();
    let report = serde_json::json!({
        "dataset": "fashion-mnist", "backbone": "convnet", "seeds": [0, 1, 2],
        "labels_per_class": [10], "pretext": ["rotation"],
        "summary": [
            {"method": "scratch", "protocol": "finetune", "labels_per_class": 10, "mean": 0.645, "std": 0.0085, "min": 0.635, "max": 0.65, "n": 3},
            {"method": "rotation", "protocol": "finetune", "labels_per_class": 10, "mean": 0.6633, "std": 0.01, "min": 0.65, "max": 0.67, "n": 3},
            {"method": "rotation", "protocol": "linear", "labels_per_class": 10, "mean": 0.5998, "std": 0.0196, "min": 0.58, "max": 0.62, "n": 3}
        ],
        "gains": [{"labels_per_class": 10, "method": "rotation", "best_protocol": "finetune", "mean": 0.6633, "gain_vs_scratch_points": 1.82}],
        "config": {"recipe": {"pretrain_epochs": 3}}
    });
    std::fs::write(
        dir.join("report.json"),
        serde_json::to_vec_pretty(&report).unwrap(),
    )
    .unwrap();
}

fn publish_uploads_one_commit_and_init_downloads_it() {
    let state = Arc::new(Mutex::new(State::default()));
    let server = start(state.clone());
    let e = env(&server.url);
    let run = e.cache_root.parent().unwrap().join("run");
    pipeline_run(&run);
    let po = |repo: &str, dry: bool| PublishOptions {
        run: run.clone(),
        repo: repo.to_string(),
        private: true,
        dry_run: dry,
        out: None,
        method: None,
    };
    // Dry run: the folder, no request.
    let dry = publish(&po("alice/rot-convnet", true)).unwrap();
    assert_eq!(dry.folder, run.join("hub"));
    assert_eq!(dry.files, ["README.md", "config.json", "model.safetensors"]);
    assert!(state.lock().unwrap().log.is_empty());
    let card = std::fs::read_to_string(run.join("hub/README.md")).unwrap();
    assert!(card.starts_with("---\nlibrary_name: selfsup\n"), "{card}");
    for want in [
        "- self-supervised",
        "- candle",
        "- \"rotation\"",
        "- \"zalando-datasets/fashion_mnist\"",
        "value: 66.33",
        "finetune accuracy, 10 labels per class, mean of 3 seeds",
        "value: 59.98",
        "+1.82 points",
        "--init hub:alice/rot-convnet",
    ] {
        assert!(card.contains(want), "model card lacks {want}:\n{card}");
    }
    assert!(
        !card.contains("64.50"),
        "scratch rows are not this model's metrics"
    );

    // Bad repo names are refused before anything is written or sent.
    let e2 = publish(&po("alice", false)).unwrap_err().to_string();
    assert!(e2.contains("user/name"), "{e2}");

    // The upload: one repo creation, one commit with exactly the folder.
    let out = publish(&po("alice/rot-convnet", false)).unwrap();
    assert!(out.commit_url.unwrap().contains(COMMIT));
    let st = state.lock().unwrap();
    assert_eq!(st.created.len(), 1);
    assert_eq!(st.created[0]["name"], "rot-convnet");
    assert_eq!(st.created[0]["organization"], "alice");
    assert_eq!(st.created[0]["private"], true);
    assert_eq!(st.commits.len(), 1, "{:?}", st.log);
    let commit = &st.commits[0];
    assert_eq!(commit[0]["key"], "header");
    let mut paths: Vec<&str> = commit[1..]
        .iter()
        .map(|l| l["value"]["path"].as_str().unwrap())
        .collect();
    paths.sort();
    assert_eq!(paths, ["README.md", "config.json", "model.safetensors"]);
    let repo = &st.repos["alice/rot-convnet"];
    assert_eq!(repo["model.safetensors"], b"weights-bytes");
    assert_eq!(repo["README.md"], card.as_bytes());
    assert!(st.auth.iter().all(|a| a == &format!("Bearer {TOKEN}")));
    assert!(!st.auth.is_empty());
    drop(st);

    // --init hub:alice/rot-convnet fetches what was published.
    let dir = selfsup_hub::download_checkpoint("alice/rot-convnet").unwrap();
    assert_eq!(
        std::fs::read(dir.join("model.safetensors")).unwrap(),
        b"weights-bytes"
    );
    assert!(dir.join("config.json").is_file());
    let err = selfsup_hub::download_checkpoint("alice/missing")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("alice/missing") && !err.contains(TOKEN),
        "{err}"
    );
    drop(server);
}

#[test]
fn hub_scenarios_against_a_local_server() {
    fetch_decode_cache_and_offline_reuse();
    bad_inputs_leave_the_cache_consistent();
    celeba_attributes_label_a_one_class_problem();
    publish_uploads_one_commit_and_init_downloads_it();
}

/// Parquet files a Hub mirror could serve mangled (truncated, extended,
/// bytes overwritten; seeded, so a failure reproduces) decode to an error
/// that names the file or to well-formed rows, and never panic: the entry
/// point the `parquet` fuzz target drives.
#[test]
fn mangled_parquet_files_are_errors_not_panics() {
    let (images, labels) = mnist_split(3);
    let valid = parquet_file("image", "label", &images, &labels, &DIGITS, &[]);
    let spec = selfsup_hub::catalog::spec("mnist").unwrap();
    let path = Path::new("train-00000.parquet");
    let rows =
        |bytes: Vec<u8>| selfsup_hub::parquet_images::read_bytes(path, bytes, spec, &|_, _| {});
    let ok = rows(valid.clone()).unwrap();
    assert_eq!((ok.len(), ok.images.len()), (3, 3 * 28 * 28));
    // `SELFSUP_WRITE_FUZZ_SEEDS=DIR` keeps the valid file as a fuzzing seed.
    if let Some(dir) = std::env::var_os("SELFSUP_WRITE_FUZZ_SEEDS") {
        std::fs::write(Path::new(&dir).join("mnist-3.parquet"), &valid).unwrap();
    }
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let mut next = move |n: usize| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % n.max(1) as u64) as usize
    };
    for _ in 0..1500 {
        let mut b = valid.clone();
        match next(3) {
            0 => b.truncate(next(b.len() + 1)),
            1 => (0..next(64)).for_each(|_| b.push(next(256) as u8)),
            _ => (0..1 + next(4)).for_each(|_| {
                let at = next(b.len());
                b[at] = next(256) as u8;
            }),
        }
        match rows(b) {
            Ok(d) => assert_eq!(d.images.len(), d.len() * 28 * 28),
            Err(e) => assert!(e.to_string().contains("train-00000.parquet"), "{e}"),
        }
    }
}
