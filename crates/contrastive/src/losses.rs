//! The losses, as functions of projected (or predicted) embeddings. Each
//! takes the two views' embeddings `(N, d)` row-aligned: row i of `z1` and
//! row i of `z2` come from the same image.

use candle_core::{DType, Tensor, D};
use selfsup_core::{Error, Result};

/// Rows scaled to unit L2 norm.
pub fn l2_normalize(x: &Tensor) -> Result<Tensor> {
    let n = (x.sqr()?.sum_keepdim(D::Minus1)? + 1e-12)?.sqrt()?;
    Ok(x.broadcast_div(&n)?)
}

fn eye(n: usize, like: &Tensor) -> Result<Tensor> {
    Ok(Tensor::eye(n, DType::F32, like.device())?)
}

fn check_pair(z1: &Tensor, z2: &Tensor, min_rows: usize, what: &str) -> Result<usize> {
    let (n, d) = z1.dims2()?;
    if z2.dims2()? != (n, d) {
        return Err(Error::invalid(
            what,
            format!("views disagree: {:?} vs {:?}", z1.dims(), z2.dims()),
        ));
    }
    if n < min_rows {
        return Err(Error::invalid(
            what,
            format!("needs a batch of at least {min_rows} images, got {n}"),
        ));
    }
    Ok(n)
}

/// For each of the 2N rows of `[z1; z2]`, the index of its partner view.
fn partners(n: usize) -> Vec<u32> {
    (0..2 * n).map(|i| ((i + n) % (2 * n)) as u32).collect()
}

/// NT-Xent, the normalised temperature-scaled cross-entropy of SimCLR
/// (Chen et al., 2020): every one of the 2N views must pick its partner out
/// of the other 2N - 1 by cosine similarity / `tau`, so each anchor has one
/// positive and 2N - 2 negatives. Mean over the 2N anchors.
pub fn nt_xent(z1: &Tensor, z2: &Tensor, tau: f64) -> Result<Tensor> {
    let n = check_pair(z1, z2, 1, "nt_xent")?;
    let z = l2_normalize(&Tensor::cat(&[z1, z2], 0)?)?;
    let sim = (z.matmul(&z.t()?)? / tau)?;
    // An anchor is not its own negative: push the diagonal to -1e9.
    let sim = (sim - (eye(2 * n, z1)? * 1e9)?)?;
    let labels = Tensor::from_vec(partners(n), 2 * n, z1.device())?;
    Ok(candle_nn::loss::cross_entropy(&sim, &labels)?)
}

/// Mean negative cosine similarity between `p` and `target`, with the target
/// detached: the SimSiam "D" (Chen & He, 2021). BYOL's loss is
/// `2 + 2 * negative_cosine` (Grill et al., 2020).
pub fn negative_cosine(p: &Tensor, target: &Tensor) -> Result<Tensor> {
    check_pair(p, target, 1, "negative_cosine")?;
    let cos = (l2_normalize(p)? * l2_normalize(&target.detach())?)?.sum(D::Minus1)?;
    Ok(cos.mean_all()?.neg()?)
}

/// Each column standardised over the batch.
fn standardize(z: &Tensor) -> Result<Tensor> {
    let mean = z.mean_keepdim(0)?;
    let c = z.broadcast_sub(&mean)?;
    let std = (c.sqr()?.mean_keepdim(0)? + 1e-5)?.sqrt()?;
    Ok(c.broadcast_div(&std)?)
}

/// Barlow Twins (Zbontar et al., 2021): the cross-correlation matrix of the
/// batch-standardised embeddings should be the identity; `lambda` weighs
/// the off-diagonal (redundancy) terms.
pub fn barlow_twins(z1: &Tensor, z2: &Tensor, lambda: f64) -> Result<Tensor> {
    let (n, d) = (check_pair(z1, z2, 2, "barlow_twins")?, z1.dim(1)?);
    let c = (standardize(z1)?.t()?.matmul(&standardize(z2)?)? / n as f64)?;
    let diag = (&c * eye(d, z1)?)?.sum(1)?;
    let on = (diag.clone() - 1.0)?.sqr()?.sum_all()?;
    let off = (c.sqr()?.sum_all()? - diag.sqr()?.sum_all()?)?;
    Ok((on + (off * lambda)?)?)
}

/// Weights of the three VICReg terms.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct VicregWeights {
    /// Invariance (mean squared distance between the views).
    pub invariance: f64,
    /// Variance (hinge keeping each dimension's std above 1).
    pub variance: f64,
    /// Covariance (off-diagonal covariance pushed to 0).
    pub covariance: f64,
}

impl Default for VicregWeights {
    /// The paper's 25 / 25 / 1.
    fn default() -> Self {
        Self {
            invariance: 25.0,
            variance: 25.0,
            covariance: 1.0,
        }
    }
}

