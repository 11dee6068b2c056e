//! The command line's contract: bad input exits non-zero with a message that
//! names the flag or file, and writes nothing.

use std::process::Command;

fn xtask(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(args)
        .output()
        .expect("run xtask");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Every case exits non-zero, its stderr names each needle, and `out` is
/// never written.
fn fails_cleanly(cases: &[(&[&str], &[&str])], out: &std::path::Path) {
    for (args, needles) in cases {
        let (ok, err) = xtask(args);
        assert!(!ok, "{args:?} should fail");
        for n in needles.iter() {
            assert!(err.contains(n), "{args:?}: {err:?} lacks {n:?}");
        }
        assert!(!out.exists(), "{args:?} wrote output");
    }
}

#[test]
fn bad_flags_exit_non_zero_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let o = out.to_str().unwrap();
    let cases: [(&[&str], &[&str]); 12] = [
        (
            &[
                "pipeline",
                "--quiet",
                "--distill-teacher",
                "oracle",
                "--out",
                o,
            ],
            &[
                "protocols.distill.teacher",
                "oracle",
                "auto, finetune, lpft",
            ],
        ),
        (
            &[
                "pipeline",
                "--quiet",
                "--no-lpft",
                "--distill-teacher",
                "lpft",
                "--out",
                o,
            ],
            &["protocols.distill.teacher", "lpft protocol"],
        ),
        (
            &[
                "pipeline",
                "--quiet",
                "--fixmatch-init",
                "oracle",
                "--out",
                o,
            ],
            &["protocols.fixmatch.init", "oracle", "auto, finetune, lpft"],
        ),
        (
            &[
                "pipeline",
                "--quiet",
                "--transfer-augment",
                "wobble",
                "--out",
                o,
            ],
            &["transfer.augment", "wobble", "flip-zoom-contrast"],
        ),
        (
            &[
                "pipeline",
                "--quiet",
                "--labels-per-class",
                "1",
                "--transfer-patience",
                "3",
                "--out",
                o,
            ],
            &["early stopping", "at least 2"],
        ),
        (
            &[
                "pipeline",
                "--quiet",
                "--classes",
                "Trouser,Zebra",
                "--out",
                o,
            ],
            &["data.classes", "Zebra", "Trouser"],
        ),
        (
            &[
                "pipeline",
                "--quiet",
                "--dataset",
                "/nonexistent/data",
                "--out",
                o,
            ],
            &["/nonexistent/data", "does not exist"],
        ),
        (
            &["pipeline", "--quiet", "--backbone", "alexnet", "--out", o],
            &["backbone.name", "alexnet"],
        ),
        (
            &[
                "pipeline",
                "--quiet",
                "--labels-per-class",
                "2000",
                "--out",
                o,
            ],
            &["--labels-per-class", "smallest class"],
        ),
        (
            &["pipeline", "--quiet", "--device", "tpu", "--out", o],
            &["--device", "tpu"],
        ),
        (
            &["pipeline", "--quiet", "--embedding", "umap", "--out", o],
            &["embedding", "umap", "pca or tsne"],
        ),
        (
            &[
                "evaluate",
                "--quiet",
                "--checkpoint",
                "/nonexistent/ckpt",
                "--max-train",
                "50",
                "--max-test",
                "10",
            ],
            &["/nonexistent/ckpt"],
        ),
    ];
    for (args, needles) in cases {
        let (ok, stderr) = xtask(args);
        assert!(!ok, "{args:?} should fail");
        for n in needles {
            assert!(stderr.contains(n), "{args:?}: {n:?} not in {stderr:?}");
        }
    }
    assert!(!out.exists(), "failed runs must not write output");
}

