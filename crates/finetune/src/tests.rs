//! Tests of every protocol of the crate.

use super::*;
use candle_core::{Device, Tensor, D};
use candle_nn::VarMap;
use selfsup_augment::Pipeline;
use selfsup_backbones::checkpoint::BACKBONE_PREFIX;
use selfsup_backbones::BackboneConfig;
use selfsup_core::train::FitConfig;
use selfsup_core::{params, Normalization};
use selfsup_data::{batch, Dataset};

fn blobs(n_per: usize, shift: f32) -> (Tensor, Vec<u32>) {
    let mut v = Vec::new();
    let mut y = Vec::new();
    for c in 0..3u32 {
        for i in 0..n_per {
            let jitter = ((i * 7919 + c as usize * 31) % 17) as f32 / 17.0 - 0.5;
            let mut row = vec![jitter * 0.3; 4];
            row[c as usize] += 2.0 + shift;
            v.extend(row);
            y.push(c);
        }
    }
    (
        Tensor::from_vec(v, (3 * n_per, 4), &Device::Cpu).unwrap(),
        y,
    )
}

/// The images of a test stage.
fn images<'a>(
    ds: &'a Dataset,
    labeled: &'a [usize],
    unlabeled: &'a [usize],
    norm: &'a Normalization,
) -> Images<'a> {
    Images {
        train: ds,
        labeled,
        unlabeled,
        norm,
    }
}

/// A quiet stage called `stage`.
fn quiet<'a>(device: &'a Device, stage: &'a str) -> StageRun<'a> {
    StageRun {
        device,
        quiet: true,
        stage,
        checkpoint: None,
    }
}

fn cfg() -> TransferConfig {
    TransferConfig {
        fit: FitConfig {
            epochs: 1,
            batch_size: 8,
            lr: 1e-3,
            weight_decay: 0.0,
            warmup_fraction: 0.0,
            patience: None,
            seed: 0,
            drop_last: false,
        },
        augment: Pipeline::default(),
        probe_init: false,
        val_fraction: 0.1,
        linear_steps: 100,
        linear_lr: 0.05,
        linear_weight_decay: 1e-4,
        knn_ks: vec![1, 3, 5, 50],
        eval_batch: 64,
    }
}

#[test]
fn knn_separates_blobs_and_picks_k_without_test_labels() {
    let (tr, ty) = blobs(6, 0.0);
    let (te, ey) = blobs(5, 0.3);
    let (pred, k) = knn(&tr, &ty, &te, 3, &[1, 3, 5, 50], Weighting::Similarity).unwrap();
    assert_eq!(selfsup_core::metrics::accuracy(&pred, &ey), 1.0);
    // 18 points: 50 is out of range; 1, 3 and 5 all score 100 % by leave-
    // one-out (each point has 5 classmates nearer than any other point),
    // and the tie goes to the smallest.
    assert_eq!(k, 1);
}