/// VICReg (Bardes et al., 2022): invariance + variance + covariance.
pub fn vicreg(z1: &Tensor, z2: &Tensor, w: VicregWeights) -> Result<Tensor> {
    let (n, d) = (check_pair(z1, z2, 2, "vicreg")?, z1.dim(1)?);
    let inv = (z1 - z2)?.sqr()?.mean_all()?;
    let mut var = Tensor::zeros((), DType::F32, z1.device())?;
    let mut cov = var.clone();
    for z in [z1, z2] {
        let c = z.broadcast_sub(&z.mean_keepdim(0)?)?;
        let std = ((c.sqr()?.sum(0)? / (n - 1) as f64)? + 1e-4)?.sqrt()?;
        var = (var + (1.0 - std)?.relu()?.mean_all()?)?;
        let m = (c.t()?.matmul(&c)? / (n - 1) as f64)?;
        let off = (m.sqr()?.sum_all()? - (&m * eye(d, z1)?)?.sqr()?.sum_all()?)?;
        cov = (cov + (off / d as f64)?)?;
    }
    Ok(((inv * w.invariance)? + (var * (w.variance / 2.0))? + (cov * w.covariance)?)?)
}

/// InfoNCE against a queue (MoCo, He et al., 2020): each query's positive is
/// its own key, its negatives the `K` queued keys. `q`, `k` are (N, d) and
/// `queue` (K, d), all L2-normalised; the key side is detached.
pub fn info_nce_queue(q: &Tensor, k: &Tensor, queue: &Tensor, tau: f64) -> Result<Tensor> {
    let n = check_pair(q, k, 1, "info_nce_queue")?;
    let k = k.detach();
    let pos = (q * &k)?.sum_keepdim(1)?;
    let neg = q.matmul(&queue.detach().t()?)?;
    let logits = (Tensor::cat(&[&pos, &neg], 1)? / tau)?;
    let labels = Tensor::zeros(n, DType::U32, q.device())?;
    Ok(candle_nn::loss::cross_entropy(&logits, &labels)?)
}

