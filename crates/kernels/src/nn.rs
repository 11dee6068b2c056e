//! Transformer layers that pick their path per call: this crate's fused
//! CPU ops (one graph node each, with its own backward pass) when
//! [`fused`] says so, and otherwise (`--kernels stock`, other devices or
//! dtypes) the same computation from Candle ops that have a backward pass
//! (Candle's fused `LayerNorm::forward` and `softmax_last_dim` have none).
//! The text BERT and the vision transformer are built from them.

use candle_core::{Module, Result, Tensor, D};
use candle_nn::init::Init;
use candle_nn::VarBuilder;

/// Whether `x` goes through the fused CPU ops: fusion on, CPU, f32.
pub fn fused(x: &Tensor) -> bool {
    crate::fusion_enabled() && crate::fused_supported(x)
}

/// The exact (erf) GELU.
pub fn gelu(x: &Tensor) -> Result<Tensor> {
    if fused(x) {
        return crate::gelu_erf(x);
    }
    x.gelu_erf()
}

/// `x + b` with `b`'s shape the tail of `x`'s.
pub fn add_tail(x: &Tensor, b: &Tensor) -> Result<Tensor> {
    if fused(x) {
        return crate::add_bias(x, b);
    }
    x.broadcast_add(b)
}

/// A linear layer `x Wᵀ + b` over the last dimension.
#[derive(Clone)]
pub struct Dense {
    /// (out, in).
    pub weight: Tensor,
    /// (out).
    pub bias: Tensor,
}

impl Dense {
    /// A layer from `inp` to `out` features under `vb` (`weight`, `bias`),
    /// the weight drawn from `init` and the bias zero.
    pub fn new(inp: usize, out: usize, init: Init, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            weight: vb.get_with_hints((out, inp), "weight", init)?,
            bias: vb.get_with_hints(out, "bias", Init::Const(0.0))?,
        })
    }

    /// `x Wᵀ + b`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if !fused(x) {
            return candle_nn::Linear::new(self.weight.clone(), Some(self.bias.clone())).forward(x);
        }
        crate::linear(x, &self.weight, &self.bias)
    }
}

/// Xavier (Glorot) uniform initialisation for a (out, inp) weight.
pub fn xavier_uniform(inp: usize, out: usize) -> Init {
    let bound = (6.0 / (inp + out) as f64).sqrt();
    Init::Uniform {
        lo: -bound,
        up: bound,
    }
}

/// LayerNorm over the last dimension (`weight` starts at 1, `bias` at 0).
#[derive(Clone)]
pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    /// A LayerNorm of `size` features under `vb`.
    pub fn new(size: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            weight: vb.get_with_hints(size, "weight", Init::Const(1.0))?,
            bias: vb.get_with_hints(size, "bias", Init::Const(0.0))?,
            eps,
        })
    }

    /// The normalised `x`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if fused(x) {
            return crate::layer_norm(x, &self.weight, &self.bias, self.eps);
        }
        let mean = x.mean_keepdim(D::Minus1)?;
        let xc = x.broadcast_sub(&mean)?;
        let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
        let y = xc.broadcast_div(&(var + self.eps)?.sqrt()?)?;
        y.broadcast_mul(&self.weight)?.broadcast_add(&self.bias)
    }
}

/// Multi-head scaled dot-product attention of `q`, `k`, `v` (B, T, H),
/// heads side by side, with an optional additive score bias (B, T) over the
/// keys (see [`crate::attention`]). Returns the context (B, T, H).
pub fn multi_head_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
    bias: Option<&Tensor>,
) -> Result<Tensor> {
    if fused(q) {
        return crate::attention(q, k, v, heads, bias);
    }
    let (b, t, h) = q.dims3()?;
    if heads == 0 || h % heads != 0 {
        candle_core::bail!("attention: width {h} does not split into {heads} heads");
    }
    let hd = h / heads;
    let split = |y: &Tensor| -> Result<Tensor> {
        y.reshape((b, t, heads, hd))?.transpose(1, 2)?.contiguous()
    };
    let (q, k, v) = (split(q)?, split(k)?, split(v)?);
    let mut scores = (q.matmul(&k.t()?.contiguous()?)? / (hd as f64).sqrt())?;
    if let Some(bias) = bias {
        scores = scores.broadcast_add(&bias.reshape((b, 1, 1, t))?)?;
    }
    let probs = candle_nn::ops::softmax(&scores, D::Minus1)?;
    probs
        .matmul(&v)?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((b, t, h))
}
