//! Protocols on frozen features: a logistic-regression probe and cosine
//! kNN with k chosen by leave-one-out on the labeled images.

use crate::classifier::{to_cpu_f32, TransferConfig};
use candle_core::{Module, Tensor, D};
use candle_nn::{Linear, VarMap};
use selfsup_core::train::{fit, FitConfig, FitRun};
use selfsup_core::{params, Result};

/// Column mean and std of `x` (N, D), for standardising features.
fn standardiser(x: &Tensor) -> Result<(Tensor, Tensor)> {
    let mean = x.mean_keepdim(0)?;
    let std = (x.broadcast_sub(&mean)?.sqr()?.mean_keepdim(0)? + 1e-6)?.sqrt()?;
    Ok((mean, std))
}

/// Logistic regression on frozen features: trains on (`train_x`,
/// `train_y`), predicts `test_x`. Features are standardised with the
/// training features' statistics.
pub fn linear_probe(
    cfg: &TransferConfig,
    train_x: &Tensor,
    train_y: &[u32],
    test_x: &Tensor,
    classes: usize,
) -> Result<Vec<u32>> {
    let (w, b) = fit_linear_head(cfg, train_x, train_y, classes)?;
    Ok(Linear::new(w, Some(b))
        .forward(test_x)?
        .argmax(D::Minus1)?
        .to_vec1::<u32>()?)
}

/// Logistic regression on frozen features, as weight (C, D) and bias (C)
/// acting on the raw features (the standardisation folded in).
pub fn fit_linear_head(
    cfg: &TransferConfig,
    train_x: &Tensor,
    train_y: &[u32],
    classes: usize,
) -> Result<(Tensor, Tensor)> {
    let device = train_x.device();
    let (mean, std) = standardiser(train_x)?;
    let norm = |x: &Tensor| -> Result<Tensor> {
        Ok(x.broadcast_sub(&mean)?.broadcast_div(&std)?.detach())
    };
    let tx = norm(train_x)?;
    let map = VarMap::new();
    let head = candle_nn::linear(
        tx.dim(1)?,
        classes,
        params::seeded_var_builder(&map, cfg.fit.seed ^ 0x11ea, device),
    )?;
    let y = Tensor::from_vec(train_y.to_vec(), train_y.len(), device)?;
    let fit_cfg = FitConfig {
        epochs: cfg.linear_steps,
        batch_size: train_y.len(),
        lr: cfg.linear_lr,
        weight_decay: cfg.linear_weight_decay,
        warmup_fraction: 0.0,
        patience: None,
        seed: cfg.fit.seed,
        drop_last: false,
    };
    fit(
        FitRun {
            cfg: &fit_cfg,
            stage: "linear probe",
            n_items: train_y.len(),
            vars: map.all_vars(),
            map: &map,
            quiet: true,
            checkpoint: None,
        },
        |_, _| {
            Ok((
                candle_nn::loss::cross_entropy(&head.forward(&tx)?, &y)?,
                train_y.len(),
            ))
        },
        None,
    )?;
    let w = head.weight().broadcast_div(&std)?;
    let b = (head.bias().expect("linear has a bias") - w.matmul(&mean.t()?)?.squeeze(1)?)?;
    Ok((w.detach(), b.detach()))
}

fn l2_normalise(x: &Tensor) -> Result<Tensor> {
    let n = (x.sqr()?.sum_keepdim(1)? + 1e-12)?.sqrt()?;
    Ok(x.broadcast_div(&n)?)
}

/// How the `k` nearest neighbours' votes are weighed.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum Weighting {
    /// 1 + cosine similarity.
    #[default]
    Similarity,
    /// exp(cosine similarity / T): the kNN of lightly's and solo-learn's
    /// monitors (T = 0.1 there), which lets the nearest neighbours dominate.
    Temperature(f32),
}

impl Weighting {
    /// The vote of a neighbour at cosine similarity `sim`.
    pub fn weight(self, sim: f32) -> f32 {
        match self {
            Weighting::Similarity => 1.0 + sim,
            Weighting::Temperature(t) => (sim / t).exp(),
        }
    }
}

/// Votes of the `k` most similar references for each query, weighed by
/// `weighting`; `exclude_self` skips the query's own index (leave-one-out).
/// Equal similarities go to the lower index, equal votes to the lower class.
pub(crate) fn knn_vote(
    sim: &[Vec<f32>],
    ref_y: &[u32],
    k: usize,
    classes: usize,
    exclude_self: bool,
    weighting: Weighting,
) -> Vec<u32> {
    sim.iter()
        .enumerate()
        .map(|(q, row)| {
            let mut order: Vec<usize> = (0..row.len())
                .filter(|&j| !(exclude_self && j == q))
                .collect();
            order.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
            let mut votes = vec![0f32; classes];
            for &j in order.iter().take(k) {
                votes[ref_y[j] as usize] += weighting.weight(row[j]);
            }
            votes
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1).then(b.0.cmp(&a.0)))
                .map_or(0, |(c, _)| c as u32)
        })
        .collect()
}

/// Leave-one-out accuracy of cosine `k`-NN on (`x`, `y`): each sample is
/// classified by the others (a label-cheap monitor of feature quality).
pub fn knn_leave_one_out(x: &Tensor, y: &[u32], classes: usize, k: usize) -> Result<f64> {
    let x = l2_normalise(&to_cpu_f32(x)?)?;
    let sim: Vec<Vec<f32>> = x.matmul(&x.t()?)?.to_vec2()?;
    let k = k.clamp(1, y.len().saturating_sub(1).max(1));
    let pred = knn_vote(&sim, y, k, classes, true, Weighting::Similarity);
    Ok(selfsup_core::metrics::accuracy(&pred, y))
}

/// Cosine kNN with votes weighed by `weighting`. Chooses k among `ks` by
/// leave-one-out accuracy on the training features (ties go to the smaller
/// k), then predicts `test_x`. Returns the predictions and the chosen k.
pub fn knn(
    train_x: &Tensor,
    train_y: &[u32],
    test_x: &Tensor,
    classes: usize,
    ks: &[usize],
    weighting: Weighting,
) -> Result<(Vec<u32>, usize)> {
    let tr = l2_normalise(train_x)?;
    let te = l2_normalise(test_x)?;
    let self_sim: Vec<Vec<f32>> = tr.matmul(&tr.t()?)?.to_vec2()?;
    let n = train_y.len();
    let mut candidates: Vec<usize> = ks.iter().copied().filter(|&k| k >= 1 && k < n).collect();
    if candidates.is_empty() {
        candidates.push(1);
    }
    let mut best = (f64::NEG_INFINITY, candidates[0]);
    for &k in &candidates {
        let pred = knn_vote(&self_sim, train_y, k, classes, true, weighting);
        let acc = selfsup_core::metrics::accuracy(&pred, train_y);
        if acc > best.0 {
            best = (acc, k);
        }
    }
    let k = best.1;
    let mut preds = Vec::with_capacity(te.dim(0)?);
    // Chunk the test set to bound the similarity matrix's memory.
    for start in (0..te.dim(0)?).step_by(2048) {
        let len = 2048.min(te.dim(0)? - start);
        let sim: Vec<Vec<f32>> = te.narrow(0, start, len)?.matmul(&tr.t()?)?.to_vec2()?;
        preds.extend(knn_vote(&sim, train_y, k, classes, false, weighting));
    }
    Ok((preds, k))
}