/// Leave-one-out chooses k by hand-computed accuracies, and votes weigh
/// each neighbour by 1 + its cosine similarity.
#[test]
fn knn_choice_and_votes_match_hand_computed_values() {
    // Similarities of 4 labeled points (classes 0, 0, 1, 1).
    let sim = vec![
        vec![1.0, 0.9, 0.8, 0.1],
        vec![0.9, 1.0, 0.2, 0.85],
        vec![0.8, 0.2, 1.0, 0.7],
        vec![0.1, 0.85, 0.7, 1.0],
    ];
    let y = [0, 0, 1, 1];
    // k = 1 (self excluded): 0 -> 1 (class 0, right); 1 -> 0 (right);
    // 2 -> 0 (wrong); 3 -> 1 (wrong): 50 %.
    assert_eq!(
        knn_vote(&sim, &y, 1, 2, true, Weighting::Similarity),
        vec![0, 0, 0, 0]
    );
    // k = 2: point 2's neighbours 0 (0.8) and 3 (0.7) give class 0 1.8
    // against class 1 1.7: class 0; point 3's, 1 (0.85) and 2 (0.7), give
    // 1.85 against 1.7: class 0; point 0's, 1 (0.9) and 2 (0.8): 1.9 vs 1.8,
    // class 0; point 1's, 0 (0.9) and 3 (0.85): 1.9 vs 1.85, class 0.
    assert_eq!(
        knn_vote(&sim, &y, 2, 2, true, Weighting::Similarity),
        vec![0, 0, 0, 0]
    );
    // A query without self-exclusion: nearest first, ties to the lower index.
    let q = vec![vec![0.5, 0.5, 0.4, 0.4]];
    assert_eq!(
        knn_vote(&q, &y, 1, 2, false, Weighting::Similarity),
        vec![0]
    );
    // Equal votes go to the lower class: one neighbour of each at 0.4.
    let q = vec![vec![0.0, 0.0, 0.4, 0.4]];
    assert_eq!(
        knn_vote(&q, &[0, 0, 0, 1], 2, 2, false, Weighting::Similarity),
        vec![0]
    );
    // Temperature weighting lets the nearest neighbour outvote two farther
    // ones: class 0 at 0.9 against class 1 at 0.5 and 0.45 gives, with
    // 1 + sim, 1.9 against 2.95 (class 1); with exp(sim / 0.1), e^9 = 8103
    // against e^5 + e^4.5 = 238 (class 0).
    let q = vec![vec![0.9, 0.5, 0.45]];
    let y3 = [0, 1, 1];
    assert_eq!(
        knn_vote(&q, &y3, 3, 2, false, Weighting::Similarity),
        vec![1]
    );
    assert_eq!(
        knn_vote(&q, &y3, 3, 2, false, Weighting::Temperature(0.1)),
        vec![0]
    );
    assert!((Weighting::Temperature(0.1).weight(0.5) - 5f32.exp()).abs() < 1e-3);
    assert_eq!(Weighting::Similarity.weight(0.25), 1.25);
}

#[test]
fn knn_vote_leave_one_out_skips_self() {
    // two points of different classes, each nearest to itself
    let sim = vec![vec![1.0, 0.1], vec![0.1, 1.0]];
    assert_eq!(
        knn_vote(&sim, &[0, 1], 1, 2, false, Weighting::Similarity),
        vec![0, 1]
    );
    assert_eq!(
        knn_vote(&sim, &[0, 1], 1, 2, true, Weighting::Similarity),
        vec![1, 0]
    );
}

#[test]
fn holdout_is_stratified_disjoint_and_seeded() {
    // 3 classes with 10, 4 and 2 labeled images among 40.
    let labels: Vec<u32> = (0..40).map(|i| (i % 4) as u32).collect();
    let labeled: Vec<usize> = (0..40)
        .filter(|&i| match labels[i] {
            0 => true,
            1 => i < 16,
            2 => i < 8,
            _ => false,
        })
        .collect();
    let (fit, val) = holdout(&labels, &labeled, 0.2, 3).unwrap();
    let count = |v: &[usize], c: u32| v.iter().filter(|&&i| labels[i] == c).count();
    // round(0.2 n) clamped to [1, n - 1]
    assert_eq!([count(&val, 0), count(&val, 1), count(&val, 2)], [2, 1, 1]);
    assert_eq!(fit.len() + val.len(), labeled.len());
    assert!(val.iter().all(|i| !fit.contains(i) && labeled.contains(i)));
    assert_eq!(
        (fit.clone(), val.clone()),
        holdout(&labels, &labeled, 0.2, 3).unwrap()
    );
    let other: Vec<_> = (0..8)
        .map(|s| holdout(&labels, &labeled, 0.2, s).unwrap().1)
        .collect();
    assert!(
        other.iter().any(|v| v != &val),
        "the seed must change the draw"
    );

    let one = [0usize, 1, 4, 8];
    let e = holdout(&labels, &one, 0.2, 0).unwrap_err().to_string();
    assert!(e.contains("class 1") && e.contains("at least 2"), "{e}");
    assert!(holdout(&labels, &labeled, 1.0, 0).is_err());
}

