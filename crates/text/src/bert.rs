//! A BERT encoder with a masked-language-model head, parameter for
//! parameter Hugging Face's `BertForMaskedLM` (post-LayerNorm layers, GELU
//! (erf) MLP, absolute positions, token types, output embeddings tied to
//! the input embeddings), with the same tensor names, so a checkpoint loads
//! in `transformers` and back here.
//!
//! With the fast kernels on the CPU, the linear layers, attention,
//! LayerNorm, GELU, bias adds and dropout are `selfsup_kernels`' fused ops
//! (one graph node each, with its own backward pass); otherwise
//! (`--kernels stock`, other devices) they are built from Candle ops that
//! have a backward pass (Candle's fused `LayerNorm::forward` and
//! `softmax_last_dim` have none). Both paths draw the same dropout masks.

use candle_core::{DType, Device, Tensor};
use candle_nn::init::Init;
use candle_nn::VarBuilder;
use selfsup_core::{Error, Result};
use selfsup_kernels as kernels;
use selfsup_kernels::nn::{add_tail, fused, gelu, multi_head_attention, Dense, LayerNorm};
use serde::{Deserialize, Serialize};

/// Hugging Face's name of a BERT with both pretraining heads.
pub const PRETRAINING: &str = "BertForPreTraining";

/// The `config.json` of a checkpoint, in Hugging Face's `BertConfig`
/// format.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BertConfig {
    /// `["BertForMaskedLM"]`, or `["BertForPreTraining"]` for a model
    /// with the pooler and next-sentence head too ([`Self::with_nsp`]).
    pub architectures: Vec<String>,
    /// Always `bert`.
    pub model_type: String,
    /// Tokens in the vocabulary.
    pub vocab_size: usize,
    /// Width of every layer.
    pub hidden_size: usize,
    /// Transformer layers.
    pub num_hidden_layers: usize,
    /// Attention heads per layer.
    pub num_attention_heads: usize,
    /// Width of the MLP.
    pub intermediate_size: usize,
    /// `gelu` (the exact, erf-based one).
    pub hidden_act: String,
    /// Dropout after the embeddings and on each sub-layer's output in
    /// training (the run's `dropout`; evaluation never drops).
    pub hidden_dropout_prob: f64,
    /// Dropout on attention probabilities (0: not used here).
    pub attention_probs_dropout_prob: f64,
    /// Longest sequence.
    pub max_position_embeddings: usize,
    /// Segment types.
    pub type_vocab_size: usize,
    /// Standard deviation of the initial weights.
    pub initializer_range: f64,
    /// LayerNorm epsilon.
    pub layer_norm_eps: f64,
    /// Id of `[PAD]`.
    pub pad_token_id: u32,
    /// `absolute`.
    pub position_embedding_type: String,
    /// Weights are stored as f32.
    pub torch_dtype: String,
}

impl BertConfig {
    /// A small BERT.
    pub fn small(
        vocab_size: usize,
        hidden: usize,
        layers: usize,
        heads: usize,
        max_len: usize,
    ) -> Self {
        Self {
            architectures: vec!["BertForMaskedLM".into()],
            model_type: "bert".into(),
            vocab_size,
            hidden_size: hidden,
            num_hidden_layers: layers,
            num_attention_heads: heads,
            intermediate_size: 4 * hidden,
            hidden_act: "gelu".into(),
            hidden_dropout_prob: 0.0,
            attention_probs_dropout_prob: 0.0,
            max_position_embeddings: max_len,
            type_vocab_size: 2,
            initializer_range: 0.02,
            layer_norm_eps: 1e-12,
            pad_token_id: 0,
            position_embedding_type: "absolute".into(),
            torch_dtype: "float32".into(),
        }
    }

    /// The same model with BERT's pooler and next-sentence head:
    /// `BertForPreTraining` (which `BertForMaskedLM` also loads).
    pub fn with_nsp(mut self) -> Self {
        self.architectures = vec![PRETRAINING.into()];
        self
    }

    /// Whether the model has the pooler and next-sentence head.
    pub fn has_nsp(&self) -> bool {
        self.architectures.iter().any(|a| a == PRETRAINING)
    }

    /// Checks the sizes fit together.
    pub fn validate(&self) -> Result<()> {
        if self.hidden_size == 0 || self.num_attention_heads == 0 {
            return Err(Error::invalid(
                "bert config",
                "hidden size and heads must be positive",
            ));
        }
        if self.hidden_size % self.num_attention_heads != 0 {
            return Err(Error::invalid(
                "bert config",
                format!(
                    "hidden size {} is not a multiple of {} heads",
                    self.hidden_size, self.num_attention_heads
                ),
            ));
        }
        if self.hidden_act != "gelu" {
            return Err(Error::invalid(
                "bert config",
                format!(
                    "activation {:?}; only \"gelu\" is implemented",
                    self.hidden_act
                ),
            ));
        }
        Ok(())
    }
}

