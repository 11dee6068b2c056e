//! A small Vision Transformer (Dosovitskiy et al., 2021) for 28-64 pixel
//! images: non-overlapping `p x p` patches, a linear patch embedding, fixed
//! 2-D sine-cosine position embeddings (as MAE uses), pre-LayerNorm blocks
//! of multi-head self-attention and a GELU MLP, a final LayerNorm, and the
//! mean of the token states as the feature.
//!
//! Patches tile the top-left `floor(H/p)·p x floor(W/p)·p` pixels (a
//! stride-p convolution would read the same ones). Masked image modelling
//! uses the parts separately: [`Vit::patchify`] for the targets,
//! [`Vit::tokens`] for the embedded patches, and [`Vit::encode`] on the
//! visible ones only.

use crate::layers::check_input;
use crate::Backbone;
use candle_core::{Device, Tensor};
use candle_nn::VarBuilder;
use selfsup_core::{Error, Result};
use selfsup_kernels::nn::{add_tail, gelu, multi_head_attention, xavier_uniform, Dense, LayerNorm};

/// LayerNorm epsilon of every norm in the network (timm's ViT value).
pub const LN_EPS: f64 = 1e-6;

/// One pre-LayerNorm transformer block:
/// `x + attn(norm1(x))`, then `x + mlp(norm2(x))`.
pub struct Block {
    norm1: LayerNorm,
    q: Dense,
    k: Dense,
    v: Dense,
    proj: Dense,
    norm2: LayerNorm,
    fc1: Dense,
    fc2: Dense,
    heads: usize,
}

impl Block {
    /// A block of width `dim` with `heads` heads and an MLP of `hidden`
    /// units; parameters `norm1.*`, `attn.{q,k,v,proj}.*`, `norm2.*`,
    /// `mlp.{fc1,fc2}.*` under `vb`, linear weights Xavier-uniform.
    pub fn new(dim: usize, heads: usize, hidden: usize, vb: VarBuilder) -> Result<Self> {
        let lin = |i: usize, o: usize, vb: VarBuilder| Dense::new(i, o, xavier_uniform(i, o), vb);
        let a = vb.pp("attn");
        Ok(Self {
            norm1: LayerNorm::new(dim, LN_EPS, vb.pp("norm1"))?,
            q: lin(dim, dim, a.pp("q"))?,
            k: lin(dim, dim, a.pp("k"))?,
            v: lin(dim, dim, a.pp("v"))?,
            proj: lin(dim, dim, a.pp("proj"))?,
            norm2: LayerNorm::new(dim, LN_EPS, vb.pp("norm2"))?,
            fc1: lin(dim, hidden, vb.pp("mlp").pp("fc1"))?,
            fc2: lin(hidden, dim, vb.pp("mlp").pp("fc2"))?,
            heads,
        })
    }

    /// The block applied to tokens `x` (B, T, dim).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.norm1.forward(x)?;
        let ctx = multi_head_attention(
            &self.q.forward(&h)?,
            &self.k.forward(&h)?,
            &self.v.forward(&h)?,
            self.heads,
            None,
        )?;
        let x = (x + self.proj.forward(&ctx)?)?;
        let m = self
            .fc2
            .forward(&gelu(&self.fc1.forward(&self.norm2.forward(&x)?)?)?)?;
        Ok((x + m)?)
    }
}

/// Fixed 2-D sine-cosine position embeddings (gh·gw, dim), row-major over
/// the grid: the first dim/2 columns encode the row, the rest the column,
/// each as dim/4 sines then dim/4 cosines at frequencies
/// 1 / 10000^(i / (dim/4)). `dim` must be a multiple of 4.
pub fn sincos_2d(gh: usize, gw: usize, dim: usize, device: &Device) -> Result<Tensor> {
    if dim % 4 != 0 || dim == 0 {
        return Err(Error::invalid(
            "backbone.dim",
            format!("{dim}: sine-cosine position embeddings need a positive multiple of 4"),
        ));
    }
    let q = dim / 4;
    let omega: Vec<f64> = (0..q)
        .map(|i| 1.0 / 10000f64.powf(i as f64 / q as f64))
        .collect();
    let mut out = Vec::with_capacity(gh * gw * dim);
    for r in 0..gh {
        for c in 0..gw {
            for pos in [r, c] {
                let angles = omega.iter().map(|w| pos as f64 * w);
                out.extend(angles.clone().map(|a| a.sin() as f32));
                out.extend(angles.map(|a| a.cos() as f32));
            }
        }
    }
    Ok(Tensor::from_vec(out, (gh * gw, dim), device)?)
}

