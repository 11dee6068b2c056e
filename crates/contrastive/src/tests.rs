//! Tests of every two-view method.

use super::*;
use candle_nn::VarMap;
use selfsup_backbones::checkpoint::{BACKBONE_PREFIX, HEAD_PREFIX};
use selfsup_backbones::BackboneConfig;
use selfsup_core::params;

fn tiny_cfg() -> SiameseConfig {
    SiameseConfig {
        proj_hidden: 16,
        proj_dim: 8,
        pred_hidden: 4,
        queue_size: 6,
        ..SiameseConfig::default()
    }
}

/// An online map with a tiny ConvNet and `method`'s head.
fn setup(method: Method) -> (VarMap, Box<dyn Backbone>, Siamese) {
    let map = VarMap::new();
    let device = Device::Cpu;
    let vb = params::seeded_var_builder(&map, 3, &device);
    let bcfg = BackboneConfig::ConvNet {
        in_channels: 1,
        widths: vec![4, 8],
        convs_per_stage: 1,
    };
    let backbone = bcfg.build(vb.pp(BACKBONE_PREFIX)).unwrap();
    let ctx = ObjectiveContext {
        backbone: std::sync::Arc::new(bcfg),
        feature_dim: backbone.feature_dim(),
        online: map.clone(),
        seed: 3,
        device,
        image_shape: (1, 8, 8),
    };
    let obj = Siamese::new(method, &tiny_cfg(), &ctx, vb.pp(HEAD_PREFIX)).unwrap();
    (map, backbone, obj)
}

fn views(n: usize, seed: u64) -> Tensor {
    use rand::Rng as _;
    let mut r = rng::stream(seed, "views");
    let v: Vec<f32> = (0..2 * n * 64)
        .map(|_| r.random_range(-1.0f32..1.0))
        .collect();
    Tensor::from_vec(v, (2 * n, 1, 8, 8), &Device::Cpu).unwrap()
}

/// Two noisy copies of `n` random images: a learnable pairing.
fn paired_views(n: usize, seed: u64) -> Tensor {
    let base = views(n, seed).narrow(0, 0, n).unwrap();
    let noise = (views(n, seed + 1).narrow(0, 0, n).unwrap() * 0.3).unwrap();
    Tensor::cat(&[&base, &(&base + noise).unwrap()], 0).unwrap()
}

