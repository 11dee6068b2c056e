//! End-to-end tests of the pipeline on tiny slices of the embedded data.

use candle_core::Device;
use selfsup::core::report::Report;
use selfsup::data::idx;
use selfsup::pipeline::{PipelineOptions, Projection};
use selfsup::spec::{BackboneSpec, Experiment, Recipe};
use std::path::{Path, PathBuf};

/// The settings of a test run in the flat form these tests were written
/// in; [`Opts::spec`] turns them into the experiment spec through the
/// `--recipe` shim, so every test here also covers the shim.
#[derive(Clone)]
struct Opts {
    dataset: String,
    backbone: String,
    pretext: Vec<String>,
    labels_per_class: Vec<usize>,
    seeds: Vec<u64>,
    recipe: Recipe,
    out: PathBuf,
    max_train: Option<usize>,
    max_test: Option<usize>,
    resume: bool,
    reuse_pretraining: bool,
    embedding: Projection,
}

impl Opts {
    fn spec(&self) -> selfsup::core::Result<Experiment> {
        let mut base = Experiment::default();
        base.data.dataset = self.dataset.clone();
        base.data.max_train = self.max_train;
        base.data.max_test = self.max_test;
        base.backbone = BackboneSpec::from_name(&self.backbone)?;
        base.pretrain.methods = self.pretext.clone();
        base.split.labels_per_class = self.labels_per_class.clone();
        base.split.seeds = self.seeds.clone();
        Ok(self.recipe.clone().into_experiment(base))
    }
}

fn run(o: &Opts) -> selfsup::core::Result<Report> {
    selfsup::pipeline::run(&PipelineOptions {
        spec: o.spec()?,
        out: o.out.clone(),
        device: Device::Cpu,
        quiet: true,
        resume: o.resume,
        reuse_pretraining: o.reuse_pretraining,
        checkpoint_every: 1,
        force: false,
        embedding: o.embedding,
    })
}

fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// The string `field` of every object in the JSON array `list`.
fn field_values<'a>(list: &'a serde_json::Value, field: &str) -> Vec<&'a str> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|r| r[field].as_str().unwrap())
        .collect()
}

fn tiny_recipe() -> Recipe {
    Recipe {
        convnet_widths: vec![4, 8],
        convnet_depth: 1,
        pretrain_epochs: 1,
        pretrain_batch: 32,
        unlabeled: Some(128),
        max_val: 32,
        transfer_epochs: 2,
        transfer_batch: 16,
        // on by default; the distill test turns it back on
        lpft: false,
        linear_steps: 20,
        eval_batch: 100,
        ..Recipe::default()
    }
}

fn options(dataset: &str, out: &Path) -> Opts {
    Opts {
        dataset: dataset.to_string(),
        backbone: "convnet".into(),
        pretext: vec!["rotation".into()],
        labels_per_class: vec![2],
        seeds: vec![0],
        recipe: tiny_recipe(),
        out: out.to_path_buf(),
        max_train: Some(400),
        max_test: Some(100),
        resume: false,
        reuse_pretraining: false,
        embedding: Projection::Pca,
    }
}