#[test]
fn soft_cross_entropy_matches_hand_values() {
    let dev = Device::Cpu;
    // log softmax([0, ln 3]) = [ln 1/4, ln 3/4]
    let logits = Tensor::new(&[[0f32, 3f32.ln()]], &dev).unwrap();
    let even = Tensor::new(&[[0.5f32, 0.5]], &dev).unwrap();
    let got = soft_cross_entropy(&logits, &even, 1.0).unwrap();
    let want = -0.5 * (0.25f32.ln() + 0.75f32.ln());
    assert!((got.to_scalar::<f32>().unwrap() - want).abs() < 1e-6);
    // the temperature divides the logits: twice the logits at T = 2 is the same
    let doubled = (&logits * 2.0).unwrap();
    let got2 = soft_cross_entropy(&doubled, &even, 2.0).unwrap();
    assert!((got2.to_scalar::<f32>().unwrap() - want).abs() < 1e-6);
    // one-hot targets at T = 1: the ordinary cross-entropy
    let logits = Tensor::new(&[[1f32, -2.0, 0.5], [0.0, 0.3, 2.0]], &dev).unwrap();
    let onehot = Tensor::new(&[[0f32, 1.0, 0.0], [0.0, 0.0, 1.0]], &dev).unwrap();
    let y = Tensor::new(&[1u32, 2], &dev).unwrap();
    let hard = candle_nn::loss::cross_entropy(&logits, &y).unwrap();
    let soft = soft_cross_entropy(&logits, &onehot, 1.0).unwrap();
    assert!((hard.to_scalar::<f32>().unwrap() - soft.to_scalar::<f32>().unwrap()).abs() < 1e-6);
}

/// 8x8 gray images: class 0 has a bright top half, class 1 a bright
/// bottom half, with a little texture.
fn halves(n: usize) -> Dataset {
    let mut px = Vec::with_capacity(n * 64);
    let mut y = Vec::with_capacity(n);
    for i in 0..n {
        let c = (i % 2) as u32;
        for r in 0..8 {
            for col in 0..8 {
                let bright = (r < 4) == (c == 0);
                let noise = ((i * 131 + r * 17 + col * 7) % 40) as u8;
                px.push(if bright { 180 + noise } else { 20 + noise });
            }
        }
        y.push(c);
    }
    Dataset::new(
        px,
        (n, 1, 8, 8),
        Some(y),
        vec!["top".into(), "bottom".into()],
    )
    .unwrap()
}

/// `halves(n)`, its normalisation over every image, and a tiny ConvNet.
fn tiny_task(n: usize) -> (Dataset, Normalization, BackboneConfig) {
    let ds = halves(n);
    let all: Vec<usize> = (0..n).collect();
    let norm = batch::fit_normalization(&ds, &all);
    let bb = BackboneConfig::ConvNet {
        in_channels: 1,
        widths: vec![4, 8],
        convs_per_stage: 1,
    };
    (ds, norm, bb)
}

#[test]
fn linear_head_folds_the_standardisation_into_its_weights() {
    // Blobs far from the origin at a large scale: a head applied to the
    // raw features is right only if the training statistics are folded
    // into it.
    let (tr, ty) = blobs(6, 0.0);
    let far = ((tr * 50.0).unwrap() + 1000.0).unwrap();
    let (w, b) = fit_linear_head(&cfg(), &far, &ty, 3).unwrap();
    assert_eq!(w.dims(), &[3, 4]);
    assert_eq!(b.dims(), &[3]);
    let pred: Vec<u32> = far
        .matmul(&w.t().unwrap())
        .unwrap()
        .broadcast_add(&b)
        .unwrap()
        .argmax(D::Minus1)
        .unwrap()
        .to_vec1()
        .unwrap();
    assert_eq!(pred, ty);
    assert_eq!(linear_probe(&cfg(), &far, &ty, &far, 3).unwrap(), ty);
}

