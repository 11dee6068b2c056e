//! candle-datasets interop (`--features candle-datasets`): a dataset
//! loaded by candle-datasets' own IDX loader becomes selfsup's, exactly,
//! trains a tiny pretraining, and converts back; bad tensors are refused.

use candle_core::{Device, Tensor};
use candle_datasets::vision::Dataset as CandleDataset;
use selfsup::interop::{from_candle, load_candle, to_candle};
use selfsup::pipeline::{pretrain_stage, Excluded, Prepared, Stage};
use selfsup::spec::Experiment;
use std::io::Read;
use std::path::Path;

/// The embedded Fashion-MNIST IDX files, decompressed under the names
/// candle-datasets' `mnist::load_dir` reads, then loaded by it.
fn candle_loaded(dir: &Path) -> CandleDataset {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/fashion-mnist");
    for stem in [
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    ] {
        let gz = std::fs::File::open(data.join(format!("{stem}.gz"))).unwrap();
        let mut raw = Vec::new();
        flate2::read::GzDecoder::new(gz)
            .read_to_end(&mut raw)
            .unwrap();
        std::fs::write(dir.join(stem), raw).unwrap();
    }
    candle_datasets::vision::mnist::load_dir(dir).unwrap()
}

#[test]
fn a_candle_dataset_converts_exactly_and_pretrains() {
    let dir = tempfile::tempdir().unwrap();
    let ds = candle_loaded(dir.path());
    assert_eq!(
        ds.train_images.dims(),
        &[10_000, 784],
        "candle's flat layout"
    );
    let ours = selfsup::data::load("fashion-mnist").unwrap();
    let names = ours.train.class_names().to_vec();
    let pair = from_candle(&ds, "fashion-mnist (candle)", names.clone()).unwrap();
    assert_eq!(pair.train.image_shape(), (1, 28, 28));
    assert_eq!(
        pair.train.pixels(),
        ours.train.pixels(),
        "pixels survive f32 -> u8"
    );
    assert_eq!(pair.test.labels(), ours.test.labels());
    assert_eq!(pair.train.class_names()[0], "T-shirt/top");

    let back = to_candle(&pair).unwrap();
    assert_eq!(back.train_images.dims(), &[10_000, 1, 28, 28]);
    let diff = (back.train_images.flatten_from(1).unwrap() - &ds.train_images)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(
        diff < 1e-6,
        "selfsup -> candle gives candle's values back ({diff})"
    );
    assert_eq!(back.labels, 10);

    // A tiny rotation pretraining on the converted data.
    let small = selfsup::data::DatasetPair::new(
        pair.name.clone(),
        pair.train.take(256),
        pair.test.take(64),
    )
    .unwrap();
    let prep = Prepared::fitted(small, 0);
    let mut spec = Experiment::default();
    spec.methods.rotation.epochs = 1;
    let backbone = spec.backbone_config(1);
    let ctx = Stage {
        prep: &prep,
        backbone: &backbone,
        spec: &spec,
        device: &Device::Cpu,
        quiet: true,
        resume: false,
        checkpoint_every: 0,
    };
    let out = dir.path().join("pretrain-rotation");
    let excluded = Excluded {
        max_k: 2,
        seeds: &[0],
    };
    let outcome = pretrain_stage(&ctx, "rotation", excluded, 0, &out, false).unwrap();
    assert_eq!(outcome.history.epochs_run, 1);
    assert!(outcome.history.step_loss.iter().all(|l| l.is_finite()));
    assert!(out.join("config.json").is_file() && out.join("model.safetensors").is_file());
}

#[test]
fn bad_candle_tensors_are_refused_with_the_reason() {
    let cpu = Device::Cpu;
    let make = |images: Tensor, labels: Tensor| CandleDataset {
        train_images: images.clone(),
        train_labels: labels.clone(),
        test_images: images,
        test_labels: labels,
        labels: 3,
    };
    let ok_images = Tensor::zeros((2, 64), candle_core::DType::F32, &cpu).unwrap();
    let ok_labels = Tensor::new(&[0u32, 2], &cpu).unwrap();
    let err = |ds: CandleDataset| from_candle(&ds, "mine", vec![]).unwrap_err().to_string();

    let bright = (ok_images.clone() + 2.0).unwrap();
    let e = err(make(bright, ok_labels.clone()));
    assert!(
        e.contains("mine (train)") && e.contains("pixel value 2"),
        "{e}"
    );
    let e = err(make(
        Tensor::zeros((2, 60), candle_core::DType::F32, &cpu).unwrap(),
        ok_labels.clone(),
    ));
    assert!(e.contains("[2, 60]") && e.contains("flat square"), "{e}");
    let e = err(make(
        ok_images.clone(),
        Tensor::new(&[0u32, 7], &cpu).unwrap(),
    ));
    assert!(e.contains("label 7 outside 0..3"), "{e}");
    let e = err(make(ok_images.clone(), Tensor::new(&[0u32], &cpu).unwrap()));
    assert!(e.contains("2 images but 1 labels"), "{e}");
    let fine = from_candle(&make(ok_images, ok_labels), "mine", vec!["a".into()]).unwrap();
    assert_eq!(fine.train.image_shape(), (1, 8, 8));
    assert_eq!(
        fine.train.class_names(),
        ["a", "1", "2"],
        "missing names numbered"
    );
    let e = load_candle("imagenet").unwrap_err().to_string();
    assert!(
        e.contains("candle:imagenet") && e.contains("cifar10"),
        "{e}"
    );
}