#[test]
fn pipeline_runs_end_to_end_and_writes_report_and_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let report = run(&options("fashion-mnist", &out)).unwrap();

    // 2 methods x 3 protocols x 1 K x 1 seed
    assert_eq!(report.results.len(), 6);
    for r in &report.results {
        assert!((0.0..=1.0).contains(&r.test_accuracy), "{r:?}");
        assert_eq!(r.labels_per_class, 2);
    }
    let json: serde_json::Value = read_json(&out.join("report.json"));
    assert_eq!(json["dataset"], "fashion-mnist");
    assert_eq!(json["backbone"], "convnet");
    assert_eq!(json["seeds"], serde_json::json!([0]));
    let methods: Vec<&str> = field_values(&json["results"], "method");
    assert!(methods.contains(&"scratch") && methods.contains(&"rotation"));
    let protocols: Vec<&str> = field_values(&json["results"], "protocol");
    for p in ["finetune", "linear", "knn"] {
        assert!(protocols.contains(&p));
    }
    let stages: Vec<&str> = field_values(&json["stages"], "name");
    assert!(stages.contains(&"pretrain") && stages.contains(&"transfer"));
    // The frozen-feature protocols learn something from 2 labeled images
    // per class: above the 10 % of guessing among 10 classes (measured:
    // 0.23-0.35 on 100 test images). Two epochs of fine-tuning on 20
    // images are still at chance, so they are not checked here.
    for r in report.results.iter().filter(|r| r.protocol != "finetune") {
        assert!(r.test_accuracy > 0.18, "{r:?}");
    }
    // The gain table, recomputed from `results` alone (one seed: the means
    // are the accuracies): rotation's best protocol against scratch's best
    // among the same protocols.
    let acc = |m: &str, p: &str| -> f64 {
        json["results"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["method"] == m && r["protocol"] == p)
            .and_then(|r| r["test_accuracy"].as_f64())
            .unwrap()
    };
    let best = |m: &str| {
        ["finetune", "linear", "knn"]
            .iter()
            .map(|p| (acc(m, p), *p))
            .fold((f64::MIN, ""), |a, b| if b.0 > a.0 { b } else { a })
    };
    let (pre, scratch) = (best("rotation"), best("scratch"));
    let gain = &json["gains"][0];
    assert_eq!(gain["best_protocol"], pre.1);
    assert_eq!(gain["best_scratch_protocol"], scratch.1);
    let points = gain["gain_vs_best_scratch_points"].as_f64().unwrap();
    assert!(
        (points - 100.0 * (pre.0 - scratch.0)).abs() < 1e-9,
        "{gain}"
    );
    let ft = gain["gain_vs_scratch_points"].as_f64().unwrap();
    assert!((ft - 100.0 * (pre.0 - acc("scratch", "finetune"))).abs() < 1e-9);
    assert!(std::fs::read_to_string(out.join("report.md"))
        .unwrap()
        .contains("| rotation | finetune | 2 |"));
    for stage in [
        "pretrain-rotation",
        "seed0/k2/scratch-finetune",
        "seed0/k2/rotation-finetune",
    ] {
        assert!(
            out.join(stage).join("model.safetensors").is_file(),
            "{stage}"
        );
        let cfg: serde_json::Value = read_json(&out.join(stage).join("config.json"));
        assert_eq!(cfg["backbone"]["kind"], "convnet");
        assert_eq!(cfg["input_shape"], serde_json::json!([1, 28, 28]));
        assert_eq!(cfg["seed"], 0);
        assert!(cfg["normalization"]["mean"][0].as_f64().unwrap() > 0.0);
    }
    // Every stage's metrics.csv reads back: Lightning's columns, one row
    // per step plus one per epoch, and the epoch rows hold the losses the
    // stage's config.json and the report give.
    for stage in [
        "pretrain-rotation",
        "seed0/k2/scratch-finetune",
        "seed0/k2/rotation-finetune",
    ] {
        let csv = std::fs::read_to_string(out.join(stage).join("metrics.csv")).unwrap();
        let mut lines = csv.lines();
        let header: Vec<&str> = lines.next().unwrap().split(',').collect();
        assert_eq!(
            header[..6],
            [
                "step",
                "epoch",
                "lr",
                "train_loss_step",
                "train_loss_epoch",
                "val_loss"
            ],
            "{stage}"
        );
        let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
        assert!(rows.iter().all(|r| r.len() == header.len()), "{stage}");
        let epoch_rows: Vec<&Vec<&str>> = rows.iter().filter(|r| !r[4].is_empty()).collect();
        let metrics = &read_json(&out.join(stage).join("config.json"))["metrics"];
        let train_loss: Vec<f64> = epoch_rows.iter().map(|r| r[4].parse().unwrap()).collect();
        let want: Vec<f64> = metrics["train_loss"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        assert_eq!(train_loss, want, "{stage}");
        let steps = rows.len() - epoch_rows.len();
        assert!(steps >= epoch_rows.len() && rows.iter().all(|r| !r[0].is_empty()));
        // Step rows carry the learning rate of their step.
        assert!(rows
            .iter()
            .filter(|r| r[4].is_empty())
            .all(|r| r[2].parse::<f64>().is_ok()));
        if stage.starts_with("pretrain") {
            let last: f64 = epoch_rows.last().unwrap()[5].parse().unwrap();
            assert_eq!(
                last, report.pretraining[0].val_loss,
                "the report's held-out loss"
            );
        }
    }
    // A pretrained checkpoint carries the rotation head, a transfer one the class head.
    let pre: serde_json::Value = read_json(&out.join("pretrain-rotation/config.json"));
    assert_eq!(pre["head_outputs"], 4);
    // No temporary files are left behind; the run is marked complete.
    for d in [out.clone(), out.join("seed0")] {
        for e in std::fs::read_dir(d).unwrap() {
            let name = e.unwrap().file_name().to_string_lossy().into_owned();
            let marker = name == selfsup::core::output::MARKER_FILE;
            assert!(!name.starts_with('.') || marker, "leftover {name}");
        }
    }
    let marker = selfsup::core::output::marker(&out).expect("a marker");
    assert_eq!(
        (marker.command.as_str(), marker.state),
        ("pipeline", selfsup::core::output::RunState::Complete)
    );
    // The same run again needs --resume or --force, and leaves it as it was.
    let report = std::fs::read(out.join("report.json")).unwrap();
    let e = run(&options("fashion-mnist", &out))
        .unwrap_err()
        .to_string();
    assert!(e.contains("--resume") && e.contains("--force"), "{e}");
    assert_eq!(std::fs::read(out.join("report.json")).unwrap(), report);
}