/// Fraction of the 2N views whose most cosine-similar other view is their
/// partner: the pretext accuracy every method reports.
pub fn pair_retrieval_accuracy(z1: &Tensor, z2: &Tensor) -> Result<f64> {
    let n = check_pair(z1, z2, 1, "pair_retrieval_accuracy")?;
    let z = l2_normalize(&Tensor::cat(&[z1, z2], 0)?.detach())?;
    let sim = (z.matmul(&z.t()?)? - (eye(2 * n, z1)? * 1e9)?)?;
    let best = sim.argmax(D::Minus1)?.to_vec1::<u32>()?;
    let hits = best
        .iter()
        .zip(partners(n))
        .filter(|(a, b)| **a == *b)
        .count();
    Ok(hits as f64 / (2 * n) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn t(rows: &[&[f32]]) -> Tensor {
        let d = rows[0].len();
        let flat: Vec<f32> = rows.iter().flat_map(|r| r.iter().copied()).collect();
        Tensor::from_vec(flat, (rows.len(), d), &Device::Cpu).unwrap()
    }

    fn scalar(x: &Tensor) -> f32 {
        x.to_scalar::<f32>().unwrap()
    }

    fn random(n: usize, d: usize, seed: u64) -> Tensor {
        use rand::Rng as _;
        let mut r = selfsup_core::rng::stream(seed, "test");
        let v: Vec<f32> = (0..n * d).map(|_| r.random_range(-1.0f32..1.0)).collect();
        Tensor::from_vec(v, (n, d), &Device::Cpu).unwrap()
    }

    #[test]
    fn nt_xent_matches_hand_computed_values() {
        let z = t(&[&[1.0, 0.0], &[0.0, 1.0]]);
        // Anchor similarities: partner 1, two negatives 0. With tau:
        // -log(e^(1/tau) / (e^(1/tau) + 2)) = log(1 + 2 e^(-1/tau)).
        for tau in [1.0f64, 0.5, 0.1] {
            let want = (1.0 + 2.0 * (-1.0 / tau).exp()).ln() as f32;
            let got = scalar(&nt_xent(&z, &z, tau).unwrap());
            assert!((got - want).abs() < 1e-5, "tau {tau}: {got} vs {want}");
        }
        // Scale does not matter (cosine similarity).
        let z3 = (&z * 3.0).unwrap();
        assert!(
            (scalar(&nt_xent(&z3, &z, 1.0).unwrap()) - (1.0 + 2.0 / 1f32.exp()).ln()).abs() < 1e-5
        );
        // Opposite partners: similarity -1 to the partner, 0 to the negatives.
        let neg = z.neg().unwrap();
        let want = (1.0f32 + 2.0 * 1f32.exp()).ln();
        assert!((scalar(&nt_xent(&z, &neg, 1.0).unwrap()) - want).abs() < 1e-5);
    }

    #[test]
    fn nt_xent_is_lower_for_aligned_than_for_shuffled_pairs() {
        let z1 = random(16, 8, 1);
        let z2 = (&z1 + (random(16, 8, 2) * 0.1).unwrap()).unwrap();
        let order: Vec<u32> = (0..16u32).map(|i| (i + 5) % 16).collect();
        let shuffled = z2
            .index_select(&Tensor::new(order.as_slice(), &Device::Cpu).unwrap(), 0)
            .unwrap();
        let aligned = scalar(&nt_xent(&z1, &z2, 0.5).unwrap());
        let wrong = scalar(&nt_xent(&z1, &shuffled, 0.5).unwrap());
        assert!(
            aligned < wrong - 0.5,
            "aligned {aligned} vs shuffled {wrong}"
        );
        assert_eq!(pair_retrieval_accuracy(&z1, &z2).unwrap(), 1.0);
        assert!(pair_retrieval_accuracy(&z1, &shuffled).unwrap() < 0.5);
    }

    #[test]
    fn negative_cosine_values_and_stop_gradient() {
        let z = t(&[&[1.0, 2.0], &[-3.0, 0.5]]);
        assert!((scalar(&negative_cosine(&z, &z).unwrap()) + 1.0).abs() < 1e-6);
        assert!((scalar(&negative_cosine(&z, &z.neg().unwrap()).unwrap()) - 1.0).abs() < 1e-6);
        let p = Var::from_tensor(&z).unwrap();
        let target = Var::from_tensor(&random(2, 2, 3)).unwrap();
        let loss = negative_cosine(p.as_tensor(), target.as_tensor()).unwrap();
        let grads = loss.backward().unwrap();
        let gp = grads.get(p.as_tensor()).expect("the online side learns");
        assert!(scalar(&gp.abs().unwrap().sum_all().unwrap()) > 0.0);
        assert!(
            grads.get(target.as_tensor()).is_none(),
            "the stopped side gets no gradient"
        );
    }

    #[test]
    fn barlow_twins_is_zero_at_the_identity_and_counts_the_diagonal() {
        // Standardised columns that are orthogonal: cross-correlation = I.
        let z = t(&[&[1.0, 1.0], &[-1.0, 1.0], &[1.0, -1.0], &[-1.0, -1.0]]);
        assert!(scalar(&barlow_twins(&z, &z, 5e-3).unwrap()).abs() < 1e-3);
        // Anti-correlated views: each diagonal entry is -1, (−1 − 1)² = 4 each.
        let got = scalar(&barlow_twins(&z, &z.neg().unwrap(), 5e-3).unwrap());
        assert!((got - 8.0).abs() < 1e-2, "{got}");
        // Identical columns: off-diagonal 1 twice, weighted by lambda.
        let same = t(&[&[1.0, 1.0], &[-1.0, -1.0], &[1.0, 1.0], &[-1.0, -1.0]]);
        let got = scalar(&barlow_twins(&same, &same, 0.5).unwrap());
        assert!((got - 1.0).abs() < 1e-2, "{got}");
    }

    #[test]
    fn vicreg_terms() {
        let z = t(&[&[2.0, 2.0], &[-2.0, 2.0], &[2.0, -2.0], &[-2.0, -2.0]]);
        let w = VicregWeights::default();
        assert!(
            scalar(&vicreg(&z, &z, w).unwrap()).abs() < 1e-5,
            "spread, decorrelated, aligned: 0"
        );
        // Collapsed embeddings pay the variance hinge: 25/2 * 2 * (1 - sqrt(1e-4)).
        let flat = t(&[&[1.0, 1.0], &[1.0, 1.0], &[1.0, 1.0], &[1.0, 1.0]]);
        let got = scalar(&vicreg(&flat, &flat, w).unwrap());
        assert!((got - 25.0 * 0.99).abs() < 1e-3, "{got}");
        // Invariance only: shifting one view by 1 costs 25 * 1.
        let got = scalar(&vicreg(&z, &(&z + 1.0).unwrap(), w).unwrap());
        assert!((got - 25.0).abs() < 1e-3, "{got}");
    }

    #[test]
    fn info_nce_queue_matches_hand_computed_value_and_stops_the_keys() {
        let q = t(&[&[1.0, 0.0]]);
        let queue = t(&[&[0.0, 1.0], &[-1.0, 0.0]]);
        // logits [1, 0, -1]: loss = log(1 + e^-1 + e^-2)
        let want = (1.0f32 + (-1f32).exp() + (-2f32).exp()).ln();
        let got = scalar(&info_nce_queue(&q, &q, &queue, 1.0).unwrap());
        assert!((got - want).abs() < 1e-5);
        let qv = Var::from_tensor(&q).unwrap();
        let kv = Var::from_tensor(&t(&[&[0.6, 0.8]])).unwrap();
        let qu = Var::from_tensor(&queue).unwrap();
        let loss = info_nce_queue(qv.as_tensor(), kv.as_tensor(), qu.as_tensor(), 0.2).unwrap();
        let grads = loss.backward().unwrap();
        assert!(grads.get(qv.as_tensor()).is_some());
        assert!(grads.get(kv.as_tensor()).is_none());
        assert!(grads.get(qu.as_tensor()).is_none());
    }
}
