//! Principal-component projection to two dimensions.

/// Projects the rows of `x` (n x d, row-major) on their first two principal
/// components (power iteration with deflation on the covariance).
pub fn pca2(x: &[f32], n: usize, d: usize) -> Vec<[f64; 2]> {
    if n == 0 || d == 0 {
        return Vec::new();
    }
    let mut mean = vec![0f64; d];
    for row in x.chunks_exact(d) {
        for (m, &v) in mean.iter_mut().zip(row) {
            *m += f64::from(v) / n as f64;
        }
    }
    let mut cov = vec![0f64; d * d];
    for row in x.chunks_exact(d) {
        let c: Vec<f64> = row
            .iter()
            .zip(&mean)
            .map(|(&v, m)| f64::from(v) - m)
            .collect();
        for i in 0..d {
            for j in i..d {
                cov[i * d + j] += c[i] * c[j];
            }
        }
    }
    for i in 0..d {
        for j in 0..i {
            cov[i * d + j] = cov[j * d + i];
        }
    }
    let mut comps: Vec<Vec<f64>> = Vec::new();
    for k in 0..2.min(d) {
        let mut v: Vec<f64> = (0..d)
            .map(|i| 1.0 + ((i * 7 + k * 3) % 5) as f64 * 0.1)
            .collect();
        let mut lambda = 0.0;
        for _ in 0..300 {
            let mut w: Vec<f64> = (0..d)
                .map(|i| (0..d).map(|j| cov[i * d + j] * v[j]).sum())
                .collect();
            for c in &comps {
                let dot: f64 = w.iter().zip(c).map(|(a, b)| a * b).sum();
                w.iter_mut().zip(c).for_each(|(a, b)| *a -= dot * b);
            }
            let norm = w.iter().map(|a| a * a).sum::<f64>().sqrt();
            if norm < 1e-12 {
                break;
            }
            w.iter_mut().for_each(|a| *a /= norm);
            let converged = (norm - lambda).abs() < 1e-10 * norm.max(1.0);
            lambda = norm;
            v = w;
            if converged {
                break;
            }
        }
        comps.push(v);
    }
    x.chunks_exact(d)
        .map(|row| {
            let mut p = [0.0; 2];
            for (k, c) in comps.iter().enumerate() {
                p[k] = row
                    .iter()
                    .zip(&mean)
                    .zip(c)
                    .map(|((&v, m), w)| (f64::from(v) - m) * w)
                    .sum();
            }
            p
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pca_finds_the_direction_of_largest_variance() {
        // Points along (3, 4)/5 with a little spread along (-4, 3)/5.
        let mut x = Vec::new();
        for i in 0..50 {
            let t = i as f32 - 25.0;
            let s = if i % 2 == 0 { 0.5 } else { -0.5 };
            x.extend([3.0 * t / 5.0 - 4.0 * s / 5.0, 4.0 * t / 5.0 + 3.0 * s / 5.0]);
        }
        let p = pca2(&x, 50, 2);
        let var = |k: usize| p.iter().map(|q| q[k] * q[k]).sum::<f64>() / 50.0;
        assert!(var(0) > 100.0 * var(1), "{} vs {}", var(0), var(1));
        assert!(
            (p[0][0].abs() - 24.5).abs() < 1e-3,
            "centred projection on the main axis: t = -25 minus the mean -0.5"
        );
        assert!((var(1) - 0.25).abs() < 1e-3);
    }
}