#[test]
fn probe_init_starts_the_head_from_the_linear_probe() {
    let dev = Device::Cpu;
    let (ds, norm, bb) = tiny_task(32);
    let labeled: Vec<usize> = (0..12).collect();
    let mut c = cfg();
    c.fit.lr = 0.0; // nothing moves: the head is what initialisation left
    c.probe_init = true;
    let cls = train_classifier(
        &c,
        None,
        &bb,
        images(&ds, &labeled, &[], &norm),
        quiet(&dev, "p"),
    )
    .unwrap();
    // The same seeded backbone, probed by hand.
    let map = VarMap::new();
    let b0 = bb
        .build(params::seeded_var_builder(&map, c.fit.seed, &dev).pp(BACKBONE_PREFIX))
        .unwrap();
    let x = extract_features(b0.as_ref(), &ds, &labeled, &norm, 64, &dev).unwrap();
    let y: Vec<u32> = labeled.iter().map(|&i| ds.labels().unwrap()[i]).collect();
    let (w, b) = fit_linear_head(&c, &x, &y, 2).unwrap();
    let diff = |a: &Tensor, b: &Tensor| params::max_abs_diff(a, b).unwrap();
    assert!(diff(cls.head.weight(), &w) < 1e-5);
    assert!(diff(cls.head.bias().unwrap(), &b) < 1e-5);
    // Without it the head keeps its random initialisation.
    c.probe_init = false;
    let plain = train_classifier(
        &c,
        None,
        &bb,
        images(&ds, &labeled, &[], &norm),
        quiet(&dev, "f"),
    )
    .unwrap();
    assert!(diff(plain.head.weight(), &w) > 1e-2);
}

#[test]
fn distill_trains_the_student_towards_the_teacher() {
    let dev = Device::Cpu;
    let (ds, norm, bb) = tiny_task(64);
    let labeled: Vec<usize> = (0..8).collect();
    let mut tcfg = cfg();
    tcfg.fit.epochs = 30;
    tcfg.fit.lr = 1e-2;
    let teacher = train_classifier(
        &tcfg,
        None,
        &bb,
        images(&ds, &labeled, &[], &norm),
        quiet(&dev, "t"),
    )
    .unwrap();
    // a barely trained student from other random weights
    tcfg.fit.epochs = 1;
    tcfg.fit.lr = 1e-5;
    tcfg.fit.seed = 9;
    let student = train_classifier(
        &tcfg,
        None,
        &bb,
        images(&ds, &labeled, &[], &norm),
        quiet(&dev, "s"),
    )
    .unwrap();
    let dcfg = DistillConfig {
        fit: FitConfig {
            epochs: 8,
            batch_size: 16,
            lr: 1e-2,
            ..cfg().fit
        },
        augment: Pipeline::default(),
        temperature: 1.0,
        labeled_share: 0.2,
        eval_batch: 32,
    };
    // the pool overlaps the labeled images: they must be dropped from it
    let pool: Vec<usize> = (4..64).collect();
    let (student, pseudo) = distill(
        &dcfg,
        &teacher,
        student,
        images(&ds, &labeled, &pool, &norm),
        quiet(&dev, "d"),
    )
    .unwrap();
    assert_eq!(pseudo.len(), 56, "labeled images 4..8 leave the pool");
    let unl: Vec<usize> = (8..64).collect();
    let taught = teacher.predict(&ds, &unl, &norm, 32, &dev).unwrap();
    assert_eq!(
        pseudo, taught,
        "pseudo-labels are the teacher's predictions"
    );
    let learned = student.predict(&ds, &unl, &norm, 32, &dev).unwrap();
    let agree = learned.iter().zip(&taught).filter(|(a, b)| a == b).count();
    assert!(agree >= 50, "student agrees with the teacher on {agree}/56");
    let loss = &student.report.train_loss;
    assert_eq!(loss.len(), 8);
    assert!(loss[7] < loss[0], "distillation loss must fall: {loss:?}");

    let teacher2 = train_classifier(
        &cfg(),
        None,
        &bb,
        images(&ds, &labeled, &[], &norm),
        quiet(&dev, "t"),
    )
    .unwrap();
    let mut bad = dcfg.clone();
    bad.temperature = 0.0;
    let e = distill(
        &bad,
        &teacher,
        teacher2,
        images(&ds, &labeled, &pool, &norm),
        quiet(&dev, "d"),
    )
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains("distill_temperature"), "{e}");
}