#[test]
fn same_seed_gives_the_same_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = options("fashion-mnist", &dir.path().join("a"));
    o.max_train = Some(200);
    o.recipe.unlabeled = Some(64);
    let a = run(&o).unwrap();
    o.out = dir.path().join("b");
    let b = run(&o).unwrap();
    let acc = |r: &selfsup::core::report::Report| {
        r.results
            .iter()
            .map(|x| x.test_accuracy)
            .collect::<Vec<_>>()
    };
    assert_eq!(acc(&a), acc(&b));
}

/// Writes an uncompressed MNIST-format directory made from real embedded
/// images: 16x16 centre crops, 4 classes relabelled 0..3.
fn write_other_idx_dir(dir: &Path) {
    let pair = selfsup::data::load("fashion-mnist").unwrap();
    let classes = [1u32, 5, 8, 9]; // trouser, sandal, bag, ankle boot
    for (split, ds, n) in [("train", &pair.train, 600), ("t10k", &pair.test, 120)] {
        let y = ds.labels().unwrap();
        let mut px = Vec::new();
        let mut labels = Vec::new();
        for (i, label) in y.iter().enumerate() {
            if labels.len() == n {
                break;
            }
            if let Some(c) = classes.iter().position(|&c| c == *label) {
                let img = ds.image(i);
                for r in 6..22 {
                    px.extend_from_slice(&img[r * 28 + 6..r * 28 + 22]);
                }
                labels.push(c as u8);
            }
        }
        std::fs::write(
            dir.join(format!("{split}-images-idx3-ubyte")),
            idx::encode_images(labels.len(), 16, 16, &px),
        )
        .unwrap();
        std::fs::write(
            dir.join(format!("{split}-labels-idx1-ubyte")),
            idx::encode_labels(&labels),
        )
        .unwrap();
    }
}

#[test]
fn works_on_another_idx_directory() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("digits");
    std::fs::create_dir(&data).unwrap();
    write_other_idx_dir(&data);
    let out = dir.path().join("run");
    let mut o = options(data.to_str().unwrap(), &out);
    o.max_train = None;
    o.max_test = None;
    let report = run(&o).unwrap();
    assert_eq!(report.results.len(), 6);
    let cfg: serde_json::Value = read_json(&out.join("seed0/k2/scratch-finetune/config.json"));
    assert_eq!(cfg["input_shape"], serde_json::json!([1, 16, 16]));
    assert_eq!(cfg["head_outputs"], 4);
}

#[test]
fn bad_input_fails_clearly_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let err = |o: Opts| run(&o).expect_err("must fail").to_string();

    let e = err(options("/no/such/dataset", &out));
    assert!(
        e.contains("/no/such/dataset") && e.contains("does not exist"),
        "{e}"
    );

    let mut o = options("fashion-mnist", &out);
    o.backbone = "vgg".into();
    let e = err(o);
    assert!(e.contains("backbone.name") && e.contains("vgg"), "{e}");

    let mut o = options("fashion-mnist", &out);
    o.labels_per_class = vec![2, 500];
    let e = err(o);
    assert!(
        e.contains("--labels-per-class") && e.contains("smallest class"),
        "{e}"
    );

    let mut o = options("fashion-mnist", &out);
    o.pretext = vec!["mosaic".into()];
    let e = err(o);
    assert!(
        e.contains("pretrain.methods") && e.contains("mosaic"),
        "{e}"
    );

    // A truncated IDX file in a user directory.
    let data = dir.path().join("broken");
    std::fs::create_dir(&data).unwrap();
    write_other_idx_dir(&data);
    let f = data.join("train-images-idx3-ubyte");
    let bytes = std::fs::read(&f).unwrap();
    std::fs::write(&f, &bytes[..bytes.len() - 100]).unwrap();
    let e = err(options(data.to_str().unwrap(), &out));
    assert!(
        e.contains("train-images-idx3-ubyte") && e.contains("truncated"),
        "{e}"
    );

    assert!(!out.exists(), "a failed run must not write output");
}

#[test]
fn per_seed_pretraining_writes_one_checkpoint_per_seed() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let mut o = options("fashion-mnist", &out);
    o.seeds = vec![3, 4];
    o.max_train = Some(200);
    o.recipe.unlabeled = Some(64);
    o.recipe.pretrain_per_seed = true;
    let report = run(&o).unwrap();
    assert_eq!(report.results.len(), 12);
    assert!(out
        .join("seed3/pretrain-rotation/model.safetensors")
        .is_file());
    assert!(out
        .join("seed4/pretrain-rotation/model.safetensors")
        .is_file());
    assert!(!out.join("pretrain-rotation").exists());
    let cfg: serde_json::Value = read_json(&out.join("seed4/pretrain-rotation/config.json"));
    assert_eq!(cfg["seed"], 4);
    assert_eq!(
        cfg["recipe"]["labels_excluded_for_seeds"],
        serde_json::json!([4])
    );
    assert_eq!(report.summary.iter().map(|s| s.n).max(), Some(2));
}

