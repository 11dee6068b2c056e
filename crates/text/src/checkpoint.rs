//! Checkpoint directories: Hugging Face's `BertForMaskedLM` /
//! `BertForPreTraining` folder (weights, `config.json`, `tokenizer.json`)
//! plus the optimiser state `--resume` needs, written atomically; and the
//! queries a checkpoint answers (`--fill`, `--nsp`).

use crate::bert::{BertConfig, BertMlm};
use crate::config::TextConfig;
use crate::optim::AdamW;
use crate::report::EvalPoint;
use crate::tokenize;
use candle_core::{DType, Device, Tensor, D};
use candle_nn::VarMap;
use selfsup_core::{fsutil, params, Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;
use tokenizers::Tokenizer;

/// Weights file of a checkpoint.
pub const WEIGHTS: &str = "model.safetensors";
/// Optimiser state of a checkpoint (for `--resume`).
pub const STATE: &str = "training_state.safetensors";
/// Step counter and settings of a checkpoint (for `--resume`).
pub const STATE_JSON: &str = "training_state.json";

/// Resume bookkeeping written beside the weights.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct TrainingState {
    pub(crate) step: usize,
    pub(crate) config: TextConfig,
    pub(crate) history: Vec<EvalPoint>,
}

/// A loaded checkpoint directory.
pub struct Checkpoint {
    /// Variables (HF names).
    pub map: VarMap,
    /// The model.
    pub model: BertMlm,
    /// Its tokenizer.
    pub tokenizer: Tokenizer,
}

/// Loads `dir` (model.safetensors, config.json, tokenizer.json).
pub fn load(dir: &Path, device: &Device) -> Result<Checkpoint> {
    let config: BertConfig = fsutil::read_json(&dir.join("config.json"))?;
    let tokenizer = tokenize::load(&dir.join("tokenizer.json"))?;
    let map = VarMap::new();
    let vb = params::seeded_var_builder(&map, 0, device);
    let model = BertMlm::new(&config, vb)?;
    let path = dir.join(WEIGHTS);
    let tensors = selfsup_core::checkpoint::read_tensors(&path, device)?;
    for (name, var) in map.data().lock().expect("var map poisoned").iter() {
        let t = tensors
            .get(name)
            .ok_or_else(|| Error::format(&path, format!("missing tensor {name}")))?;
        if t.dims() != var.as_tensor().dims() {
            return Err(Error::format(
                &path,
                format!(
                    "{name} has shape {:?}, the config wants {:?}",
                    t.dims(),
                    var.as_tensor().dims()
                ),
            ));
        }
        var.set(&t.to_dtype(DType::F32)?)?;
    }
    Ok(Checkpoint {
        map,
        model,
        tokenizer,
    })
}

/// Writes the checkpoint directory atomically: weights under Hugging Face
/// names (plus the tied decoder copies `transformers` also accepts),
/// config.json, tokenizer.json and the optimiser state.
pub(crate) fn save(
    dir: &Path,
    map: &VarMap,
    config: &BertConfig,
    tokenizer: &Tokenizer,
    opt: &AdamW,
    state: &TrainingState,
) -> Result<()> {
    fsutil::write_dir_atomic(dir, |tmp| {
        let mut tensors: HashMap<String, Tensor> = map
            .data()
            .lock()
            .expect("var map poisoned")
            .iter()
            .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
            .collect();
        let word = tensors["bert.embeddings.word_embeddings.weight"].copy()?;
        let bias = tensors["cls.predictions.bias"].copy()?;
        tensors.insert("cls.predictions.decoder.weight".into(), word);
        tensors.insert("cls.predictions.decoder.bias".into(), bias);
        candle_core::safetensors::save(&tensors, tmp.join(WEIGHTS))?;
        fsutil::write_json_atomic(&tmp.join("config.json"), config)?;
        tokenize::save(tokenizer, &tmp.join("tokenizer.json"))?;
        candle_core::safetensors::save(&opt.state(), tmp.join(STATE))?;
        fsutil::write_json_atomic(&tmp.join(STATE_JSON), state)
    })
}

/// Top-`k` (token, probability) predictions for every `[MASK]` of `text`.
pub fn fill(
    c: &Checkpoint,
    text: &str,
    k: usize,
    device: &Device,
) -> Result<Vec<Vec<(String, f64)>>> {
    let enc = c
        .tokenizer
        .encode(text, true)
        .map_err(|e| Error::invalid("--fill", e.to_string()))?;
    let ids = enc.get_ids().to_vec();
    let at: Vec<u32> = (0..ids.len() as u32)
        .filter(|&i| ids[i as usize] == tokenize::MASK)
        .collect();
    if at.is_empty() {
        return Err(Error::invalid(
            "--fill",
            format!("{text:?} has no [MASK] token"),
        ));
    }
    let t = ids.len();
    let x = Tensor::from_vec(ids, (1, t), device)?;
    let mask = Tensor::ones((1, t), DType::U32, device)?;
    let probs: Vec<Vec<f32>> =
        candle_nn::ops::softmax(&c.model.logits_at(&x, &mask, &at)?, D::Minus1)?
            .to_device(&Device::Cpu)?
            .to_vec2()?;
    Ok(probs
        .iter()
        .map(|row| {
            let mut idx: Vec<usize> = (0..row.len()).collect();
            idx.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
            idx.iter()
                .take(k)
                .map(|&i| {
                    (
                        c.tokenizer.id_to_token(i as u32).unwrap_or_default(),
                        f64::from(row[i]),
                    )
                })
                .collect()
        })
        .collect())
}

/// The probability that `second` follows `first`, from the checkpoint's
/// next-sentence head (an error for a model trained without one).
pub fn next_probability(c: &Checkpoint, first: &str, second: &str, device: &Device) -> Result<f64> {
    let enc = c
        .tokenizer
        .encode((first, second), true)
        .map_err(|e| Error::invalid("--nsp", e.to_string()))?;
    let t = enc.get_ids().len();
    let ids = Tensor::from_vec(enc.get_ids().to_vec(), (1, t), device)?;
    let types = Tensor::from_vec(enc.get_type_ids().to_vec(), (1, t), device)?;
    let mask = Tensor::ones((1, t), DType::U32, device)?;
    let h = c.model.encode_typed(&ids, &mask, Some(&types))?;
    let p: Vec<f32> = candle_nn::ops::softmax(&c.model.nsp_logits(&h)?, D::Minus1)?
        .to_device(&Device::Cpu)?
        .flatten_all()?
        .to_vec1()?;
    Ok(f64::from(p[crate::nsp::IS_NEXT as usize]))
}