/// Dropout in a training forward pass: the probability, and a seed that
/// changes every step (each dropout site derives its own from it).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Dropout {
    /// Drop probability.
    pub p: f64,
    /// The step's seed.
    pub seed: u64,
}

impl Dropout {
    /// `x` with dropout at `site` (each site of the network its own mask).
    fn apply(&self, x: &Tensor, site: u64) -> Result<Tensor> {
        let seed = self.seed ^ (site + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        if fused(x) {
            return Ok(kernels::dropout(x, self.p, seed)?);
        }
        let x = x.contiguous()?;
        let m = kernels::dropout_mask(x.elem_count(), self.p, seed);
        Ok((&x * Tensor::from_vec(m, x.shape(), x.device())?)?)
    }
}

/// Applies `drop` (when training with dropout) at `site`.
fn maybe_drop(x: Tensor, drop: Option<&Dropout>, site: u64) -> Result<Tensor> {
    match drop {
        Some(d) if d.p > 0.0 => d.apply(&x, site),
        _ => Ok(x),
    }
}

fn linear(inp: usize, out: usize, std: f64, vb: VarBuilder) -> Result<Dense> {
    let init = Init::Randn {
        mean: 0.0,
        stdev: std,
    };
    Ok(Dense::new(inp, out, init, vb)?)
}

struct Layer {
    query: Dense,
    key: Dense,
    value: Dense,
    attn_out: Dense,
    attn_norm: LayerNorm,
    inter: Dense,
    out: Dense,
    out_norm: LayerNorm,
    heads: usize,
}

impl Layer {
    fn new(c: &BertConfig, vb: VarBuilder) -> Result<Self> {
        let (h, s) = (c.hidden_size, c.initializer_range);
        let a = vb.pp("attention");
        Ok(Self {
            query: linear(h, h, s, a.pp("self").pp("query"))?,
            key: linear(h, h, s, a.pp("self").pp("key"))?,
            value: linear(h, h, s, a.pp("self").pp("value"))?,
            attn_out: linear(h, h, s, a.pp("output").pp("dense"))?,
            attn_norm: LayerNorm::new(h, c.layer_norm_eps, a.pp("output").pp("LayerNorm"))?,
            inter: linear(h, c.intermediate_size, s, vb.pp("intermediate").pp("dense"))?,
            out: linear(c.intermediate_size, h, s, vb.pp("output").pp("dense"))?,
            out_norm: LayerNorm::new(h, c.layer_norm_eps, vb.pp("output").pp("LayerNorm"))?,
            heads: c.num_attention_heads,
        })
    }