#[test]
fn pretraining_pool_excludes_every_seeds_labeled_images() {
    let pair = selfsup::data::load("fashion-mnist").unwrap();
    let train = pair.train.take(1000);
    let labels = train.labels().unwrap();
    let pool = selfsup::pipeline::unlabeled_pool(&train, 5, &[0, 1, 2], 0, None).unwrap();
    for s in [0, 1, 2] {
        let labeled = selfsup::data::split::stratified(labels, 5, s)
            .unwrap()
            .labeled;
        assert!(labeled.iter().all(|i| !pool.contains(i)), "seed {s}");
    }
    assert!(pool.len() >= 1000 - 150 && pool.len() < 1000 - 50);
    let capped = selfsup::pipeline::unlabeled_pool(&train, 5, &[0], 7, Some(100)).unwrap();
    assert_eq!(capped.len(), 100);
    assert_eq!(
        capped,
        selfsup::pipeline::unlabeled_pool(&train, 5, &[0], 7, Some(100)).unwrap()
    );
}

#[test]
fn every_two_view_method_runs_and_leaves_figures() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let mut o = options("fashion-mnist", &out);
    o.pretext = [
        "rotation", "jigsaw", "inpaint", "simclr", "byol", "simsiam", "barlow", "vicreg", "moco",
    ]
    .map(String::from)
    .to_vec();
    o.max_train = Some(300);
    o.recipe.unlabeled = Some(64);
    o.recipe.contrastive_epochs = 1;
    o.recipe.contrastive_batch = 16;
    o.recipe.siamese.proj_hidden = 16;
    o.recipe.siamese.proj_dim = 8;
    o.recipe.siamese.queue_size = 32;
    o.embedding = Projection::Tsne;
    let report = run(&o).unwrap();
    let json = read_json(&out.join("report.json"));
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    for m in &o.pretext {
        for p in ["finetune", "linear", "knn"] {
            assert!(
                report
                    .results
                    .iter()
                    .any(|r| &r.method == m && r.protocol == p),
                "{m}/{p} missing"
            );
        }
        let pre = report
            .pretraining
            .iter()
            .find(|p| &p.method == m)
            .unwrap_or_else(|| panic!("{m} has no pretraining row"));
        assert!(pre.val_loss.is_finite() && pre.epochs_run >= 1);
        let knn = pre.knn_monitor.expect("monitor on by default");
        assert!((0.0..=1.0).contains(&knn));
        for kind in ["loss", "embedding"] {
            let rel = format!("figures/{m}-{kind}.png");
            let bytes = std::fs::read(out.join(&rel)).unwrap();
            assert!(bytes.starts_with(b"\x89PNG"), "{rel}");
            assert!(md.contains(&format!("]({rel})")), "{rel} not linked");
        }
        let cfg = read_json(&out.join(format!("pretrain-{m}/config.json")));
        assert_eq!(cfg["method"], m.as_str());
        let steps = cfg["metrics"]["step_loss"].as_array().unwrap();
        assert!(!steps.is_empty(), "{m}: per-step losses recorded");
    }
    let figures: Vec<&str> = field_values(&json["figures"], "path");
    assert!(figures.contains(&"figures/inpaint-reconstruction.png"));
    assert!(
        !figures.contains(&"figures/rotation-reconstruction.png"),
        "only pixel-reconstructing methods draw one"
    );
    let methods: Vec<&str> = field_values(&json["results"], "method");
    assert!(methods.contains(&"simclr") && methods.contains(&"moco"));
    // Two-view checkpoints carry the projection head (proj_dim outputs).
    let simclr = read_json(&out.join("pretrain-simclr/config.json"));
    assert_eq!(simclr["head_outputs"], 8);
    assert_eq!(
        simclr["recipe"]["pretrain"]["view_augment"]["ops"][0]["op"], "resized_crop",
        "the MNIST-scale SimCLR preset was resolved for 28x28 gray images"
    );
}