/// The Vision Transformer; see the module docs.
pub struct Vit {
    patch_embed: Dense,
    blocks: Vec<Block>,
    norm: LayerNorm,
    in_channels: usize,
    patch: usize,
    dim: usize,
}

impl Vit {
    /// Builds the network: `patch_embed.*` (a linear map of the flattened
    /// C x p x p patch, Xavier-uniform), `blocks.{i}.*`, `norm.*`.
    pub fn new(
        in_channels: usize,
        patch: usize,
        dim: usize,
        depth: usize,
        heads: usize,
        mlp_ratio: f64,
        vb: VarBuilder,
    ) -> Result<Self> {
        if patch == 0 || depth == 0 || heads == 0 || dim % heads != 0 || dim % 4 != 0 {
            return Err(Error::invalid(
                "backbone",
                format!(
                    "vit needs patch >= 1, depth >= 1, and a width divisible by 4 and by \
                     the heads; got patch {patch}, depth {depth}, dim {dim}, heads {heads}"
                ),
            ));
        }
        let hidden = ((dim as f64) * mlp_ratio).round().max(1.0) as usize;
        let pdim = in_channels * patch * patch;
        let blocks = (0..depth)
            .map(|i| Block::new(dim, heads, hidden, vb.pp(format!("blocks.{i}"))))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            patch_embed: Dense::new(pdim, dim, xavier_uniform(pdim, dim), vb.pp("patch_embed"))?,
            blocks,
            norm: LayerNorm::new(dim, LN_EPS, vb.pp("norm"))?,
            in_channels,
            patch,
            dim,
        })
    }

    /// Patch side p.
    pub fn patch_size(&self) -> usize {
        self.patch
    }

    /// Input channels.
    pub fn in_channels(&self) -> usize {
        self.in_channels
    }

    /// The patch grid (rows, columns) of an `h x w` image.
    pub fn grid(&self, h: usize, w: usize) -> (usize, usize) {
        (h / self.patch, w / self.patch)
    }

    /// Flattened patches (B, N, C·p·p) of images `x` (B, C, H, W), patches
    /// row-major over the grid, each patch's values in (C, p, p) order.
    pub fn patchify(&self, x: &Tensor) -> Result<Tensor> {
        check_input(x, self.in_channels)?;
        patchify(x, self.patch)
    }

    /// The inverse of [`Vit::patchify`] for a (rows, columns) grid:
    /// patches (B, N, C·p·p) back to images (B, C, rows·p, columns·p).
    pub fn unpatchify(&self, patches: &Tensor, grid: (usize, usize)) -> Result<Tensor> {
        let (b, _, _) = patches.dims3()?;
        let (gh, gw, p, c) = (grid.0, grid.1, self.patch, self.in_channels);
        Ok(patches
            .reshape(vec![b, gh, gw, c, p, p])?
            .permute([0, 3, 1, 4, 2, 5])?
            .reshape((b, c, gh * p, gw * p))?)
    }

    /// Embedded patches with their position embeddings (B, N, dim).
    pub fn tokens(&self, x: &Tensor) -> Result<Tensor> {
        let (_, _, h, w) = x.dims4()?;
        let (gh, gw) = self.grid(h, w);
        let e = self.patch_embed.forward(&self.patchify(x)?)?;
        let pos = sincos_2d(gh, gw, self.dim, x.device())?;
        Ok(add_tail(&e, &pos)?)
    }

    /// The blocks and the final LayerNorm over tokens (B, T, dim) — all of
    /// an image's tokens, or any subset of them.
    pub fn encode(&self, tokens: &Tensor) -> Result<Tensor> {
        let mut x = tokens.clone();
        for b in &self.blocks {
            x = b.forward(&x)?;
        }
        Ok(self.norm.forward(&x)?)
    }
}

impl Backbone for Vit {
    fn forward_t(&self, x: &Tensor, _train: bool) -> Result<Tensor> {
        Ok(self.encode(&self.tokens(x)?)?.mean(1)?)
    }

    fn feature_dim(&self) -> usize {
        self.dim
    }

    fn as_vit(&self) -> Option<&Vit> {
        Some(self)
    }
}