fn abs_sum(t: &Tensor) -> f32 {
    t.abs()
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

#[test]
fn every_online_parameter_gets_a_gradient_and_no_target_does() {
    for name in NAMES {
        let method = Method::from_name(name).unwrap();
        let (map, backbone, obj) = setup(method);
        let (loss, acc) = obj
            .loss_of_views(backbone.as_ref(), &views(6, 1), true)
            .unwrap();
        let value = loss.to_scalar::<f32>().unwrap();
        assert!(value.is_finite(), "{name}: loss {value}");
        assert!((0.0..=1.0).contains(&acc));
        let grads = loss.backward().unwrap();
        for (pname, var) in params::trainable_vars(&map) {
            let g = grads
                .get(var.as_tensor())
                .unwrap_or_else(|| panic!("{name}: {pname} gets no gradient"));
            assert!(abs_sum(g) > 0.0, "{name}: {pname} has a zero gradient");
        }
        if let Some(target) = obj.target() {
            let tvars = target.vars().all_vars();
            assert!(!tvars.is_empty());
            for v in tvars {
                assert!(
                    grads.get(v.as_tensor()).is_none(),
                    "{name}: a target variable got a gradient"
                );
            }
        }
        assert_eq!(method.has_target(), obj.target().is_some(), "{name}");
    }
}

#[test]
fn ema_update_blends_online_into_target() {
    let (map, _backbone, obj) = setup(Method::Byol);
    let target = obj.target().unwrap();
    // The copy starts equal to the online network.
    for (t, o) in &target.pairs {
        assert_eq!(
            abs_sum(&(t.as_tensor() - o.as_tensor()).unwrap()),
            0.0,
            "target starts as a copy"
        );
    }
    let before: Vec<Tensor> = target
        .pairs
        .iter()
        .map(|(t, _)| t.as_tensor().copy().unwrap())
        .collect();
    // Move the online weights, then blend with m = 0.9.
    for (_, v) in params::trainable_vars(&map) {
        v.set(&(v.as_tensor() + 1.0).unwrap()).unwrap();
    }
    target.update(0.9).unwrap();
    for ((t, o), b) in target.pairs.iter().zip(&before) {
        let want = ((b * 0.9).unwrap() + (o.as_tensor() * 0.1).unwrap()).unwrap();
        assert!(abs_sum(&(t.as_tensor() - want).unwrap()) < 1e-4);
    }
    // Cosine schedule: base at the start, 1 at the end, monotone.
    assert!((target.momentum(0, 100) - 0.99).abs() < 1e-12);
    assert!((target.momentum(100, 100) - 1.0).abs() < 1e-12);
    assert!(target.momentum(50, 100) > target.momentum(10, 100));
    let (_, _, moco) = setup(Method::MoCo);
    assert_eq!(
        moco.target().unwrap().momentum(50, 100),
        0.99,
        "MoCo keeps m fixed"
    );
}

fn queue_keys(obj: &Siamese) -> Tensor {
    let q = obj.queue.as_ref().unwrap().lock().unwrap();
    q.keys.copy().unwrap()
}

#[test]
fn moco_queue_takes_the_newest_keys_in_a_ring() {
    let (_, backbone, obj) = setup(Method::MoCo);
    let before = queue_keys(&obj);
    obj.loss_of_views(backbone.as_ref(), &views(2, 1), false)
        .unwrap();
    let after_eval = queue_keys(&obj);
    assert_eq!(
        abs_sum(&(&before - &after_eval).unwrap()),
        0.0,
        "evaluation leaves the queue alone"
    );
    obj.loss_of_views(backbone.as_ref(), &views(2, 1), true)
        .unwrap();
    let q = obj.queue.as_ref().unwrap().lock().unwrap();
    assert_eq!(q.next, 4, "2 images x 2 views enqueued");
    let rows = q.keys.to_vec2::<f32>().unwrap();
    let old = before.to_vec2::<f32>().unwrap();
    assert_ne!(rows[0], old[0]);
    assert_eq!(rows[4], old[4], "older entries survive");
    for r in &rows {
        let norm: f32 = r.iter().map(|v| v * v).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "keys are unit vectors");
    }
    drop(q);
    let mut q = KeyQueue {
        keys: before.clone(),
        next: 4,
    };
    let keys = losses::l2_normalize(
        &views(2, 5)
            .flatten_from(1)
            .unwrap()
            .narrow(1, 0, 8)
            .unwrap(),
    )
    .unwrap();
    enqueue(&mut q, &keys).unwrap();
    assert_eq!(q.next, 2, "4 keys from slot 4 of 6 wrap to slot 2");
    let rows = q.keys.to_vec2::<f32>().unwrap();
    assert_eq!(rows[0], keys.to_vec2::<f32>().unwrap()[2]);
}

#[test]
fn simclr_training_lowers_its_loss_on_a_fixed_batch() {
    let (map, backbone, obj) = setup(Method::SimClr);
    let x = paired_views(8, 2);
    let mut tr = selfsup_core::train::Trainer::new(
        map.all_vars(),
        selfsup_core::train::LrSchedule::new(1e-2, 0, 40),
        0.0,
        "test",
    )
    .unwrap();
    let first = obj.loss_of_views(backbone.as_ref(), &x, true).unwrap().0;
    let first = first.to_scalar::<f32>().unwrap();
    for _ in 0..40 {
        let (loss, _) = obj.loss_of_views(backbone.as_ref(), &x, true).unwrap();
        tr.step(&loss).unwrap();
    }
    let (last, acc) = obj.loss_of_views(backbone.as_ref(), &x, true).unwrap();
    let last = last.to_scalar::<f32>().unwrap();
    assert!(last < first - 0.3, "{first} -> {last}");
    assert!(acc > 0.8, "pairs retrieved {acc}");
}