#[test]
fn class_selection_pretrains_on_every_class_and_transfers_on_the_selection() {
    let classes = vec!["Trouser".to_string(), "Bag".to_string()];
    let prep = selfsup::pipeline::prepare("fashion-mnist", Some(400), Some(100)).unwrap();
    let full_labels = prep.pair.train.labels().unwrap().to_vec();
    let full_norm = prep.norm.clone();
    let prep = selfsup::pipeline::select_classes(prep, &classes, true).unwrap();
    assert_eq!(prep.pair.train.class_names(), classes.as_slice());
    assert_eq!(prep.norm, full_norm, "normalisation of all training images");
    let all = prep.all_classes.as_ref().unwrap();
    assert_eq!(all.train.len(), 400);
    // The selection maps back to the right images of the whole set.
    let sel_labels = prep.pair.train.labels().unwrap();
    for (i, &j) in all.index.iter().enumerate() {
        assert_eq!(all.train.image(j), prep.pair.train.image(i));
        assert_eq!(full_labels[j], [1, 8][sel_labels[i] as usize]);
    }
    let (source, pool) = selfsup::pipeline::pretrain_pool(&prep, 3, &[0, 1], 0, None).unwrap();
    assert_eq!(source.len(), 400);
    for s in [0, 1] {
        for i in selfsup::data::split::stratified(sel_labels, 3, s)
            .unwrap()
            .labeled
        {
            assert!(
                !pool.contains(&all.index[i]),
                "seed {s}: labeled image pretrained on"
            );
        }
    }
    assert!(pool.len() >= 400 - 12 && pool.len() <= 400 - 6);
    assert!(pool.iter().any(|&j| ![1, 8].contains(&full_labels[j])));

    // The whole pipeline: pretraining config names the whole dataset and
    // its pool, transfer has two outputs.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let mut o = options("fashion-mnist", &out);
    o.recipe.classes = classes.clone();
    o.recipe.unlabeled = None;
    let report = run(&o).unwrap();
    assert_eq!(report.dataset, "fashion-mnist[Trouser,Bag]");
    let pre = read_json(&out.join("pretrain-rotation/config.json"));
    assert_eq!(pre["dataset"], "fashion-mnist");
    assert_eq!(pre["metrics"]["unlabeled_images"], 400 - 4);
    let tr = read_json(&out.join("seed0/k2/rotation-finetune/config.json"));
    assert_eq!(tr["head_outputs"], 2);
    assert_eq!(tr["dataset"], "fashion-mnist[Trouser,Bag]");
    assert_eq!(tr["normalization"], pre["normalization"]);

    // Pretraining on the selection only.
    o.recipe.pretrain_all_classes = false;
    o.out = dir.path().join("selected");
    run(&o).unwrap();
    let pre = read_json(&o.out.join("pretrain-rotation/config.json"));
    let n_selected = full_labels.iter().filter(|&&y| y == 1 || y == 8).count();
    assert_eq!(pre["metrics"]["unlabeled_images"], n_selected as u64 - 4);
    assert_eq!(pre["dataset"], "fashion-mnist[Trouser,Bag]");
}

#[test]
fn transfer_early_stopping_holds_out_labels_and_keeps_the_best_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let mut o = options("fashion-mnist", &out);
    o.pretext = vec![];
    o.labels_per_class = vec![10];
    o.recipe.transfer_epochs = 6;
    o.recipe.transfer_patience = Some(2);
    o.recipe.transfer_val_fraction = 0.2;
    o.recipe.transfer_augment = Some(selfsup::spec::ViewAugment::Preset(
        "flip-zoom-contrast".into(),
    ));
    run(&o).unwrap();
    let cfg = read_json(&out.join("seed0/k10/scratch-finetune/config.json"));
    let m = &cfg["metrics"];
    assert_eq!(m["validation_images"], 20, "2 of 10 per class, 10 classes");
    let epochs = m["epochs_run"].as_u64().unwrap() as usize;
    let val: Vec<f64> = m["val_score"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert_eq!(val.len(), epochs);
    let best = m["best_epoch"].as_u64().unwrap() as usize;
    assert!(best >= 1 && best <= epochs);
    // 6 epochs of 80 images in batches of 16: the 10% warmup ends in
    // epoch 1, so every epoch is a candidate and the kept one scores best
    // (up to the stopper's 1e-4 minimum improvement).
    let min = val.iter().cloned().fold(f64::INFINITY, f64::min);
    assert!(val[best - 1] - min <= 1e-4, "best epoch {best} of {val:?}");
    let err = m["val_error"].as_array().unwrap();
    let ce = m["val_cross_entropy"].as_array().unwrap();
    assert_eq!((err.len(), ce.len()), (epochs, epochs));
    for e in 0..epochs {
        let (err, ce) = (err[e].as_f64().unwrap(), ce[e].as_f64().unwrap());
        assert!((0.0..=1.0).contains(&err) && ce > 0.0);
        assert!((val[e] - (err + 1e-3 * ce)).abs() < 1e-9);
        // error rates of 20 images are multiples of 1/20
        assert!(((err * 20.0) - (err * 20.0).round()).abs() < 1e-9);
    }
    assert_eq!(
        cfg["recipe"]["transfer"]["augment"]["ops"][1]["op"], "zoom",
        "{}",
        cfg["recipe"]["transfer"]
    );

    // One labeled image per class leaves nothing to hold out: refused
    // before any work.
    let mut o = options("fashion-mnist", &dir.path().join("one"));
    o.labels_per_class = vec![1];
    o.recipe.transfer_patience = Some(2);
    let e = run(&o).unwrap_err().to_string();
    assert!(e.contains("at least 2"), "{e}");
    assert!(!dir.path().join("one").exists());
}