#[test]
fn distribution_alignment_pulls_predictions_to_the_labeled_balance() {
    let close = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-5);
    // balanced labels; a model that favours class 0
    let mut da = DistributionAlignment::new(&[0, 1, 0, 1], 2, 0.99);
    let out = da.align(&[vec![0.9, 0.1], vec![0.7, 0.3]]);
    // running mean (0.8, 0.2): weights (0.5/0.8, 0.5/0.2), renormalised
    assert!(close(&out[0], &[0.5625 / 0.8125, 0.25 / 0.8125]), "{out:?}");
    assert!(close(&out[1], &[0.4375 / 1.1875, 0.75 / 1.1875]), "{out:?}");
    for row in &out {
        assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-5);
    }
    // the running average moves slowly: the next uniform batch is still
    // pushed away from class 0
    let out = da.align(&[vec![0.5, 0.5]]);
    let r0 = 0.99 * 0.8 + 0.01 * 0.5;
    let w = [0.5 * 0.5 / r0, 0.5 * 0.5 / (1.0 - r0)];
    let want = [w[0] / (w[0] + w[1]), w[1] / (w[0] + w[1])];
    assert!(close(&out[0], &[want[0] as f32, want[1] as f32]), "{out:?}");
    // predictions already in the labeled balance are left as they are
    let mut da = DistributionAlignment::new(&[0, 1], 2, 0.99);
    let rows = vec![vec![0.6, 0.4], vec![0.4, 0.6]];
    let out = da.align(&rows);
    assert!(
        close(&out[0], &rows[0]) && close(&out[1], &rows[1]),
        "{out:?}"
    );
    // the target follows the labeled images' classes (3 of class 1)
    let mut da = DistributionAlignment::new(&[1, 1, 1, 0], 2, 0.99);
    let out = da.align(&[vec![0.5, 0.5]]);
    assert!(close(&out[0], &[0.25, 0.75]), "{out:?}");
}