    /// `x`: (B, T, H); `bias`: (B, T) additive attention bias; dropout
    /// (training) at sites `site` and `site + 1`.
    fn forward(
        &self,
        x: &Tensor,
        bias: &Tensor,
        drop: Option<&Dropout>,
        site: u64,
    ) -> Result<Tensor> {
        let (q, k, v) = (
            self.query.forward(x)?,
            self.key.forward(x)?,
            self.value.forward(x)?,
        );
        let ctx = multi_head_attention(&q, &k, &v, self.heads, Some(bias))?;
        let a = maybe_drop(self.attn_out.forward(&ctx)?, drop, site)?;
        let x = self.attn_norm.forward(&(a + x)?)?;
        let m = self.out.forward(&gelu(&self.inter.forward(&x)?)?)?;
        let m = maybe_drop(m, drop, site + 1)?;
        Ok(self.out_norm.forward(&(m + x)?)?)
    }
}

/// `BertForMaskedLM`: encoder plus the tied MLM head.
pub struct BertMlm {
    word: Tensor,
    position: Tensor,
    token_type: Tensor,
    emb_norm: LayerNorm,
    layers: Vec<Layer>,
    transform: Dense,
    transform_norm: LayerNorm,
    out_bias: Tensor,
    /// The pooler (`[CLS]` state, dense, tanh) and the next-sentence head,
    /// in a `BertForPreTraining`.
    nsp: Option<(Dense, Dense)>,
    /// The configuration.
    pub config: BertConfig,
}

impl BertMlm {
    /// Builds the model; `vb` is the root (names `bert.*` and `cls.*`).
    pub fn new(config: &BertConfig, vb: VarBuilder) -> Result<Self> {
        config.validate()?;
        let c = config;
        let s = Init::Randn {
            mean: 0.0,
            stdev: c.initializer_range,
        };
        let e = vb.pp("bert").pp("embeddings");
        let layers = (0..c.num_hidden_layers)
            .map(|i| Layer::new(c, vb.pp("bert").pp("encoder").pp("layer").pp(i)))
            .collect::<Result<Vec<_>>>()?;
        let p = vb.pp("cls").pp("predictions");
        Ok(Self {
            word: e.get_with_hints((c.vocab_size, c.hidden_size), "word_embeddings.weight", s)?,
            position: e.get_with_hints(
                (c.max_position_embeddings, c.hidden_size),
                "position_embeddings.weight",
                s,
            )?,
            token_type: e.get_with_hints(
                (c.type_vocab_size, c.hidden_size),
                "token_type_embeddings.weight",
                s,
            )?,
            emb_norm: LayerNorm::new(c.hidden_size, c.layer_norm_eps, e.pp("LayerNorm"))?,
            layers,
            transform: linear(
                c.hidden_size,
                c.hidden_size,
                c.initializer_range,
                p.pp("transform").pp("dense"),
            )?,
            transform_norm: LayerNorm::new(
                c.hidden_size,
                c.layer_norm_eps,
                p.pp("transform").pp("LayerNorm"),
            )?,
            out_bias: p.get_with_hints(c.vocab_size, "bias", Init::Const(0.0))?,
            nsp: if c.has_nsp() {
                let (h, s) = (c.hidden_size, c.initializer_range);
                Some((
                    linear(h, h, s, vb.pp("bert").pp("pooler").pp("dense"))?,
                    linear(h, 2, s, vb.pp("cls").pp("seq_relationship"))?,
                ))
            } else {
                None
            },
            config: c.clone(),
        })
    }

    /// Final hidden states (B, T, H) of `ids` (B, T) u32, with `mask` (B, T)
    /// 1 for real tokens and 0 for padding (padding gets no attention).
    pub fn encode(&self, ids: &Tensor, mask: &Tensor) -> Result<Tensor> {
        self.encode_typed(ids, mask, None)
    }

    /// [`Self::encode`] with segment ids `types` (B, T) u32 (all 0 when
    /// `None`), as sentence pairs have.
    pub fn encode_typed(
        &self,
        ids: &Tensor,
        mask: &Tensor,
        types: Option<&Tensor>,
    ) -> Result<Tensor> {
        self.encode_train(ids, mask, types, None)
    }

    /// [`Self::encode_typed`] in training, with `drop` applied where
    /// Hugging Face's BERT applies its hidden dropout: after the embedding
    /// LayerNorm and on each attention and MLP output before its residual
    /// add (not on the attention probabilities).
    pub fn encode_train(
        &self,
        ids: &Tensor,
        mask: &Tensor,
        types: Option<&Tensor>,
        drop: Option<&Dropout>,
    ) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        if t > self.config.max_position_embeddings {
            return Err(Error::invalid(
                "sequence",
                format!(
                    "{t} tokens; the model takes at most {}",
                    self.config.max_position_embeddings
                ),
            ));
        }
        let dev = ids.device();
        let words = self
            .word
            .embedding(&ids.flatten_all()?)?
            .reshape((b, t, ()))?;
        let pos = self.position.narrow(0, 0, t)?;
        let x = add_tail(&words, &pos)?;
        let x = match types {
            None => add_tail(&x, &self.token_type.get(0)?)?,
            Some(ty) => {
                let e = self.token_type.embedding(&ty.flatten_all()?)?;
                (x + e.reshape((b, t, ()))?)?
            }
        };
        let mut x = maybe_drop(self.emb_norm.forward(&x)?, drop, 0)?;
        // 0 where attended, a large negative number at padding.
        let bias = ((mask.to_dtype(DType::F32)? - 1.0)? * 1e4)?.to_device(dev)?;
        for (i, l) in self.layers.iter().enumerate() {
            x = l.forward(&x, &bias, drop, 1 + 2 * i as u64)?;
        }
        Ok(x)
    }

