//! Seeded, stratified few-label splits.
//!
//! Only the K chosen labels per class may ever be read by training or model
//! selection; the rest of the training set is the unlabeled pool.

use rand::seq::SliceRandom;
use selfsup_core::{rng, Error, Result};

/// Indices into a training set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Split {
    /// K images per class, sorted by class then draw order.
    pub labeled: Vec<usize>,
    /// Every other training image, in ascending order.
    pub unlabeled: Vec<usize>,
}

/// Draws `k` images of every class at random under `seed`.
pub fn stratified(labels: &[u32], k: usize, seed: u64) -> Result<Split> {
    if k == 0 {
        return Err(Error::invalid("--labels-per-class", "must be at least 1"));
    }
    let classes = labels.iter().copied().max().map_or(0, |m| m as usize + 1);
    let mut by_class: Vec<Vec<usize>> = vec![Vec::new(); classes];
    for (i, &y) in labels.iter().enumerate() {
        by_class[y as usize].push(i);
    }
    if let Some((c, members)) = by_class.iter().enumerate().min_by_key(|(_, m)| m.len()) {
        if members.len() < k {
            return Err(Error::invalid(
                "--labels-per-class",
                format!(
                    "{k} is larger than the smallest class (class {c} has {} training images)",
                    members.len()
                ),
            ));
        }
    }
    let mut r = rng::stream(seed, "split");
    let mut labeled = Vec::with_capacity(k * classes);
    for members in &mut by_class {
        members.shuffle(&mut r);
        labeled.extend_from_slice(&members[..k]);
    }
    let mut is_labeled = vec![false; labels.len()];
    for &i in &labeled {
        is_labeled[i] = true;
    }
    let unlabeled = (0..labels.len()).filter(|&i| !is_labeled[i]).collect();
    Ok(Split { labeled, unlabeled })
}

/// Splits `indices` into (kept, held-out) with `fraction` held out (at least
/// one when there are two or more), shuffled under `seed`. Uses no labels.
pub fn holdout(indices: &[usize], fraction: f64, seed: u64) -> (Vec<usize>, Vec<usize>) {
    let mut v = indices.to_vec();
    v.shuffle(&mut rng::stream(seed, "holdout"));
    let n_out = ((v.len() as f64 * fraction).round() as usize)
        .clamp(usize::from(v.len() > 1), v.len().saturating_sub(1));
    let out = v.split_off(v.len() - n_out);
    (v, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels() -> Vec<u32> {
        (0..300)
            .map(|i| (i % 3) as u32)
            .chain(std::iter::repeat_n(3, 7))
            .collect()
    }

    #[test]
    fn counts_per_class_and_disjoint() {
        let y = labels();
        let s = stratified(&y, 5, 0).unwrap();
        assert_eq!(s.labeled.len(), 20);
        for c in 0..4 {
            assert_eq!(s.labeled.iter().filter(|&&i| y[i] == c).count(), 5);
        }
        assert_eq!(s.labeled.len() + s.unlabeled.len(), y.len());
        assert!(s.labeled.iter().all(|i| !s.unlabeled.contains(i)));
    }

    #[test]
    fn seed_determinism() {
        let y = labels();
        assert_eq!(stratified(&y, 5, 3).unwrap(), stratified(&y, 5, 3).unwrap());
        assert_ne!(
            stratified(&y, 5, 3).unwrap().labeled,
            stratified(&y, 5, 4).unwrap().labeled
        );
    }

    #[test]
    fn k_too_large_names_the_flag_and_class() {
        let e = stratified(&labels(), 8, 0).unwrap_err().to_string();
        assert!(
            e.contains("--labels-per-class") && e.contains("class 3 has 7"),
            "{e}"
        );
        assert!(stratified(&labels(), 0, 0).is_err());
    }

    #[test]
    fn holdout_is_a_partition() {
        let idx: Vec<usize> = (10..110).collect();
        let (a, b) = holdout(&idx, 0.1, 1);
        assert_eq!(b.len(), 10);
        let mut all: Vec<usize> = a.iter().chain(&b).copied().collect();
        all.sort();
        assert_eq!(all, idx);
        assert_eq!(holdout(&idx, 0.1, 1), (a, b));
    }
}
