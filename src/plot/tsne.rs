//! Exact t-SNE (van der Maaten & Hinton 2008) to two dimensions, for the
//! embedding figure: at most a few thousand points, so the O(n²) gradient
//! costs seconds and needs no Barnes-Hut tree. Deterministic: PCA
//! initialisation, no random numbers, and every sum taken in a fixed order
//! whatever the thread count.

use super::pca2;
use crate::core::{Error, Result};
use rayon::prelude::*;

/// t-SNE settings; the defaults are scikit-learn's (perplexity 30, 1,000
/// iterations, early exaggeration 12 for 250 of them, learning rate
/// max(n / 48, 50), PCA initialisation scaled to a standard deviation of
/// 1e-4).
#[derive(Debug, Clone, PartialEq)]
pub struct Tsne {
    /// The effective number of neighbours each point's affinities cover.
    pub perplexity: f64,
    /// Gradient-descent iterations.
    pub iterations: usize,
}

impl Default for Tsne {
    fn default() -> Self {
        Self {
            perplexity: 30.0,
            iterations: 1000,
        }
    }
}

/// The most points [`tsne2`] accepts (its memory and time grow with n²).
pub const MAX_POINTS: usize = 5000;
const EXAGGERATION: f64 = 12.0;
const EXAGGERATED_ITERATIONS: usize = 250;

/// Embeds the rows of `x` (n x d, row-major) in two dimensions with t-SNE.
pub fn tsne2(x: &[f32], n: usize, d: usize, cfg: &Tsne) -> Result<Vec<[f64; 2]>> {
    if x.len() != n * d {
        return Err(Error::invalid(
            "t-SNE",
            format!("{} values for {n} x {d} points", x.len()),
        ));
    }
    if n > MAX_POINTS {
        return Err(Error::invalid(
            "t-SNE",
            format!("{n} points; exact t-SNE takes at most {MAX_POINTS}"),
        ));
    }
    if !(cfg.perplexity >= 1.0 && cfg.perplexity < n as f64) {
        return Err(Error::invalid(
            "t-SNE",
            format!(
                "perplexity {} must lie in [1, {n}) for {n} points",
                cfg.perplexity
            ),
        ));
    }
    let p = joint_affinities(&squared_distances(x, n, d), n, cfg.perplexity);
    let mut y = pca2(x, n, d);
    let sd = (y.iter().map(|q| q[0] * q[0]).sum::<f64>() / n as f64).sqrt();
    let scale = if sd > 0.0 { 1e-4 / sd } else { 0.0 };
    y.iter_mut().for_each(|q| *q = [q[0] * scale, q[1] * scale]);
    descend(&p, &mut y, cfg.iterations);
    Ok(y)
}

/// The n x n squared Euclidean distances between rows.
fn squared_distances(x: &[f32], n: usize, d: usize) -> Vec<f64> {
    let mut dist = vec![0f64; n * n];
    dist.par_chunks_mut(n).enumerate().for_each(|(i, row)| {
        let a = &x[i * d..(i + 1) * d];
        for (j, out) in row.iter_mut().enumerate() {
            let b = &x[j * d..(j + 1) * d];
            *out = a
                .iter()
                .zip(b)
                .map(|(&u, &v)| (f64::from(u) - f64::from(v)).powi(2))
                .sum();
        }
    });
    dist
}

/// The conditional affinities of row `i` (`dist` its squared distances),
/// with the Gaussian's precision found by bisection so that their entropy
/// is ln(perplexity).
pub(crate) fn conditional_row(dist: &[f64], i: usize, perplexity: f64) -> Vec<f64> {
    let target = perplexity.ln();
    let (mut lo, mut hi, mut beta) = (0.0f64, f64::INFINITY, 1.0f64);
    // Distances relative to the nearest neighbour keep exp() in range.
    let near = dist
        .iter()
        .enumerate()
        .filter(|&(j, _)| j != i)
        .map(|(_, &v)| v)
        .fold(f64::INFINITY, f64::min);
    let mut row = vec![0f64; dist.len()];
    for _ in 0..200 {
        let mut sum = 0.0;
        let mut weighted = 0.0;
        for (j, (&dv, r)) in dist.iter().zip(row.iter_mut()).enumerate() {
            let e = if j == i {
                0.0
            } else {
                (-(dv - near) * beta).exp()
            };
            *r = e;
            sum += e;
            weighted += e * (dv - near);
        }
        let entropy = sum.ln() + beta * weighted / sum;
        if (entropy - target).abs() < 1e-10 {
            break;
        }
        if entropy > target {
            lo = beta;
            beta = if hi.is_finite() {
                (beta + hi) / 2.0
            } else {
                beta * 2.0
            };
        } else {
            hi = beta;
            beta = (beta + lo) / 2.0;
        }
    }
    let sum: f64 = row.iter().sum();
    row.iter_mut().for_each(|r| *r /= sum);
    row
}

/// The symmetrised joint affinities (p_j|i + p_i|j) / 2n.
fn joint_affinities(dist: &[f64], n: usize, perplexity: f64) -> Vec<f64> {
    let mut cond = vec![0f64; n * n];
    cond.par_chunks_mut(n).enumerate().for_each(|(i, row)| {
        row.copy_from_slice(&conditional_row(&dist[i * n..(i + 1) * n], i, perplexity));
    });
    let mut p = vec![0f64; n * n];
    for i in 0..n {
        for j in 0..n {
            p[i * n + j] = ((cond[i * n + j] + cond[j * n + i]) / (2.0 * n as f64)).max(1e-12);
        }
    }
    p
}