    /// Vocabulary logits (N, V) of hidden states (N, H).
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        let h = self
            .transform_norm
            .forward(&gelu(&self.transform.forward(hidden)?)?)?;
        Ok(add_tail(&h.matmul(&self.word.t()?)?, &self.out_bias)?)
    }

    /// Logits (B, T, V) at every position.
    pub fn forward(&self, ids: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let h = self.encode(ids, mask)?;
        let (b, t, hd) = h.dims3()?;
        Ok(self.logits(&h.reshape((b * t, hd))?)?.reshape((b, t, ()))?)
    }

    /// Logits (N, V) only at the flat positions `at` (indices into B*T):
    /// training needs the vocabulary projection at masked positions only.
    pub fn logits_at(&self, ids: &Tensor, mask: &Tensor, at: &[u32]) -> Result<Tensor> {
        self.logits_of(&self.encode(ids, mask)?, at)
    }

    /// Logits (N, V) of hidden states `h` (B, T, H) at the flat positions
    /// `at`.
    pub fn logits_of(&self, h: &Tensor, at: &[u32]) -> Result<Tensor> {
        let (b, t, hd) = h.dims3()?;
        let idx = Tensor::from_vec(at.to_vec(), at.len(), &Device::Cpu)?.to_device(h.device())?;
        self.logits(&h.reshape((b * t, hd))?.index_select(&idx, 0)?)
    }

    /// Next-sentence logits (B, 2) from hidden states `h` (B, T, H): the
    /// pooled `[CLS]` state through the head; column 0 scores "the second
    /// segment follows the first". An error for a model without the head.
    pub fn nsp_logits(&self, h: &Tensor) -> Result<Tensor> {
        let Some((pooler, head)) = &self.nsp else {
            return Err(Error::invalid(
                "bert",
                "this model has no next-sentence head (it was not trained with nsp)",
            ));
        };
        let cls = h.narrow(1, 0, 1)?.squeeze(1)?;
        Ok(head.forward(&pooler.forward(&cls)?.tanh()?)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_nn::VarMap;
    use selfsup_core::params::{abs_sum, max_abs_diff};

    fn tiny() -> (VarMap, BertMlm) {
        let map = VarMap::new();
        let vb = selfsup_core::params::seeded_var_builder(&map, 1, &Device::Cpu);
        let m = BertMlm::new(&BertConfig::small(50, 16, 2, 2, 12), vb).unwrap();
        (map, m)
    }

    #[test]
    fn every_parameter_gets_a_gradient() {
        let (map, m) = tiny();
        let ids = Tensor::new(&[[2u32, 7, 4, 9, 3], [2, 11, 12, 3, 0]], &Device::Cpu).unwrap();
        let mask = Tensor::new(&[[1u32, 1, 1, 1, 1], [1, 1, 1, 1, 0]], &Device::Cpu).unwrap();
        let logits = m.logits_at(&ids, &mask, &[2, 6]).unwrap();
        let labels = Tensor::new(&[5u32, 13], &Device::Cpu).unwrap();
        let loss = candle_nn::loss::cross_entropy(&logits, &labels).unwrap();
        let grads = loss.backward().unwrap();
        let data = map.data().lock().unwrap();
        assert!(data.len() >= 2 * 16 + 10, "{} variables", data.len());
        for (name, var) in data.iter() {
            let g = grads
                .get(var.as_tensor())
                .unwrap_or_else(|| panic!("no gradient for {name}"));
            let n = abs_sum(g).unwrap();
            // Only the rows of unused tokens / positions / the second token
            // type may be zero; every tensor as a whole must move.
            assert!(n > 0.0, "zero gradient for {name}");
        }
    }

    #[test]
    fn padding_does_not_change_real_positions() {
        let (_, m) = tiny();
        let short = Tensor::new(&[[2u32, 7, 8, 3]], &Device::Cpu).unwrap();
        let ones = Tensor::new(&[[1u32, 1, 1, 1]], &Device::Cpu).unwrap();
        let padded = Tensor::new(&[[2u32, 7, 8, 3, 0, 0, 0]], &Device::Cpu).unwrap();
        let mask = Tensor::new(&[[1u32, 1, 1, 1, 0, 0, 0]], &Device::Cpu).unwrap();
        let a = m.forward(&short, &ones).unwrap();
        let b = m.forward(&padded, &mask).unwrap().narrow(1, 0, 4).unwrap();
        let diff = max_abs_diff(&a, &b).unwrap();
        assert!(diff < 1e-5, "padding leaked into real positions: {diff}");
        // Without the mask the padding does change them (the test can fail).
        let all = Tensor::new(&[[1u32; 7]], &Device::Cpu).unwrap();
        let c = m.forward(&padded, &all).unwrap().narrow(1, 0, 4).unwrap();
        let a = m.forward(&short, &ones).unwrap();
        let diff = max_abs_diff(&a, &c).unwrap();
        assert!(diff > 1e-4, "{diff}");
    }
}