#[test]
fn lpft_and_distill_protocols_run_for_every_method() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let mut o = options("fashion-mnist", &out);
    o.recipe.lpft = true;
    o.recipe.distill_epochs = 2;
    o.recipe.distill_batch = 32;
    o.recipe.distill_augment = Some(selfsup::spec::ViewAugment::Preset("simclr-mnist".into()));
    let report = run(&o).unwrap();
    // 2 methods x (finetune, lpft, distill, linear, knn)
    assert_eq!(report.results.len(), 10);
    let json = read_json(&out.join("report.json"));
    let rows: Vec<(&str, &str)> = field_values(&json["results"], "method")
        .into_iter()
        .zip(field_values(&json["results"], "protocol"))
        .collect();
    // `auto` teachers: LP-FT for the pretrained method, plain fine-tune for
    // scratch
    for (m, teacher) in [("scratch", "finetune"), ("rotation", "lpft")] {
        assert!(rows.contains(&(m, "distill")), "{rows:?}");
        assert!(rows.contains(&(m, "lpft")), "{rows:?}");
        let lp = read_json(&out.join(format!("seed0/k2/{m}-lpft/config.json")));
        assert_eq!(lp["recipe"]["protocol"], "lpft");
        assert_eq!(lp["recipe"]["transfer"]["probe_init"], true);
        let cfg = read_json(&out.join(format!("seed0/k2/{m}-distill/config.json")));
        assert_eq!(cfg["method"], m);
        assert_eq!(cfg["recipe"]["protocol"], "distill");
        let t = cfg["recipe"]["teacher"].as_str().unwrap();
        assert!(t.ends_with(&format!("{m}-{teacher}")), "{t}");
        assert_eq!(cfg["head_outputs"], 10);
        // the 400 training images less this seed's 2 x 10 labeled ones,
        // capped at the recipe's 128 unlabeled images
        assert_eq!(cfg["metrics"]["unlabeled_images"], 128);
        let acc = cfg["metrics"]["pseudo_label_accuracy"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&acc));
        assert_eq!(cfg["metrics"]["train_loss"].as_array().unwrap().len(), 2);
        assert_eq!(
            cfg["recipe"]["distill"]["augment"]["ops"][0]["op"],
            "resized_crop"
        );
        assert!(out
            .join(format!("seed0/k2/{m}-distill/model.safetensors"))
            .is_file());
    }
    let stages: Vec<&str> = field_values(&json["stages"], "name");
    assert!(stages.contains(&"distill"));

    // A bad temperature is refused before anything is written.
    let mut o = options("fashion-mnist", &dir.path().join("bad"));
    o.recipe.distill_epochs = 1;
    o.recipe.distill_temperature = -1.0;
    let e = run(&o).unwrap_err().to_string();
    assert!(e.contains("protocols.distill.temperature"), "{e}");
    // So is an LP-FT teacher without the lpft protocol, or an unknown one.
    o.recipe.distill_temperature = 1.0;
    o.recipe.distill_teacher = "lpft".into();
    let e = run(&o).unwrap_err().to_string();
    assert!(
        e.contains("protocols.distill.teacher") && e.contains("lpft"),
        "{e}"
    );
    o.recipe.distill_teacher = "oracle".into();
    let e = run(&o).unwrap_err().to_string();
    assert!(
        e.contains("protocols.distill.teacher") && e.contains("oracle"),
        "{e}"
    );
    assert!(!dir.path().join("bad").exists());
}

