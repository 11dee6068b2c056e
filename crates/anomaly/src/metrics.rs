//! Detection metrics with anomalies as the positive class and higher scores
//! meaning "more anomalous". Tied scores are handled exactly: a group of
//! equal scores is one threshold, so the metrics never depend on the order
//! in which tied samples arrive.

use serde::{Deserialize, Serialize};

/// AUROC, AUPR and FPR at 95 % TPR of one score on one test set.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Detection {
    /// Area under the ROC curve: the probability that a random anomaly
    /// scores above a random normal sample, ties counting one half.
    pub auroc: f64,
    /// Area under the precision-recall curve (average precision, anomalies
    /// positive).
    pub aupr: f64,
    /// Fraction of normal samples flagged at the highest threshold that
    /// still flags at least 95 % of the anomalies.
    pub fpr95: f64,
}

/// Scores grouped by distinct value, highest first: (positives, negatives)
/// per group.
fn groups(scores: &[f64], anomalous: &[bool]) -> Vec<(usize, usize)> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let mut out: Vec<(usize, usize)> = Vec::new();
    let mut last: Option<f64> = None;
    for i in order {
        if last != Some(scores[i]) {
            out.push((0, 0));
            last = Some(scores[i]);
        }
        let g = out.last_mut().expect("pushed above");
        if anomalous[i] {
            g.0 += 1;
        } else {
            g.1 += 1;
        }
    }
    out
}

fn counts(anomalous: &[bool]) -> (usize, usize) {
    let p = anomalous.iter().filter(|&&a| a).count();
    (p, anomalous.len() - p)
}

/// Panics unless the inputs pair up and hold both classes and no NaN:
/// every caller builds them from a test set it controls.
fn check(scores: &[f64], anomalous: &[bool]) -> (usize, usize) {
    assert_eq!(scores.len(), anomalous.len(), "one label per score");
    assert!(scores.iter().all(|s| !s.is_nan()), "NaN anomaly score");
    let (p, n) = counts(anomalous);
    assert!(p > 0 && n > 0, "metrics need anomalies and normal samples");
    (p, n)
}

/// Area under the ROC curve (trapezoids between tie groups, which equals
/// the Mann-Whitney statistic with mid-ranks).
pub fn auroc(scores: &[f64], anomalous: &[bool]) -> f64 {
    let (p, n) = check(scores, anomalous);
    let (mut tp, mut fp, mut area) = (0usize, 0usize, 0.0f64);
    for (gp, gn) in groups(scores, anomalous) {
        // Trapezoid from (fp, tp) to (fp + gn, tp + gp).
        area += gn as f64 * (tp as f64 + gp as f64 / 2.0);
        tp += gp;
        fp += gn;
    }
    debug_assert_eq!((tp, fp), (p, n));
    area / (p as f64 * n as f64)
}

/// Average precision with anomalies positive: the sum over thresholds of
/// (recall gained) x (precision at that threshold), one threshold per
/// distinct score.
pub fn aupr(scores: &[f64], anomalous: &[bool]) -> f64 {
    let (p, _) = check(scores, anomalous);
    let (mut tp, mut fp, mut ap) = (0usize, 0usize, 0.0f64);
    for (gp, gn) in groups(scores, anomalous) {
        tp += gp;
        fp += gn;
        if gp > 0 {
            ap += (gp as f64 / p as f64) * (tp as f64 / (tp + fp) as f64);
        }
    }
    ap
}

/// False-positive rate at the first threshold (from the top) whose
/// true-positive rate reaches `tpr`.
pub fn fpr_at_tpr(scores: &[f64], anomalous: &[bool], tpr: f64) -> f64 {
    let (p, n) = check(scores, anomalous);
    let (mut tp, mut fp) = (0usize, 0usize);
    for (gp, gn) in groups(scores, anomalous) {
        tp += gp;
        fp += gn;
        if tp as f64 >= tpr * p as f64 - 1e-12 {
            break;
        }
    }
    fp as f64 / n as f64
}

/// The ROC curve as (FPR, TPR) points from (0, 0) to (1, 1), one per
/// distinct score.
pub fn roc_curve(scores: &[f64], anomalous: &[bool]) -> Vec<[f64; 2]> {
    let (p, n) = check(scores, anomalous);
    let (mut tp, mut fp) = (0usize, 0usize);
    let mut pts = vec![[0.0, 0.0]];
    for (gp, gn) in groups(scores, anomalous) {
        tp += gp;
        fp += gn;
        pts.push([fp as f64 / n as f64, tp as f64 / p as f64]);
    }
    pts
}