#[test]
fn fixmatch_masks_by_confidence_learns_the_task_and_checks_its_settings() {
    let dev = Device::Cpu;
    let (ds, norm, bb) = tiny_task(64);
    let labeled: Vec<usize> = (0..8).collect();
    // a barely trained start: near-uniform predictions
    let mut tcfg = cfg();
    tcfg.fit.epochs = 1;
    tcfg.fit.lr = 1e-5;
    let start = || {
        train_classifier(
            &tcfg,
            None,
            &bb,
            images(&ds, &labeled, &[], &norm),
            quiet(&dev, "s"),
        )
        .unwrap()
    };
    let fcfg = FixMatchConfig {
        fit: FitConfig {
            epochs: 8,
            batch_size: 16,
            lr: 1e-2,
            ..cfg().fit
        },
        labeled_batch: 8,
        weak: Pipeline::default(),
        strong: Pipeline::default(),
        threshold: 0.0,
        unlabeled_weight: 1.0,
        eval_batch: 32,
        distribution_alignment: false,
    };
    // the pool overlaps the labeled images: they are dropped from it
    let pool: Vec<usize> = (4..64).collect();
    let unl: Vec<usize> = (8..64).collect();
    let fm = |c: &FixMatchConfig| {
        fixmatch(
            c,
            start(),
            images(&ds, &labeled, &pool, &norm),
            quiet(&dev, "fm"),
        )
        .unwrap()
    };
    // Threshold 0: every unlabeled image counts in every epoch.
    let (_, stats) = fm(&fcfg);
    assert_eq!(stats.mask_rate, vec![1.0; 8]);
    // Threshold 1: a near-uniform start is never that sure, so the
    // first epoch's unlabeled images all fall under it.
    let (_, stats) = fm(&FixMatchConfig {
        threshold: 1.0,
        ..fcfg.clone()
    });
    assert_eq!(stats.mask_rate[0], 0.0, "{:?}", stats.mask_rate);
    assert!(stats.mask_rate.iter().all(|m| (0.0..=1.0).contains(m)));
    // The usual threshold, plain and with distribution alignment: the
    // labeled images teach the task, and the unlabeled ones join as the
    // model grows sure of them.
    let truth = ds.labels().unwrap();
    for align in [false, true] {
        let (student, stats) = fm(&FixMatchConfig {
            threshold: 0.95,
            distribution_alignment: align,
            ..fcfg.clone()
        });
        assert_eq!(student.report.train_loss.len(), 8);
        assert!(
            stats.mask_rate[7] > stats.mask_rate[0],
            "align {align}: {:?}",
            stats.mask_rate
        );
        let p = student.predict(&ds, &unl, &norm, 32, &dev).unwrap();
        let right = p.iter().zip(&unl).filter(|(p, &i)| **p == truth[i]).count();
        assert!(right >= 50, "align {align}: {right}/56 right");
    }

    let bad = |c: FixMatchConfig, pool: &[usize]| {
        fixmatch(
            &c,
            start(),
            images(&ds, &labeled, pool, &norm),
            quiet(&dev, "fm"),
        )
        .err()
        .unwrap()
        .to_string()
    };
    let e = bad(
        FixMatchConfig {
            threshold: 1.5,
            ..fcfg.clone()
        },
        &pool,
    );
    assert!(e.contains("fixmatch_threshold"), "{e}");
    let e = bad(
        FixMatchConfig {
            labeled_batch: 0,
            ..fcfg.clone()
        },
        &pool,
    );
    assert!(e.contains("fixmatch_labeled_batch"), "{e}");
    let e = bad(fcfg.clone(), &labeled);
    assert!(e.contains("no unlabeled images left"), "{e}");
}

#[test]
fn reestimating_batchnorm_makes_eval_mode_match_batch_statistics() {
    let dev = Device::Cpu;
    let (ds, norm, bb_cfg) = tiny_task(32);
    let all: Vec<usize> = (0..32).collect();
    let map = VarMap::new();
    let bb = bb_cfg
        .build(params::seeded_var_builder(&map, 0, &dev))
        .unwrap();
    let x = batch::gather(&ds, &all, &norm, &dev).unwrap();
    let train_mode = bb.forward_t(&x, true).unwrap().detach();
    let before = bb.forward_t(&x, false).unwrap();
    let weights: Vec<(String, Tensor)> = params::trainable_vars(&map)
        .into_iter()
        .map(|(n, v)| (n, v.as_tensor().copy().unwrap()))
        .collect();
    // One pass moves the averages 10 %; 80 passes over the same batch
    // leave 0.9^80 < 3e-4 of the initial (0, 1).
    for _ in 0..80 {
        reestimate_batchnorm(bb.as_ref(), &ds, &all, &norm, 32, &dev).unwrap();
    }
    let after = bb.forward_t(&x, false).unwrap();
    let gap_before = params::max_abs_diff(&before, &train_mode).unwrap();
    let gap_after = params::max_abs_diff(&after, &train_mode).unwrap();
    assert!(
        gap_before > 0.05,
        "initial averages already fit: {gap_before}"
    );
    assert!(gap_after < 0.02, "eval vs batch statistics: {gap_after}");
    for (name, w) in weights {
        let now = map.data().lock().unwrap()[&name]
            .as_tensor()
            .copy()
            .unwrap();
        assert_eq!(
            params::max_abs_diff(&w, &now).unwrap(),
            0.0,
            "{name} changed"
        );
    }
}

#[test]
fn linear_probe_learns_blobs() {
    let (tr, ty) = blobs(6, 0.0);
    let (te, ey) = blobs(5, 0.3);
    let pred = linear_probe(&cfg(), &tr, &ty, &te, 3).unwrap();
    assert_eq!(selfsup_core::metrics::accuracy(&pred, &ey), 1.0);
}