#[test]
fn fixmatch_protocol_runs_for_every_method() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let mut o = options("fashion-mnist", &out);
    o.recipe.lpft = true;
    o.recipe.fixmatch_epochs = 2;
    o.recipe.fixmatch_batch = 32;
    o.recipe.fixmatch_labeled_batch = 8;
    let report = run(&o).unwrap();
    // 2 methods x (finetune, lpft, fixmatch, linear, knn)
    assert_eq!(report.results.len(), 10);
    let json = read_json(&out.join("report.json"));
    let rows: Vec<(&str, &str)> = field_values(&json["results"], "method")
        .into_iter()
        .zip(field_values(&json["results"], "protocol"))
        .collect();
    // `auto` start: the LP-FT classifier for the pretrained method, the
    // plain fine-tune for scratch
    for (m, init) in [("scratch", "finetune"), ("rotation", "lpft")] {
        assert!(rows.contains(&(m, "fixmatch")), "{rows:?}");
        let cfg = read_json(&out.join(format!("seed0/k2/{m}-fixmatch/config.json")));
        assert_eq!(cfg["method"], m);
        assert_eq!(cfg["recipe"]["protocol"], "fixmatch");
        let i = cfg["recipe"]["init"].as_str().unwrap();
        assert!(i.ends_with(&format!("{m}-{init}")), "{i}");
        assert_eq!(cfg["head_outputs"], 10);
        assert_eq!(cfg["metrics"]["unlabeled_images"], 128);
        let mask = cfg["metrics"]["mask_rate"].as_array().unwrap();
        assert_eq!(mask.len(), 2);
        assert!(mask
            .iter()
            .all(|m| (0.0..=1.0).contains(&m.as_f64().unwrap())));
        assert_eq!(cfg["metrics"]["train_loss"].as_array().unwrap().len(), 2);
        // weak views: the fine-tune's crop + flip; strong: the SimCLR views
        let fm = &cfg["recipe"]["fixmatch"];
        assert_eq!(fm["weak"]["ops"][0]["op"], "crop_flip");
        assert_eq!(fm["strong"]["ops"][0]["op"], "resized_crop");
        assert_eq!(fm["threshold"], 0.95);
        assert!(out
            .join(format!("seed0/k2/{m}-fixmatch/model.safetensors"))
            .is_file());
    }
    let stages: Vec<&str> = field_values(&json["stages"], "name");
    assert!(stages.contains(&"fixmatch"));

    // Bad settings are refused before anything is written.
    let bad = dir.path().join("bad");
    let mut o = options("fashion-mnist", &bad);
    o.recipe.fixmatch_epochs = 1;
    o.recipe.fixmatch_threshold = 2.0;
    let e = run(&o).unwrap_err().to_string();
    assert!(e.contains("protocols.fixmatch.threshold"), "{e}");
    o.recipe.fixmatch_threshold = 0.9;
    o.recipe.fixmatch_init = "oracle".into();
    let e = run(&o).unwrap_err().to_string();
    assert!(
        e.contains("protocols.fixmatch.init") && e.contains("oracle"),
        "{e}"
    );
    o.recipe.fixmatch_init = "auto".into();
    o.recipe.fixmatch_batch = 0;
    let e = run(&o).unwrap_err().to_string();
    assert!(e.contains("protocols.fixmatch.batch"), "{e}");
    assert!(!bad.exists());
}

#[test]
fn resume_reuses_a_matching_pretraining_and_refuses_another() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let first = run(&options("fashion-mnist", &out)).unwrap();
    let weights = out.join("pretrain-rotation/model.safetensors");
    let (bytes, modified) = (
        std::fs::read(&weights).unwrap(),
        std::fs::metadata(&weights).unwrap().modified().unwrap(),
    );
    std::fs::remove_dir_all(out.join("figures")).unwrap();

    let mut o = options("fashion-mnist", &out);
    o.resume = true;
    let second = run(&o).unwrap();
    assert_eq!(std::fs::read(&weights).unwrap(), bytes);
    assert_eq!(
        std::fs::metadata(&weights).unwrap().modified().unwrap(),
        modified,
        "the pretraining was written again"
    );
    let (p1, p2) = (&first.pretraining[0], &second.pretraining[0]);
    assert!(!p1.reused && p2.reused);
    assert_eq!(
        (p1.seconds, p1.epochs_run, p1.val_loss),
        (p2.seconds, p2.epochs_run, p2.val_loss)
    );
    // same encoder, same transfer: the same numbers
    let acc = |r: &selfsup::core::report::Report| -> Vec<f64> {
        r.results.iter().map(|x| x.test_accuracy).collect()
    };
    assert_eq!(acc(&first), acc(&second));
    // the loss curve is drawn again from the stored history
    assert!(out.join("figures/rotation-loss.png").is_file());
    assert!(read_json(&out.join("report.json"))["pretraining"][0]["reused"] == true);

    // --resume under another spec: refused, naming the first setting that
    // differs, with everything left as it was.
    o.recipe.pretrain_lr *= 2.0;
    let e = run(&o).unwrap_err().to_string();
    assert!(
        e.contains(".selfsup-run.json") && e.contains("methods.rotation.lr"),
        "{e}"
    );
    // --reuse-pretraining accepts another spec but not another pretraining:
    // refused, naming the stage's file and the field.
    o.resume = false;
    o.reuse_pretraining = true;
    let e = run(&o).unwrap_err().to_string();
    assert!(
        e.contains("pretrain-rotation/config.json") && e.contains("pretrain.fit.lr"),
        "{e}"
    );
    assert_eq!(
        std::fs::metadata(&weights).unwrap().modified().unwrap(),
        modified
    );

    // On the reused encoder, a semi-supervised protocol for the pretrained
    // method only: scratch keeps its supervised rows and gets no fixmatch.
    o.recipe.pretrain_lr /= 2.0;
    o.recipe.fixmatch_epochs = 1;
    o.recipe.fixmatch_batch = 32;
    o.recipe.fixmatch_labeled_batch = 8;
    o.recipe.scratch_semi_supervised = false;
    let third = run(&o).unwrap();
    let rows: Vec<(&str, &str)> = third
        .results
        .iter()
        .map(|r| (r.method.as_str(), r.protocol.as_str()))
        .collect();
    assert!(rows.contains(&("rotation", "fixmatch")), "{rows:?}");
    assert!(rows.contains(&("scratch", "finetune")), "{rows:?}");
    assert!(!rows.contains(&("scratch", "fixmatch")), "{rows:?}");
    assert!(!out.join("seed0/k2/scratch-fixmatch").exists());
    assert!(out
        .join("seed0/k2/rotation-fixmatch/model.safetensors")
        .is_file());
}

