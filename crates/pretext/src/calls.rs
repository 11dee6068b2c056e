//! The call counter that seeds a pretext task's random draws (masks,
//! puzzles), kept with mid-training checkpoints so that a resumed run
//! draws exactly what an uninterrupted one would.

use candle_core::{DType, Device, Tensor};
use selfsup_core::{rng, Result};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

/// FNV-1a of a batch's bytes.
fn content_hash(pixels: &[u8]) -> u64 {
    pixels.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Name of the counter in an objective's saved state.
const KEY: &str = "calls";

/// Counts an objective's calls.
#[derive(Debug, Default)]
pub(crate) struct Calls(AtomicU64);

impl Calls {
    /// This call's number (0, 1, 2, ...).
    pub(crate) fn next(&self) -> u64 {
        self.0.fetch_add(1, Ordering::Relaxed)
    }

    /// The seed of one batch's random draws under the run's `seed`: in
    /// training, from this call's number (new draws every step); held
    /// out, from the batch's bytes, so that the same held-out batch gets
    /// the same draws every epoch and its loss is comparable from epoch
    /// to epoch. `stream` names the objective.
    pub(crate) fn draw_seed(&self, seed: u64, stream: &str, train: bool, pixels: &[u8]) -> u64 {
        if train {
            rng::derive_seed(seed, &format!("{stream}-call"), self.next())
        } else {
            rng::derive_seed(seed, &format!("{stream}-heldout"), content_hash(pixels))
        }
    }

    /// The count as objective state: two u32 words, low first.
    pub(crate) fn state(&self) -> Result<Vec<(String, Tensor)>> {
        let n = self.0.load(Ordering::Relaxed);
        let words = [n as u32, (n >> 32) as u32];
        Ok(vec![(KEY.into(), Tensor::new(&words, &Device::Cpu)?)])
    }

    /// Restores a count saved by [`Calls::state`] (a state without one, from
    /// before the counter was saved, leaves it alone).
    pub(crate) fn restore(&self, saved: &HashMap<String, Tensor>) -> Result<()> {
        if let Some(t) = saved.get(KEY) {
            let w: Vec<u32> = t.to_dtype(DType::U32)?.to_vec1()?;
            let n = u64::from(w.first().copied().unwrap_or(0))
                | (u64::from(w.get(1).copied().unwrap_or(0)) << 32);
            self.0.store(n, Ordering::Relaxed);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_restored_counter_continues_where_the_saved_one_stopped() {
        let a = Calls::default();
        for _ in 0..5 {
            a.next();
        }
        a.0.store((7u64 << 32) + 5, Ordering::Relaxed);
        let saved: HashMap<String, Tensor> = a.state().unwrap().into_iter().collect();
        let b = Calls::default();
        b.restore(&saved).unwrap();
        assert_eq!(b.next(), (7u64 << 32) + 5);
        let c = Calls::default();
        c.restore(&HashMap::new()).unwrap();
        assert_eq!(c.next(), 0);
    }
}