/// Flattened p x p patches (B, N, C·p·p) of a (B, C, H, W) tensor, patches
/// row-major over the grid of whole patches (a right or bottom remainder
/// is dropped), each patch's values in (C, p, p) order.
pub fn patchify(x: &Tensor, p: usize) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    let (gh, gw) = (h / p.max(1), w / p.max(1));
    if p == 0 || gh == 0 || gw == 0 {
        return Err(Error::invalid(
            "input",
            format!("a {h}x{w} image is smaller than one {p}x{p} patch"),
        ));
    }
    let x = x.narrow(2, 0, gh * p)?.narrow(3, 0, gw * p)?;
    Ok(x.reshape(vec![b, c, gh, p, gw, p])?
        .permute([0, 2, 4, 1, 3, 5])?
        .reshape((b, gh * gw, c * p * p))?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_nn::VarMap;
    use selfsup_core::params::seeded_var_builder;

    fn vit(c: usize) -> (VarMap, Vit) {
        let map = VarMap::new();
        let vb = seeded_var_builder(&map, 0, &Device::Cpu);
        (map, Vit::new(c, 4, 8, 1, 2, 2.0, vb).unwrap())
    }

    #[test]
    fn patches_are_row_major_channel_first_and_round_trip() {
        let (_, v) = vit(2);
        let x = Tensor::arange(0f32, 2.0 * 2.0 * 8.0 * 8.0, &Device::Cpu)
            .unwrap()
            .reshape((2, 2, 8, 8))
            .unwrap();
        let p = v.patchify(&x).unwrap();
        assert_eq!(p.dims(), &[2, 4, 32]);
        // Image 0, patch 1 (top row, second column): channel 0 rows 0..4,
        // columns 4..8, then channel 1.
        let got = p.get(0).unwrap().get(1).unwrap().to_vec1::<f32>().unwrap();
        let want: Vec<f32> = (0..2)
            .flat_map(|c| {
                (0..4).flat_map(move |r| (4..8).map(move |col| (c * 64 + r * 8 + col) as f32))
            })
            .collect();
        assert_eq!(got, want);
        let back = v.unpatchify(&p, (2, 2)).unwrap();
        let d = (back - &x).unwrap().abs().unwrap().sum_all().unwrap();
        assert_eq!(d.to_scalar::<f32>().unwrap(), 0.0);
        // A 9x9 image uses its top-left 8x8.
        let odd = Tensor::zeros((1, 2, 9, 9), candle_core::DType::F32, &Device::Cpu).unwrap();
        assert_eq!(v.patchify(&odd).unwrap().dims(), &[1, 4, 32]);
    }

    #[test]
    fn sincos_positions_match_hand_computed_values() {
        let t = sincos_2d(2, 3, 8, &Device::Cpu).unwrap();
        assert_eq!(t.dims(), &[6, 8]);
        // Patch (row 1, column 2): row half [sin(1), sin(0.01), cos(1),
        // cos(0.01)], column half the same at 2.
        let got = t.get(5).unwrap().to_vec1::<f32>().unwrap();
        let f = |p: f64| [p.sin(), (p / 100.0).sin(), p.cos(), (p / 100.0).cos()];
        let want: Vec<f32> = f(1.0).iter().chain(&f(2.0)).map(|&v| v as f32).collect();
        for (a, b) in got.iter().zip(&want) {
            assert!((a - b).abs() < 1e-6, "{got:?} vs {want:?}");
        }
        assert!(sincos_2d(2, 2, 6, &Device::Cpu).is_err());
    }

    #[test]
    fn bad_sizes_are_refused() {
        let map = VarMap::new();
        let vb = seeded_var_builder(&map, 0, &Device::Cpu);
        let e = Vit::new(1, 4, 10, 1, 3, 2.0, vb).err().unwrap().to_string();
        assert!(e.contains("dim 10") && e.contains("heads 3"), "{e}");
        let map = VarMap::new();
        let vb = seeded_var_builder(&map, 0, &Device::Cpu);
        let big = Vit::new(1, 16, 8, 1, 2, 2.0, vb).unwrap();
        let x = Tensor::zeros((1, 1, 8, 8), candle_core::DType::F32, &Device::Cpu).unwrap();
        let e = big.forward_t(&x, false).err().unwrap().to_string();
        assert!(e.contains("smaller than one 16x16 patch"), "{e}");
    }
}