#[test]
fn the_vit_trains_under_mae_rotation_and_simclr_and_every_protocol() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let mut o = options("fashion-mnist", &out);
    o.backbone = "vit".into();
    o.pretext = ["mae", "rotation", "simclr"].map(String::from).to_vec();
    o.max_train = Some(200);
    o.recipe.unlabeled = Some(64);
    o.recipe.lpft = true;
    o.recipe.contrastive_epochs = 1;
    o.recipe.contrastive_batch = 16;
    o.recipe.siamese.proj_hidden = 16;
    o.recipe.siamese.proj_dim = 8;
    o.recipe.distill_epochs = 1;
    o.recipe.distill_batch = 32;
    o.recipe.fixmatch_epochs = 1;
    o.recipe.fixmatch_batch = 32;
    o.recipe.fixmatch_labeled_batch = 8;
    let mut spec = o.spec().unwrap();
    spec.backbone = BackboneSpec::Vit(selfsup::spec::VitSpec {
        patch: 7,
        dim: 16,
        depth: 1,
        heads: 2,
        mlp_ratio: 2.0,
    });
    spec.methods.mae.epochs = 1;
    spec.methods.mae.batch = 32;
    spec.methods.mae.decoder_dim = 8;
    spec.methods.mae.decoder_depth = 1;
    spec.methods.mae.decoder_heads = 2;
    let report = selfsup::pipeline::run(&PipelineOptions {
        spec: spec.clone(),
        out: out.clone(),
        device: Device::Cpu,
        quiet: true,
        resume: false,
        reuse_pretraining: false,
        checkpoint_every: 1,
        force: false,
        embedding: Projection::Pca,
    })
    .unwrap();
    let protocols = ["finetune", "lpft", "distill", "fixmatch", "linear", "knn"];
    for m in ["scratch", "mae", "rotation", "simclr"] {
        for p in protocols {
            let r = report
                .results
                .iter()
                .find(|r| r.method == m && r.protocol == p)
                .unwrap_or_else(|| panic!("{m}/{p} missing"));
            assert!((0.0..=1.0).contains(&r.test_accuracy), "{m}/{p}");
        }
    }
    let mae = read_json(&out.join("pretrain-mae/config.json"));
    assert_eq!(mae["backbone"]["kind"], "vit");
    // A 28x28 image in 7x7 patches: the decoder predicts 49 pixels.
    assert_eq!(mae["head_outputs"], 49);
    let png = std::fs::read(out.join("figures/mae-reconstruction.png")).unwrap();
    assert!(png.starts_with(b"\x89PNG"));
    // The checkpoint reloads as a ViT with the same features.
    let enc =
        selfsup::backbones::checkpoint::load(&out.join("pretrain-mae"), 0, &Device::Cpu).unwrap();
    assert_eq!(enc.backbone.feature_dim(), 16);
    assert!(enc.backbone.as_vit().is_some());
    // It publishes like any other method, and the Hub folder reloads.
    #[cfg(feature = "hub")]
    {
        let card = dir.path().join("card");
        let done = selfsup::hub::publish(&selfsup::hub::PublishOptions {
            run: out.clone(),
            repo: "me/vit-mae".into(),
            private: false,
            dry_run: true,
            out: Some(card.clone()),
            method: Some("mae".into()),
        })
        .unwrap();
        assert!(done.files.iter().any(|f| f == "model.safetensors"));
        let text = std::fs::read_to_string(card.join("README.md")).unwrap();
        assert!(text.contains("\"mae\"") && text.contains("`vit`"), "{text}");
        let again = selfsup::backbones::checkpoint::load(&card, 0, &Device::Cpu).unwrap();
        assert!(again.backbone.as_vit().is_some());
    }

    // mae on a convolutional backbone, inpaint on the ViT: refused up front.
    let mut bad = spec.clone();
    bad.backbone = BackboneSpec::from_name("convnet").unwrap();
    let e = bad.validate().unwrap_err().to_string();
    assert!(e.contains("mae") && e.contains("vit"), "{e}");
    let mut bad = spec;
    bad.pretrain.methods = vec!["inpaint".into()];
    let e = bad.validate().unwrap_err().to_string();
    assert!(e.contains("inpaint") && e.contains("mae"), "{e}");
}
