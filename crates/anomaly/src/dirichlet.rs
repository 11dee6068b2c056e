//! Dirichlet maximum-likelihood fitting (Minka's fixed point) and log
//! density, for the normality score of Golan & El-Yaniv (2018): the softmax
//! outputs a detector gives normal images under transformation t are
//! modelled as Dirichlet(alpha_t).

use serde::{Deserialize, Serialize};

/// Digamma function psi(x) for x > 0 (recurrence up to 6, then the
/// asymptotic series).
pub fn digamma(mut x: f64) -> f64 {
    let mut acc = 0.0;
    while x < 6.0 {
        acc -= 1.0 / x;
        x += 1.0;
    }
    let f = 1.0 / (x * x);
    acc + x.ln()
        - 0.5 / x
        - f * (1.0 / 12.0 - f * (1.0 / 120.0 - f * (1.0 / 252.0 - f * (1.0 / 240.0 - f / 132.0))))
}

/// Trigamma function psi'(x) for x > 0.
pub fn trigamma(mut x: f64) -> f64 {
    let mut acc = 0.0;
    while x < 6.0 {
        acc += 1.0 / (x * x);
        x += 1.0;
    }
    let f = 1.0 / (x * x);
    acc + 1.0 / x + f / 2.0 + f / x * (1.0 / 6.0 - f * (1.0 / 30.0 - f * (1.0 / 42.0 - f / 30.0)))
}

/// Inverse of [`digamma`] (Minka's initialisation, then Newton steps).
pub fn inv_digamma(y: f64) -> f64 {
    let mut x = if y >= -2.22 {
        y.exp() + 0.5
    } else {
        -1.0 / (y - digamma(1.0))
    };
    for _ in 0..8 {
        x -= (digamma(x) - y) / trigamma(x);
        x = x.max(1e-12);
    }
    x
}

/// ln Gamma(x) for x > 0 (Lanczos, g = 7).
pub fn ln_gamma(x: f64) -> f64 {
    const C: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        // Reflection: Gamma(x) Gamma(1 - x) = pi / sin(pi x).
        return std::f64::consts::PI.ln()
            - (std::f64::consts::PI * x).sin().abs().ln()
            - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let mut a = C[0];
    let t = x + 7.5;
    for (i, c) in C.iter().enumerate().skip(1) {
        a += c / (x + i as f64);
    }
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + a.ln()
}

/// A fitted Dirichlet distribution.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Dirichlet {
    /// Concentration parameters, one per component.
    pub alpha: Vec<f64>,
}

impl Dirichlet {
    /// Maximum-likelihood fit from the mean log-probabilities of the
    /// observations (`mean_log[k]` = mean over samples of ln p_k, the
    /// sufficient statistic) and their mean probabilities (only for the
    /// moment-matched starting point).
    pub fn fit(mean_log: &[f64], mean_p: &[f64]) -> Self {
        let k = mean_log.len();
        // Start: alpha proportional to the mean, total from a fixed guess.
        let total: f64 = mean_p.iter().sum::<f64>().max(1e-12);
        let mut alpha: Vec<f64> = mean_p
            .iter()
            .map(|p| (p / total * k as f64).max(1e-3))
            .collect();
        for _ in 0..1000 {
            let s = digamma(alpha.iter().sum());
            let next: Vec<f64> = mean_log
                .iter()
                .map(|&ml| inv_digamma(s + ml).max(1e-6))
                .collect();
            let change = next
                .iter()
                .zip(&alpha)
                .map(|(a, b)| (a - b).abs() / b)
                .fold(0.0, f64::max);
            alpha = next;
            if change < 1e-9 {
                break;
            }
        }
        Self { alpha }
    }

    /// ln Dir(p; alpha) from ln p (so probabilities that underflow in f32
    /// keep their exact log).
    pub fn log_density(&self, log_p: &[f64]) -> f64 {
        let sum: f64 = self.alpha.iter().sum();
        let norm = ln_gamma(sum) - self.alpha.iter().map(|&a| ln_gamma(a)).sum::<f64>();
        norm + self
            .alpha
            .iter()
            .zip(log_p)
            .map(|(a, lp)| (a - 1.0) * lp)
            .sum::<f64>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_distr_free::gamma_sample;

    /// A tiny Marsaglia-Tsang gamma sampler so the test needs no extra crate.
    mod rand_distr_free {
        use rand::Rng;
        pub fn gamma_sample(rng: &mut impl Rng, shape: f64) -> f64 {
            if shape < 1.0 {
                let u: f64 = rng.random();
                return gamma_sample(rng, shape + 1.0) * u.powf(1.0 / shape);
            }
            let d = shape - 1.0 / 3.0;
            let c = 1.0 / (9.0 * d).sqrt();
            loop {
                // Box-Muller normal.
                let (u1, u2): (f64, f64) = (rng.random(), rng.random());
                let z = (-2.0 * (1.0 - u1).ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
                let v = (1.0 + c * z).powi(3);
                if v <= 0.0 {
                    continue;
                }
                let u: f64 = rng.random();
                if u.ln() < 0.5 * z * z + d - d * v + d * v.ln() {
                    return d * v;
                }
            }
        }
    }

    #[test]
    fn special_functions_match_known_values() {
        let euler = 0.577_215_664_901_532_9;
        assert!((digamma(1.0) + euler).abs() < 1e-10);
        assert!((digamma(0.5) - (-euler - 2.0 * 2f64.ln())).abs() < 1e-10);
        assert!((trigamma(1.0) - std::f64::consts::PI.powi(2) / 6.0).abs() < 1e-9);
        for y in [-8.0, -1.0, 0.0, 0.3, 2.0, 5.0] {
            assert!((digamma(inv_digamma(y)) - y).abs() < 1e-9, "{y}");
        }
        assert!(ln_gamma(1.0).abs() < 1e-12);
        assert!((ln_gamma(5.0) - 24f64.ln()).abs() < 1e-10);
        assert!((ln_gamma(0.5) - std::f64::consts::PI.sqrt().ln()).abs() < 1e-10);
    }

    #[test]
    fn density_of_the_uniform_dirichlet_is_constant() {
        // Dir(1, 1, 1) is uniform on the simplex with density Gamma(3) = 2.
        let d = Dirichlet {
            alpha: vec![1.0; 3],
        };
        for p in [[0.2f64, 0.3, 0.5], [0.9, 0.05, 0.05]] {
            let lp: Vec<f64> = p.iter().map(|v| v.ln()).collect();
            assert!((d.log_density(&lp) - 2f64.ln()).abs() < 1e-10);
        }
    }

    #[test]
    fn fit_recovers_the_parameters_of_sampled_data() {
        let truth = [8.0, 2.0, 0.5, 1.0];
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let n = 20_000;
        let (mut ml, mut mp) = (vec![0.0; 4], vec![0.0; 4]);
        for _ in 0..n {
            let g: Vec<f64> = truth.iter().map(|&a| gamma_sample(&mut rng, a)).collect();
            let s: f64 = g.iter().sum();
            for k in 0..4 {
                ml[k] += (g[k] / s).ln() / n as f64;
                mp[k] += g[k] / s / n as f64;
            }
        }
        let fit = Dirichlet::fit(&ml, &mp);
        for (a, t) in fit.alpha.iter().zip(truth) {
            assert!((a - t).abs() / t < 0.05, "{:?} vs {truth:?}", fit.alpha);
        }
    }
}
