//! How a fresh model's position table starts: BERT's random normal draw,
//! or sine and cosine waves (Vaswani et al., 2017) scaled to the same
//! spread, which give attention a notion of near and far from the first
//! step. Both are ordinary learned weights in the checkpoint.

use candle_core::{Device, Tensor};
use candle_nn::VarMap;
use selfsup_core::{Error, Result};

/// The checkpoint name of the position table.
pub const POSITION_TABLE: &str = "bert.embeddings.position_embeddings.weight";

/// How the position table is initialised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PositionInit {
    /// A normal draw with the other weights' spread (BERT).
    Normal,
    /// Sine and cosine waves of geometric wavelengths.
    Sinusoidal,
}

impl PositionInit {
    /// `normal` or `sinusoidal`.
    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "normal" => Ok(Self::Normal),
            "sinusoidal" => Ok(Self::Sinusoidal),
            other => Err(Error::invalid(
                "position_init",
                format!("`{other}`: expected `normal` or `sinusoidal`"),
            )),
        }
    }
}

/// The (positions, width) sinusoid table, scaled so that its entries'
/// root mean square is `rms`: column 2i is sin(p / 10000^(2i/width)),
/// column 2i + 1 the cosine of the same angle.
pub fn sinusoid_table(positions: usize, width: usize, rms: f64) -> Vec<f32> {
    // Each sine/cosine pair has mean square 1/2; an odd last column (a
    // lone sine) a little less, which the scale ignores.
    let scale = rms * std::f64::consts::SQRT_2;
    let mut t = vec![0f32; positions * width];
    for p in 0..positions {
        for c in 0..width {
            let freq = 10000f64.powf(-((c / 2 * 2) as f64) / width as f64);
            let angle = p as f64 * freq;
            let v = if c % 2 == 0 { angle.sin() } else { angle.cos() };
            t[p * width + c] = (v * scale) as f32;
        }
    }
    t
}

/// Overwrites the position table in `map` with the sinusoid table when
/// `init` asks for it (a fresh model only; a resumed one keeps what it
/// learned).
pub fn apply(map: &VarMap, init: PositionInit, rms: f64, device: &Device) -> Result<()> {
    if init == PositionInit::Normal {
        return Ok(());
    }
    let data = map.data().lock().expect("the VarMap lock is not poisoned");
    let var = data
        .get(POSITION_TABLE)
        .ok_or_else(|| Error::invalid("bert", format!("the model has no `{POSITION_TABLE}`")))?;
    let (positions, width) = var.as_tensor().dims2()?;
    let table = sinusoid_table(positions, width, rms);
    var.set(&Tensor::from_vec(table, (positions, width), device)?)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sinusoids_have_the_asked_spread_and_the_textbook_values() {
        let t = sinusoid_table(128, 128, 0.02);
        let ms = t.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>() / t.len() as f64;
        assert!((ms.sqrt() - 0.02).abs() < 2e-4, "rms {}", ms.sqrt());
        let s = 0.02 * std::f64::consts::SQRT_2;
        // Position 0: sin 0 = 0, cos 0 = 1 in every pair.
        assert_eq!(t[0], 0.0);
        assert!((f64::from(t[1]) - s).abs() < 1e-7);
        // Position 3, pair 1 (columns 2, 3): angle 3 / 10000^(2/128).
        let a = 3.0 / 10000f64.powf(2.0 / 128.0);
        assert!((f64::from(t[3 * 128 + 2]) - s * a.sin()).abs() < 1e-7);
        assert!((f64::from(t[3 * 128 + 3]) - s * a.cos()).abs() < 1e-7);
    }

    #[test]
    fn apply_rewrites_the_table_the_model_reads() {
        use crate::bert::{BertConfig, BertMlm};
        let dev = Device::Cpu;
        let map = VarMap::new();
        let c = BertConfig::small(50, 8, 1, 2, 16);
        let vb = candle_nn::VarBuilder::from_varmap(&map, candle_core::DType::F32, &dev);
        let model = BertMlm::new(&c, vb).unwrap();
        let ids = Tensor::new(&[[2u32, 7, 9, 3]], &dev).unwrap();
        let mask = Tensor::new(&[[1u32, 1, 1, 1]], &dev).unwrap();
        let before = model.encode(&ids, &mask).unwrap().flatten_all().unwrap();
        apply(&map, PositionInit::Normal, 0.02, &dev).unwrap();
        let same = model.encode(&ids, &mask).unwrap().flatten_all().unwrap();
        assert_eq!(
            before.to_vec1::<f32>().unwrap(),
            same.to_vec1::<f32>().unwrap()
        );
        apply(&map, PositionInit::Sinusoidal, 0.02, &dev).unwrap();
        let table = map.data().lock().unwrap()[POSITION_TABLE]
            .as_tensor()
            .clone();
        let got: Vec<f32> = table.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(got, sinusoid_table(16, 8, 0.02));
        let after = model.encode(&ids, &mask).unwrap().flatten_all().unwrap();
        assert_ne!(
            before.to_vec1::<f32>().unwrap(),
            after.to_vec1::<f32>().unwrap()
        );
    }

    #[test]
    fn names_parse_and_others_are_refused() {
        assert_eq!(PositionInit::parse("normal").unwrap(), PositionInit::Normal);
        assert_eq!(
            PositionInit::parse("sinusoidal").unwrap(),
            PositionInit::Sinusoidal
        );
        let e = PositionInit::parse("rope").unwrap_err().to_string();
        assert!(e.contains("position_init") && e.contains("rope"), "{e}");
    }
}