#[test]
fn odd_or_tiny_batches_are_refused() {
    let (_, backbone, obj) = setup(Method::SimClr);
    let x = views(1, 1);
    let err = obj
        .loss_of_views(backbone.as_ref(), &x, true)
        .err()
        .unwrap();
    assert!(err.to_string().contains("at least 2 images"), "{err}");
    assert!(build(
        "dino",
        &tiny_cfg(),
        &ObjectiveContext {
            backbone: std::sync::Arc::new(BackboneConfig::ConvNet {
                in_channels: 1,
                widths: vec![4],
                convs_per_stage: 1
            }),
            feature_dim: 4,
            online: VarMap::new(),
            seed: 0,
            device: Device::Cpu,
            image_shape: (1, 8, 8),
        },
        params::seeded_var_builder(&VarMap::new(), 0, &Device::Cpu)
    )
    .is_err());
}

/// A pool one image larger than the batch leaves a last batch of a single
/// image, which no two-view loss can use: the loop drops it instead of
/// stopping with an error.
#[test]
fn a_last_batch_of_one_image_is_dropped() {
    use selfsup_objective::{pretrain_with, Hooks, PretrainConfig, Unlabeled};
    let device = Device::Cpu;
    // 10 images: one is held out, so 9 train, batch 8 (+ 1).
    let px: Vec<u8> = (0..10 * 64).map(|i| (i * 37 % 251) as u8).collect();
    let ds = selfsup_data::Dataset::new(px, (10, 1, 8, 8), None, vec![]).unwrap();
    let pool: Vec<usize> = (0..10).collect();
    let norm = selfsup_core::Normalization {
        mean: vec![0.5],
        std: vec![0.25],
    };
    let cfg = PretrainConfig {
        method: "simclr".into(),
        fit: selfsup_core::train::FitConfig {
            epochs: 2,
            batch_size: 8,
            lr: 1e-3,
            weight_decay: 0.0,
            warmup_fraction: 0.0,
            patience: None,
            seed: 1,
            drop_last: false,
        },
        val_fraction: 0.0,
        max_val: 8,
        augment: selfsup_augment::CropFlip::NONE,
        view_augment: Default::default(),
    };
    let bcfg = BackboneConfig::ConvNet {
        in_channels: 1,
        widths: vec![4],
        convs_per_stage: 1,
    };
    let build = |ctx: &ObjectiveContext, vb: VarBuilder| build("simclr", &tiny_cfg(), ctx, vb);
    // Kept every second epoch: after 2 epochs, then not after the third.
    let progress = tempfile::tempdir().unwrap();
    let store = selfsup_core::train::DirCheckpoint {
        dir: progress.path().join("p"),
        key: serde_json::json!("simclr"),
        device: device.clone(),
        every: 2,
    };
    let cfg = PretrainConfig {
        fit: selfsup_core::train::FitConfig {
            epochs: 3,
            ..cfg.fit
        },
        ..cfg
    };
    let done = pretrain_with(
        &cfg,
        std::sync::Arc::new(bcfg),
        Unlabeled {
            ds: &ds,
            pool: &pool,
            norm: &norm,
        },
        &device,
        true,
        &build,
        Hooks {
            monitor: None,
            checkpoint: Some(&store),
        },
    )
    .unwrap();
    assert_eq!(done.report.step_loss.len(), 3, "one full batch per epoch");
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(store.dir.join("state.json")).unwrap()).unwrap();
    assert_eq!(
        state["epochs_done"], 2,
        "the store's cadence holds under pretraining"
    );
}