/// All three metrics of [`Detection`].
pub fn detection(scores: &[f64], anomalous: &[bool]) -> Detection {
    Detection {
        auroc: auroc(scores, anomalous),
        aupr: aupr(scores, anomalous),
        fpr95: fpr_at_tpr(scores, anomalous, 0.95),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn close(a: f64, b: f64) {
        assert!((a - b).abs() < 1e-12, "{a} vs {b}");
    }

    #[test]
    fn hand_computed_without_ties() {
        // Descending: 0.9 A, 0.8 N, 0.7 A, 0.6 N, 0.5 A, 0.4 N.
        let s = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4];
        let a = [true, false, true, false, true, false];
        // Pairs (anomaly > normal): 0.9 beats 3, 0.7 beats 2, 0.5 beats 1 → 6/9.
        close(auroc(&s, &a), 6.0 / 9.0);
        // AP: recall steps at ranks 1, 3, 5 with precision 1, 2/3, 3/5.
        close(aupr(&s, &a), (1.0 + 2.0 / 3.0 + 3.0 / 5.0) / 3.0);
        // TPR reaches 95 % only with all three anomalies: 2 of 3 normals above.
        close(fpr_at_tpr(&s, &a, 0.95), 2.0 / 3.0);
        close(fpr_at_tpr(&s, &a, 0.3), 0.0);
    }

    #[test]
    fn hand_computed_with_ties() {
        // One anomaly tied with one normal at 0.5; another anomaly at 0.9,
        // another normal at 0.1.
        let s = [0.5, 0.5, 0.9, 0.1];
        let a = [true, false, true, false];
        // Pairs: (0.9, 0.5) 1, (0.9, 0.1) 1, (0.5a, 0.5n) 1/2, (0.5a, 0.1) 1 → 3.5/4.
        close(auroc(&s, &a), 3.5 / 4.0);
        // Groups: {0.9: 1A} → P 1, R 1/2; {0.5: 1A 1N} → P 2/3, R 1.
        close(aupr(&s, &a), 0.5 * 1.0 + 0.5 * 2.0 / 3.0);
        // Full recall needs the tied group, which brings one of two normals.
        close(fpr_at_tpr(&s, &a, 0.95), 0.5);
        // Everything tied: chance.
        let flat = [1.0; 4];
        close(auroc(&flat, &a), 0.5);
        close(aupr(&flat, &a), 0.5);
        close(fpr_at_tpr(&flat, &a, 0.95), 1.0);
        assert_eq!(
            roc_curve(&s, &a),
            vec![[0.0, 0.0], [0.0, 0.5], [0.5, 1.0], [1.0, 1.0]]
        );
    }

    #[test]
    fn perfect_and_inverted_scores() {
        let s = [3.0, 2.0, 1.0, 0.0];
        let a = [true, true, false, false];
        let d = detection(&s, &a);
        assert_eq!((d.auroc, d.aupr, d.fpr95), (1.0, 1.0, 0.0));
        let inv: Vec<f64> = s.iter().map(|v| -v).collect();
        let d = detection(&inv, &a);
        close(d.auroc, 0.0);
        close(d.fpr95, 1.0);
        close(d.aupr, 0.5 * (1.0 / 3.0) + 0.5 * (2.0 / 4.0));
    }

    #[test]
    fn auroc_matches_pair_counting_on_random_scores_with_ties() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        for _ in 0..50 {
            let n = rng.random_range(2..60);
            let s: Vec<f64> = (0..n).map(|_| rng.random_range(0..8) as f64).collect();
            let mut a: Vec<bool> = (0..n).map(|_| rng.random_bool(0.4)).collect();
            a[0] = true;
            a[1] = false;
            let mut wins = 0.0;
            let mut pairs = 0.0;
            for i in 0..n {
                for j in 0..n {
                    if a[i] && !a[j] {
                        pairs += 1.0;
                        wins += if s[i] > s[j] {
                            1.0
                        } else if s[i] == s[j] {
                            0.5
                        } else {
                            0.0
                        };
                    }
                }
            }
            close(auroc(&s, &a), wins / pairs);
            // Metrics do not depend on the order of the samples.
            let mut idx: Vec<usize> = (0..n).collect();
            idx.reverse();
            let s2: Vec<f64> = idx.iter().map(|&i| s[i]).collect();
            let a2: Vec<bool> = idx.iter().map(|&i| a[i]).collect();
            assert_eq!(detection(&s, &a), detection(&s2, &a2));
        }
    }
}