#[test]
fn help_documents_the_pipeline_flags() {
    let out = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(["pipeline", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--dataset",
        "--backbone",
        "--pretext",
        "--labels-per-class",
        "--seeds",
        "--epochs",
        "--out",
        "--quiet",
        "--preset",
        "--classes",
        "--pretrain-selected-only",
        "--transfer-augment",
        "--transfer-patience",
        "--transfer-val-fraction",
    ] {
        assert!(help.contains(flag), "{flag} missing from --help");
    }
}

#[test]
fn bench_writes_the_documented_json() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("bench.json");
    let (ok, err) = xtask(&[
        "bench",
        "--models",
        "convnet",
        "--batch",
        "8",
        "--warmup",
        "0",
        "--reps",
        "2",
        "--rounds",
        "2",
        "--no-pytorch",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert!(v["threads"].as_u64().unwrap() >= 1);
    assert_eq!(v["rounds"], 2);
    let rows = v["rows"].as_array().unwrap();
    let impls: Vec<&str> = rows.iter().map(|r| r["impl"].as_str().unwrap()).collect();
    assert_eq!(impls, ["stock", "fast", "stock", "fast"]);
    let rounds: Vec<u64> = rows.iter().map(|r| r["round"].as_u64().unwrap()).collect();
    assert_eq!(rounds, [1, 1, 2, 2]);
    // No PyTorch rows, so no ratios to summarise.
    assert_eq!(v["ratios"].as_array().unwrap().len(), 0);
    for r in rows {
        assert_eq!(r["model"], "convnet");
        assert_eq!(r["batch"], 8);
        assert!(r["images_per_s"].as_f64().unwrap() > 0.0);
        assert!(r["spread"].as_f64().unwrap() >= 0.0);
    }
    // The CPU block, and one set of rows per --simd level.
    let top = v["cpu"]["simd"].as_str().unwrap().to_string();
    assert!(["baseline", "avx2", "avx512"].contains(&top.as_str()));
    assert!(v["cpu"]["features"].is_array() && v["cpu"]["gemm_simd"].is_string());
    let levels = format!("baseline,{top}");
    let (ok, err) = xtask(&[
        "bench",
        "--models",
        "convnet",
        "--kernels",
        "fast",
        "--batch",
        "8",
        "--warmup",
        "0",
        "--reps",
        "1",
        "--no-pytorch",
        "--simd",
        &levels,
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let impls: Vec<&str> = v["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["impl"].as_str().unwrap())
        .collect();
    if top == "baseline" {
        assert_eq!(impls, ["fast", "fast"]);
    } else {
        assert_eq!(impls, ["fast-baseline", "fast"]);
    }
    let (ok, err) = xtask(&["bench", "--rounds", "0", "--no-pytorch"]);
    assert!(!ok && err.contains("--rounds"), "{err}");
    let (ok, err) = xtask(&["bench", "--simd", "sse9", "--no-pytorch"]);
    assert!(!ok && err.contains("sse9"), "{err}");
    let (ok, err) = xtask(&["bench", "--kernels", "turbo", "--no-pytorch"]);
    assert!(!ok && err.contains("turbo"), "{err}");
    // Checked before anything is timed (PyTorch rows included).
    let (ok, err) = xtask(&["bench", "--objectives", "rotation,moco"]);
    assert!(
        !ok && err.contains("moco") && err.contains("simclr"),
        "{err}"
    );
}

#[test]
fn recipe_files_and_method_names_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let o = out.to_str().unwrap();
    let typo = dir.path().join("typo.json");
    std::fs::write(&typo, r#"{"siamese": {"temprature": 0.1}}"#).unwrap();
    let unknown = dir.path().join("unknown.json");
    std::fs::write(&unknown, r#"{"bogus": 1}"#).unwrap();
    let broken = dir.path().join("broken.json");
    std::fs::write(&broken, "{not json").unwrap();
    for (file, needle) in [
        (&typo, "temprature"),
        (&unknown, "unknown recipe field \"bogus\""),
        (&broken, "not valid JSON"),
    ] {
        let f = file.to_str().unwrap();
        let (ok, stderr) = xtask(&["pipeline", "--quiet", "--recipe", f, "--out", o]);
        assert!(!ok, "{f} should fail");
        assert!(stderr.contains(f) || stderr.contains(needle), "{stderr}");
        assert!(stderr.contains(needle), "{needle:?} not in {stderr:?}");
    }
    let (ok, stderr) = xtask(&[
        "pipeline",
        "--quiet",
        "--pretext",
        "rotation,dino",
        "--out",
        o,
    ]);
    assert!(!ok);
    assert!(
        stderr.contains("dino") && stderr.contains("simclr"),
        "{stderr}"
    );
    let (ok, stderr) = xtask(&["pipeline", "--quiet", "--view-augment", "fancy", "--out", o]);
    assert!(!ok);
    assert!(stderr.contains("simclr-mnist"), "{stderr}");
    assert!(!out.exists(), "failed runs must not write output");
}

#[test]
fn anomaly_flags_are_checked_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("anomaly");
    let o = out.to_str().unwrap();
    let missing = dir.path().join("no-run").join("scores.csv");
    let m = missing.to_str().unwrap();
    let cases: [(&[&str], &[&str]); 8] = [
        (&["rescore", "--scores", m], &["no-run", "scores.csv"]),
        (
            &["rescore", "--scores", m, "--pixel-weights", "1,inf"],
            &["--pixel-weights", "inf"],
        ),
        (
            &["anomaly", "--quiet", "--pixel-weight=-1", "--out", o],
            &["--pixel-weight", "-1", ">= 0"],
        ),
        (
            &["anomaly", "--quiet", "--pixel-blur", "NaN", "--out", o],
            &["--pixel-blur", "NaN"],
        ),
        (
            &["anomaly", "--quiet", "--protocol", "two-class", "--out", o],
            &["--protocol", "two-class", "one-class, faces, folders"],
        ),
        (
            &["anomaly", "--quiet", "--transforms", "rot5", "--out", o],
            &["--transforms", "rot5", "geo72"],
        ),
        (
            &["anomaly", "--quiet", "--score", "entropy", "--out", o],
            &["--score", "entropy", "dirichlet"],
        ),
        (
            &["anomaly", "--quiet", "--protocol", "folders", "--out", o],
            &["--normal", "folders"],
        ),
    ];
    fails_cleanly(&cases, &out);
}

#[test]
fn text_flags_and_corpora_are_checked_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("text");
    let o = out.to_str().unwrap();
    let binary = dir.path().join("corpus.txt");
    std::fs::write(&binary, b"fine text\n\n\xff\xfe not utf-8").unwrap();
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let (b, e) = (binary.to_str().unwrap(), empty.to_str().unwrap());
    let blank = dir.path().join("blank.txt");
    std::fs::write(&blank, b"").unwrap();
    let nul = dir.path().join("model.bin");
    std::fs::write(&nul, b"\0\0\0\x01weights").unwrap();
    let few = dir.path().join("few.txt");
    std::fs::write(&few, "One sentence. Two.\nThree here.\nFour. Five.\n").unwrap();
    let (bl, nu, fe) = (
        blank.to_str().unwrap(),
        nul.to_str().unwrap(),
        few.to_str().unwrap(),
    );
    let cases: [(&[&str], &[&str]); 15] = [
        (
            &["text", "--quiet", "--set", "eval_mask_rate=0", "--out", o],
            &["eval_mask_rate", "strictly between 0 and 1"],
        ),
        (
            &["text", "--quiet", "--set", "init_range=0", "--out", o],
            &["init_range", "must be a positive number"],
        ),
        (
            &["text", "--quiet", "--train-corpus", b, "--out", o],
            &["corpus.txt", "not UTF-8"],
        ),
        (
            &["text", "--quiet", "--train-corpus", bl, "--out", o],
            &["blank.txt", "no paragraphs"],
        ),
        (
            &[
                "text",
                "--quiet",
                "--corpus",
                "/nonexistent/book.txt",
                "--out",
                o,
            ],
            &["--corpus", "/nonexistent/book.txt", "does not exist"],
        ),
        (
            &["text", "--quiet", "--corpus", b, "--out", o],
            &["corpus.txt", "not UTF-8"],
        ),
        (
            &["text", "--quiet", "--corpus", e, "--out", o],
            &["empty", "no text files"],
        ),
        (
            &[
                "text", "--quiet", "--hidden", "30", "--heads", "4", "--out", o,
            ],
            &["hidden size 30", "4 heads"],
        ),
        (
            &["text", "--quiet", "--heldout-fraction", "1.5", "--out", o],
            &["--heldout-fraction", "1.5"],
        ),
        (
            &["text", "--fill", "Rust is a [MASK] language.", "--out", o],
            &["no checkpoint", "cargo xtask text"],
        ),
        (
            &["text", "--quiet", "--corpus", bl, "--out", o],
            &["blank.txt", "0 paragraph(s)"],
        ),
        (
            &["text", "--quiet", "--corpus", nu, "--out", o],
            &["model.bin", "binary data", "NUL byte at offset 0"],
        ),
        (
            &[
                "text",
                "--quiet",
                "--objectives",
                "mlm,nsp",
                "--corpus",
                fe,
                "--out",
                o,
            ],
            &["training text has 3 sentence(s)", "at least 32 sentences"],
        ),
        (
            &["text", "--quiet", "--objectives", "nsp", "--out", o],
            &["objectives", "\"nsp\"", "mlm,nsp"],
        ),
        (
            &["text", "--nsp", "A first.", "A second.", "--out", o],
            &["no checkpoint"],
        ),
    ];
    fails_cleanly(&cases, &out);
}

/// Caches a stand-in for the fetched Tiny ImageNet under `root`: real
/// embedded Fashion-MNIST images (16x16 centre crops, grey copied to RGB),
/// four classes under WordNet ids, the preset's two among them; 30
/// training and 10 test images per class.
fn cache_tiny_imagenet_stand_in(root: &std::path::Path) {
    use selfsup::data::cache::{self, Manifest, Split};
    use selfsup::data::Dataset;
    let pair = selfsup::data::load("fashion-mnist").unwrap();
    // goose, goldfish, and two other classes
    let names = ["n01855672", "n01443537", "n01629819", "n02085620"];
    let sources = [0u32, 6, 1, 9]; // T-shirt, Shirt, Trouser, Ankle boot
    let split = |ds: &Dataset, per_class: usize| -> Split {
        let y = ds.labels().unwrap();
        let (mut px, mut labels) = (Vec::new(), Vec::new());
        for (c, &src) in sources.iter().enumerate() {
            for i in (0..ds.len()).filter(|&i| y[i] == src).take(per_class) {
                for _ in 0..3 {
                    for r in 6..22 {
                        px.extend_from_slice(&ds.image(i)[r * 28 + 6..r * 28 + 22]);
                    }
                }
                labels.push(c as u32);
            }
        }
        let n = labels.len();
        let names = names.iter().map(|s| s.to_string()).collect();
        Split {
            dataset: Dataset::new(px, (n, 3, 16, 16), Some(labels), names).unwrap(),
            attributes: Vec::new(),
        }
    };
    let (train, test) = (split(&pair.train, 30), split(&pair.test, 10));
    let manifest = Manifest {
        format_version: cache::FORMAT_VERSION,
        name: "tiny-imagenet".into(),
        repo: "zh-plus/tiny-imagenet".into(),
        revision: "0".repeat(40),
        train_files: Vec::new(),
        test_files: Vec::new(),
        test_split: "valid".into(),
        label_column: "label".into(),
        classes: names.iter().map(|s| s.to_string()).collect(),
        image_shape: [3, 16, 16],
        train_images: train.dataset.len(),
        test_images: test.dataset.len(),
        attributes: Vec::new(),
    };
    cache::store(root, &manifest, &train, &test).unwrap();
}

#[test]
fn duck_fish_preset_pretrains_on_every_class_and_early_stops_the_transfer() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let out = dir.path().join("run");
    let o = out.to_str().unwrap();
    let run = |extra: &[&str]| {
        let mut args = vec![
            "pipeline",
            "--preset",
            "tiny-imagenet-duck-fish",
            "--quiet",
            "--out",
            o,
        ];
        args.extend_from_slice(extra);
        Command::new(env!("CARGO_BIN_EXE_xtask"))
            .args(&args)
            .env("SELFSUP_CACHE", &cache)
            .output()
            .unwrap()
    };
    // Not fetched yet: says what to fetch, writes nothing.
    let r = run(&[]);
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(!r.status.success());
    assert!(
        err.contains("cargo xtask fetch --dataset tiny-imagenet"),
        "{err}"
    );
    assert!(!out.exists());

    cache_tiny_imagenet_stand_in(&cache);
    // The preset's own backbone, augmentation and early stopping; sizes cut
    // down so the test stays small.
    let r = run(&[
        "--labels-per-class",
        "5",
        "--seeds",
        "0",
        "--epochs",
        "1",
        "--transfer-epochs",
        "3",
        "--width-multiplier",
        "0.25",
        "--no-knn-monitor",
    ]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let read = |p: &str| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(out.join(p)).unwrap()).unwrap()
    };
    let report = read("report.json");
    assert_eq!(report["dataset"], "tiny-imagenet[n01855672,n01443537]");
    assert_eq!(report["backbone"], "mobilenetv2");
    let recipe = &report["config"]["recipe"];
    assert_eq!(recipe["transfer_augment"], "flip-zoom-contrast");
    assert_eq!(recipe["transfer_patience"], 5);
    assert_eq!(recipe["pretrain_all_classes"], true);
    // Pretraining saw all four classes but the 10 labeled images.
    let pre = read("pretrain-rotation/config.json");
    assert_eq!(pre["dataset"], "tiny-imagenet");
    assert_eq!(pre["metrics"]["unlabeled_images"], 4 * 30 - 2 * 5);
    // A two-way classifier, one labeled image per class held out.
    let ft = read("seed0/k5/rotation-finetune/config.json");
    assert_eq!(ft["head_outputs"], 2);
    assert_eq!(ft["metrics"]["validation_images"], 2);
    assert_eq!(ft["recipe"]["transfer"]["augment"]["ops"][1]["op"], "zoom");
}

/// Flags of a run small enough for a test.
const TINY: [&str; 18] = [
    "--quiet",
    "--max-train",
    "300",
    "--max-test",
    "100",
    "--seeds",
    "0",
    "--labels-per-class",
    "2",
    "--widths",
    "4,8",
    "--depth",
    "1",
    "--set",
    "methods.rotation.epochs=1",
    "--unlabeled",
    "64",
    "--no-knn-monitor",
];

#[test]
fn a_run_is_reproduced_from_its_experiment_toml() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let recipe = dir.path().join("recipe.json");
    std::fs::write(&recipe, r#"{"transfer_epochs": 2, "linear_steps": 10}"#).unwrap();
    let mut args = vec!["pipeline"];
    args.extend(TINY);
    let a_str = a.to_str().unwrap();
    args.extend([
        "--recipe",
        recipe.to_str().unwrap(),
        "--set",
        "methods.rotation.batch=32",
        "--set",
        "protocols.run=[\"finetune\", \"knn\"]",
        "--out",
        a_str,
    ]);
    let (ok, err) = xtask(&args);
    assert!(ok, "{err}");
    let spec = std::fs::read_to_string(a.join("experiment.toml")).unwrap();
    let table: toml::Table = toml::from_str(&spec).unwrap();
    assert_eq!(
        table["transfer"]["epochs"].as_integer(),
        Some(2),
        "--recipe reached the spec"
    );
    assert_eq!(
        table["methods"]["rotation"]["batch"].as_integer(),
        Some(32),
        "--set reached a nested field"
    );
    assert_eq!(table["backbone"]["widths"].as_array().unwrap().len(), 2);
    let config = a.join("experiment.toml");
    let (ok, err) = xtask(&[
        "pipeline",
        "--quiet",
        "--config",
        config.to_str().unwrap(),
        "--out",
        b.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let results = |d: &std::path::Path| -> serde_json::Value {
        let r: serde_json::Value =
            serde_json::from_slice(&std::fs::read(d.join("report.json")).unwrap()).unwrap();
        r["results"].clone()
    };
    assert_eq!(results(&a), results(&b));
    assert_eq!(
        results(&a).as_array().unwrap().len(),
        4,
        "2 methods x finetune, knn"
    );
    assert_eq!(
        std::fs::read_to_string(b.join("experiment.toml")).unwrap(),
        spec
    );
}

#[test]
fn spec_files_presets_and_set_are_checked_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let o = out.to_str().unwrap();
    let typo = dir.path().join("typo.toml");
    std::fs::write(
        &typo,
        "[transfer]\nepochs = 3\n[protocols.fixmatch]\nthreshhold = 0.9\n",
    )
    .unwrap();
    let t = typo.to_str().unwrap();
    let broken = dir.path().join("broken.toml");
    std::fs::write(&broken, "[transfer\nepochs = 3\n").unwrap();
    let b = broken.to_str().unwrap();
    let anomaly_typo = dir.path().join("anomaly.toml");
    std::fs::write(&anomaly_typo, "protocol = \"faces\"\nepoch = 3\n").unwrap();
    let at = anomaly_typo.to_str().unwrap();
    let text_typo = dir.path().join("text.toml");
    std::fs::write(&text_typo, "hiden = 32\n").unwrap();
    let tt = text_typo.to_str().unwrap();
    let cases: [(&[&str], &[&str]); 8] = [
        (
            &["pipeline", "--quiet", "--config", t, "--out", o],
            &["typo.toml", "protocols.fixmatch.threshhold"],
        ),
        (
            &["pipeline", "--quiet", "--config", b, "--out", o],
            &["broken.toml"],
        ),
        (
            &[
                "pipeline",
                "--quiet",
                "--preset",
                "svhn-street-numbers",
                "--dataset",
                "fashion-mnist",
                "--out",
                o,
            ],
            &["svhn-street-numbers", "svhn", "fashion-mnist"],
        ),
        (
            &[
                "pipeline",
                "--quiet",
                "--set",
                "transfer.epochs=0",
                "--out",
                o,
            ],
            &["transfer.epochs", "at least 1"],
        ),
        (
            &[
                "pipeline",
                "--quiet",
                "--set",
                "transfer.linear_probe.step=3",
                "--out",
                o,
            ],
            &["transfer.linear_probe.step"],
        ),
        (
            &["pipeline", "--quiet", "--set", "epochs", "--out", o],
            &["PATH=VALUE"],
        ),
        (
            &["anomaly", "--quiet", "--config", at, "--out", o],
            &["anomaly.toml", "epoch"],
        ),
        (
            &["text", "--quiet", "--config", tt, "--out", o],
            &["text.toml", "hiden"],
        ),
    ];
    fails_cleanly(&cases, &out);
}

#[test]
fn spec_prints_the_resolved_spec_and_never_overwrites() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args([
            "spec",
            "--preset",
            "tiny-imagenet-duck-fish",
            "--set",
            "transfer.epochs=7",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table: toml::Table = toml::from_str(&String::from_utf8_lossy(&out.stdout)).unwrap();
    assert_eq!(table["data"]["dataset"].as_str(), Some("tiny-imagenet"));
    assert_eq!(table["transfer"]["epochs"].as_integer(), Some(7));
    let file = dir.path().join("spec.toml");
    std::fs::write(&file, "mine").unwrap();
    let (ok, err) = xtask(&["spec", "--out", file.to_str().unwrap()]);
    assert!(!ok && err.contains("exists"), "{err}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "mine");
}

/// Runs xtask with `args` followed by the tiny-run flags.
fn tiny(args: &[&str]) -> (bool, String) {
    let mut all: Vec<&str> = args.to_vec();
    all.extend(TINY.iter().filter(|f| !["--seeds", "0"].contains(f)));
    xtask(&all)
}

#[test]
fn a_users_files_are_never_overwritten_and_runs_are_not_mixed() {
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(name);
    let s = |path: &std::path::Path| path.to_str().unwrap().to_string();
    // A user's directory and file as --out: refused, even with --force.
    std::fs::create_dir(p("mine")).unwrap();
    std::fs::write(p("mine/thesis.tex"), "years of work").unwrap();
    std::fs::write(p("notes.txt"), "mine").unwrap();
    for cmd in ["pretrain", "transfer"] {
        for out in [s(&p("mine")), s(&p("notes.txt"))] {
            for force in [false, true] {
                let mut args = vec![cmd, "--out", out.as_str()];
                if force {
                    args.push("--force");
                }
                let (ok, err) = tiny(&args);
                assert!(!ok, "{args:?} must fail");
                assert!(
                    err.contains("not a directory") || err.contains("did not write"),
                    "{err}"
                );
            }
        }
    }
    assert_eq!(
        std::fs::read_to_string(p("mine/thesis.tex")).unwrap(),
        "years of work"
    );
    assert_eq!(std::fs::read_to_string(p("notes.txt")).unwrap(), "mine");
    assert_eq!(std::fs::read_dir(p("mine")).unwrap().count(), 1);

    // The success paths of pretrain, transfer and evaluate.
    let (pre, tr) = (s(&p("pre")), s(&p("tr")));
    let (ok, err) = tiny(&["pretrain", "--out", &pre]);
    assert!(ok, "{err}");
    let (ok, err) = tiny(&["transfer", "--init", &pre, "--out", &tr]);
    assert!(ok, "{err}");
    let result = s(&p("eval.json"));
    let (ok, err) = tiny(&["evaluate", "--checkpoint", &tr, "--out", &result]);
    assert!(ok, "{err}");
    // ... and a second time: refused without --force, replaced with it.
    let (ok, err) = tiny(&["pretrain", "--out", &pre]);
    assert!(!ok && err.contains("--force"), "{err}");
    let (ok, err) = tiny(&["evaluate", "--checkpoint", &tr, "--out", &result]);
    assert!(!ok && err.contains("--force"), "{err}");
    let (ok, err) = tiny(&["pretrain", "--force", "--out", &pre]);
    assert!(ok, "{err}");

    // A finished pipeline run is not mixed with another one.
    let run = s(&p("run"));
    let (ok, err) = tiny(&["pipeline", "--seeds", "0", "--out", &run]);
    assert!(ok, "{err}");
    let report = std::fs::read(p("run/report.json")).unwrap();
    let (ok, err) = tiny(&[
        "pipeline",
        "--seeds",
        "0",
        "--transfer-epochs",
        "3",
        "--out",
        &run,
    ]);
    assert!(
        !ok && err.contains("--resume") && err.contains("--force"),
        "{err}"
    );
    assert_eq!(std::fs::read(p("run/report.json")).unwrap(), report);
    let marker = std::fs::read_to_string(p("run/.selfsup-run.json")).unwrap();
    assert!(marker.contains("complete"), "{marker}");

    if !cfg!(feature = "hub") {
        return; // no publish command in this build
    }
    // publish --out may not replace the run it publishes.
    for out in [run.clone(), s(&p("run/seed0")), s(&p("mine"))] {
        let (ok, err) = xtask(&[
            "publish",
            "--run",
            &run,
            "--repo",
            "me/x",
            "--dry-run",
            "--out",
            &out,
        ]);
        assert!(!ok, "publish --out {out} must fail");
        assert!(err.contains("--out"), "{err}");
    }
    assert_eq!(std::fs::read(p("run/report.json")).unwrap(), report);
    let (ok, err) = xtask(&["publish", "--run", &run, "--repo", "me/x", "--dry-run"]);
    assert!(ok, "{err}");
    assert!(p("run/hub/model.safetensors").is_file());
    // Weights that are not the report's are not published.
    let cfg_path = p("run/pretrain-rotation/config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&cfg_path).unwrap()).unwrap();
    cfg["metrics"]["val_loss"] = serde_json::json!(123.0);
    std::fs::write(&cfg_path, serde_json::to_vec(&cfg).unwrap()).unwrap();
    let (ok, err) = xtask(&["publish", "--run", &run, "--repo", "me/x", "--dry-run"]);
    assert!(
        !ok && err.contains("not the ones report.json describes"),
        "{err}"
    );
}

#[test]
fn usage_errors_exit_2_and_other_errors_exit_1() {
    let code = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_xtask"))
            .args(args)
            .output()
            .unwrap()
            .status
            .code()
    };
    assert_eq!(code(&["pipeline", "--no-such-flag"]), Some(2));
    assert_eq!(code(&["no-such-command"]), Some(2));
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let o = out.to_str().unwrap();
    assert_eq!(
        code(&[
            "pipeline",
            "--quiet",
            "--set",
            "transfer.epochs=0",
            "--out",
            o
        ]),
        Some(1)
    );
    assert_eq!(
        code(&["spec", "--from-report", "/no/such/report.json"]),
        Some(1)
    );
    assert!(!out.exists());
}

/// Epochs a stage's kept state (`<stage>/.progress`) says are done.
fn epochs_done(progress: &std::path::Path) -> u64 {
    std::fs::read(progress.join("state.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v["epochs_done"].as_u64())
        .unwrap_or(0)
}

/// Runs xtask with `args` and kills it with SIGKILL (no cleanup of any
/// kind) once the stage state in `progress` has `epochs` epochs done.
fn kill_after(args: &[String], progress: &std::path::Path, epochs: u64) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(args)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    while epochs_done(progress) < epochs && start.elapsed().as_secs() < 300 {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert!(!status.success(), "the run was killed mid-stage");
    assert!(
        epochs_done(progress) >= epochs,
        "{} had finished epochs to resume from",
        progress.display()
    );
}

/// A pipeline killed with SIGKILL in the middle of pretraining, then run
/// again with `--resume`, ends with the report of a run never interrupted
/// (MoCo: its momentum encoder and key queue are part of the state).
#[test]
fn a_killed_pretraining_resumes_to_the_same_report() {
    let dir = tempfile::tempdir().unwrap();
    let flags = |out: &std::path::Path| -> Vec<String> {
        let mut f: Vec<String> = [
            "pipeline",
            "--quiet",
            "--max-train",
            "300",
            "--max-test",
            "100",
            "--seeds",
            "0",
            "--labels-per-class",
            "2",
            "--widths",
            "4,8",
            "--depth",
            "1",
            "--unlabeled",
            "128",
            "--pretext",
            "moco",
            "--contrastive-batch",
            "32",
            "--contrastive-epochs",
            "40",
            "--set",
            "methods.moco.patience=100",
            "--set",
            "methods.moco.projector.dim=16",
            "--set",
            "methods.moco.queue_size=64",
            "--transfer-epochs",
            "2",
        ]
        .map(String::from)
        .to_vec();
        f.extend(["--out".to_string(), out.display().to_string()]);
        f
    };
    let results = |out: &std::path::Path| -> (serde_json::Value, serde_json::Value) {
        let r: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap();
        (
            r["results"].clone(),
            r["pretraining"][0]["val_loss"].clone(),
        )
    };
    let whole = dir.path().join("whole");
    let (ok, err) = xtask(&flags(&whole).iter().map(String::as_str).collect::<Vec<_>>());
    assert!(ok, "{err}");

    let killed = dir.path().join("killed");
    kill_after(&flags(&killed), &killed.join("pretrain-moco/.progress"), 5);
    assert!(!killed.join("report.json").exists());

    let mut again = flags(&killed);
    again.push("--resume".into());
    let (ok, err) = xtask(&again.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(ok, "{err}");
    assert_eq!(results(&killed), results(&whole));
    assert!(!killed.join("pretrain-moco/.progress").exists());
}

/// Killed in the middle of a fine-tune (whose early stopping keeps a
/// validation history) and again in the middle of FixMatch (whose
/// pseudo-label counts and distribution alignment carry across steps), and
/// continued with `--resume` each time, a pipeline ends with the report and
/// stage metrics of a run never interrupted. Its state is kept every second
/// epoch, so each resume also redoes an epoch.
#[test]
fn a_run_killed_in_transfer_resumes_to_the_same_report() {
    let dir = tempfile::tempdir().unwrap();
    let flags = |out: &std::path::Path| -> Vec<String> {
        let mut f: Vec<String> = [
            "pipeline",
            "--quiet",
            "--max-train",
            "400",
            "--max-test",
            "100",
            "--seeds",
            "0",
            "--labels-per-class",
            "5",
            "--widths",
            "4,8",
            "--depth",
            "1",
            "--unlabeled",
            "128",
            "--pretext",
            "rotation",
            "--epochs",
            "1",
            "--transfer-epochs",
            "40",
            "--set",
            "transfer.patience=100",
            "--set",
            "transfer.batch=8",
            "--fixmatch-epochs",
            "12",
            "--fixmatch-align",
            "--set",
            "protocols.fixmatch.batch=16",
            "--set",
            "protocols.fixmatch.labeled_batch=8",
            "--set",
            "protocols.fixmatch.threshold=0.3",
            "--no-lpft",
            "--checkpoint-every",
            "2",
        ]
        .map(String::from)
        .to_vec();
        f.extend(["--out".to_string(), out.display().to_string()]);
        f
    };
    let read = |p: std::path::PathBuf| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap()
    };
    // The results and the stages' metrics, less their timings.
    let outcome = |out: &std::path::Path| {
        let stage = |name: &str| {
            let mut m =
                read(out.join("seed0/k5").join(name).join("config.json"))["metrics"].clone();
            let m2 = m.as_object_mut().unwrap();
            m2.remove("seconds");
            m2.remove("images_per_s");
            m
        };
        (
            read(out.join("report.json"))["results"].clone(),
            stage("scratch-finetune"),
            stage("scratch-fixmatch"),
        )
    };
    let whole = dir.path().join("whole");
    let (ok, err) = xtask(&flags(&whole).iter().map(String::as_str).collect::<Vec<_>>());
    assert!(ok, "{err}");
    assert!(outcome(&whole).1["val_error"].as_array().unwrap().len() > 3);

    let killed = dir.path().join("killed");
    let mut again = flags(&killed);
    again.push("--resume".into());
    kill_after(
        &flags(&killed),
        &killed.join("seed0/k5/scratch-finetune/.progress"),
        3,
    );
    kill_after(
        &again,
        &killed.join("seed0/k5/scratch-fixmatch/.progress"),
        4,
    );
    let out = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(&again)
        .env("SELFSUP_LOG", "info")
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert!(
        log.contains("continuing from the state a killed run left"),
        "it continued, not started over: {log}"
    );
    assert!(
        !log.contains(" INFO "),
        "info lines read as plain lines, without level or timestamp: {log}"
    );
    assert_eq!(outcome(&killed), outcome(&whole));
    assert!(!killed.join("seed0/k5/scratch-fixmatch/.progress").exists());

    // A different spec is not continued: the first differing setting is named.
    let mut other = again.clone();
    other.extend(["--set".into(), "transfer.lr=0.5".into()]);
    let (ok, err) = xtask(&other.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(
        !ok && err.contains("transfer.lr") && err.contains("--force"),
        "{err}"
    );
}