/// Gradient descent with momentum and per-coordinate gains, as in the
/// reference implementation.
fn descend(p: &[f64], y: &mut [[f64; 2]], iterations: usize) {
    let n = y.len();
    let lr = (n as f64 / EXAGGERATION / 4.0).max(50.0);
    let mut velocity = vec![[0f64; 2]; n];
    let mut gains = vec![[1f64; 2]; n];
    for it in 0..iterations {
        let exaggeration = if it < EXAGGERATED_ITERATIONS {
            EXAGGERATION
        } else {
            1.0
        };
        let momentum = if it < EXAGGERATED_ITERATIONS {
            0.5
        } else {
            0.8
        };
        let grad = gradient(p, y, exaggeration);
        for ((q, v), (g, gain)) in y
            .iter_mut()
            .zip(&mut velocity)
            .zip(grad.iter().zip(&mut gains))
        {
            for k in 0..2 {
                gain[k] = if (g[k] > 0.0) != (v[k] > 0.0) {
                    gain[k] + 0.2
                } else {
                    (gain[k] * 0.8).max(0.01)
                };
                v[k] = momentum * v[k] - lr * gain[k] * g[k];
                q[k] += v[k];
            }
        }
        let mean = y.iter().fold([0.0; 2], |m, q| [m[0] + q[0], m[1] + q[1]]);
        let mean = [mean[0] / n as f64, mean[1] / n as f64];
        y.iter_mut()
            .for_each(|q| *q = [q[0] - mean[0], q[1] - mean[1]]);
    }
}

/// The gradient of KL(P || Q) in one pass over the pairs: the attractive
/// part uses p, the repulsive part needs the normaliser Z, applied after.
fn gradient(p: &[f64], y: &[[f64; 2]], exaggeration: f64) -> Vec<[f64; 2]> {
    let n = y.len();
    let rows: Vec<([f64; 2], [f64; 2], f64)> = (0..n)
        .into_par_iter()
        .map(|i| {
            let (mut attr, mut rep, mut z) = ([0.0; 2], [0.0; 2], 0.0);
            for j in (0..n).filter(|&j| j != i) {
                let dx = [y[i][0] - y[j][0], y[i][1] - y[j][1]];
                let num = 1.0 / (1.0 + dx[0] * dx[0] + dx[1] * dx[1]);
                let a = exaggeration * p[i * n + j] * num;
                let r = num * num;
                for k in 0..2 {
                    attr[k] += a * dx[k];
                    rep[k] += r * dx[k];
                }
                z += num;
            }
            (attr, rep, z)
        })
        .collect();
    let z: f64 = rows.iter().map(|r| r.2).sum::<f64>().max(f64::MIN_POSITIVE);
    rows.iter()
        .map(|(a, r, _)| [4.0 * (a[0] - r[0] / z), 4.0 * (a[1] - r[1] / z)])
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn affinities_have_the_asked_perplexity() {
        let dist: Vec<f64> = (0..40).map(|j| (j as f64 * 0.37).powi(2)).collect();
        for perplexity in [2.0, 5.0, 15.0] {
            let row = conditional_row(&dist, 3, perplexity);
            assert_eq!(row[3], 0.0, "no self-affinity");
            assert!((row.iter().sum::<f64>() - 1.0).abs() < 1e-12);
            let entropy: f64 = row.iter().filter(|&&q| q > 0.0).map(|&q| -q * q.ln()).sum();
            assert!(
                (entropy.exp() - perplexity).abs() < 1e-6,
                "{perplexity}: {}",
                entropy.exp()
            );
        }
    }

    /// Three tight clusters in 20-D that a 2-D projection of the first two
    /// coordinates could not separate (their centres differ elsewhere).
    fn clusters() -> (Vec<f32>, Vec<usize>) {
        let (mut x, mut label) = (Vec::new(), Vec::new());
        for i in 0..60 {
            let c = i % 3;
            for k in 0..20 {
                let centre = if k == 5 + 4 * c { 10.0 } else { 0.0 };
                let wobble = (((i * 31 + k * 17) % 13) as f32 - 6.0) * 0.05;
                x.push(centre + wobble);
            }
            label.push(c);
        }
        (x, label)
    }

    #[test]
    fn tsne_keeps_clusters_apart_and_is_deterministic() {
        let (x, label) = clusters();
        let cfg = Tsne {
            perplexity: 10.0,
            iterations: 400,
        };
        let y = tsne2(&x, 60, 20, &cfg).unwrap();
        for i in 0..60 {
            let nearest = (0..60)
                .filter(|&j| j != i)
                .min_by(|&a, &b| {
                    let d = |j: usize| (y[i][0] - y[j][0]).powi(2) + (y[i][1] - y[j][1]).powi(2);
                    d(a).total_cmp(&d(b))
                })
                .unwrap();
            assert_eq!(
                label[nearest], label[i],
                "point {i}'s 2-D neighbour is in its cluster"
            );
        }
        assert_eq!(
            y,
            tsne2(&x, 60, 20, &cfg).unwrap(),
            "same input, same embedding"
        );
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        assert_eq!(
            y,
            pool.install(|| tsne2(&x, 60, 20, &cfg).unwrap()),
            "any thread count"
        );
    }

    #[test]
    fn tsne_refuses_what_it_cannot_do() {
        let (x, _) = clusters();
        let bad = Tsne {
            perplexity: 60.0,
            ..Tsne::default()
        };
        assert!(tsne2(&x, 60, 20, &bad)
            .unwrap_err()
            .to_string()
            .contains("perplexity"));
        assert!(tsne2(&x, 61, 20, &Tsne::default()).is_err());
    }
}
