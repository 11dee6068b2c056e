//! Jigsaw puzzles (Noroozi & Favaro, 2016): each image is cut into a
//! `g x g` grid of cells, a tile is taken from each cell at a random offset
//! (so that edges do not line up and give the answer away), the tiles are
//! shuffled by one permutation of a fixed set, and the network predicts
//! which permutation. Every tile goes through the shared backbone; a linear
//! head reads the tiles' features concatenated in shown order.
//!
//! Images under 48 pixels a side use a 2x2 grid (all 24 orders); larger
//! ones a 3x3 grid with [`PERMUTATIONS_3X3`] orders chosen for maximal
//! Hamming distance (greedily, from the identity).

use candle_core::{Device, Module, Tensor};
use candle_nn::{Linear, VarBuilder};
use selfsup_backbones::Backbone;
use selfsup_core::{rng, Error, Normalization, Result};
use selfsup_data::batch;
use selfsup_objective::{classification_loss, Objective};

/// Orders in the 3x3 grid's permutation set.
pub const PERMUTATIONS_3X3: usize = 64;

/// The smallest side at which a 3x3 grid is used.
const MIN_SIDE_3X3: usize = 48;

/// The grid side for images of `h` x `w` pixels: 3 from
/// [`MIN_SIDE_3X3`] pixels on the shorter side, else 2.
pub fn grid_for(h: usize, w: usize) -> usize {
    if h.min(w) >= MIN_SIDE_3X3 {
        3
    } else {
        2
    }
}

/// The permutation set of a `g x g` grid: all 24 orders of a 2x2 grid (in
/// lexicographic order), or [`PERMUTATIONS_3X3`] orders of a 3x3 grid chosen
/// greedily — the identity first, then each time the order whose smallest
/// Hamming distance to those chosen is largest (the lexicographically first
/// on ties).
pub fn permutation_set(g: usize) -> Vec<Vec<usize>> {
    let all = all_permutations(g * g);
    if g <= 2 {
        return all;
    }
    let mut chosen = vec![all[0].clone()];
    // Smallest distance of each candidate to the chosen set so far.
    let mut nearest: Vec<usize> = all.iter().map(|p| hamming(p, &all[0])).collect();
    while chosen.len() < PERMUTATIONS_3X3.min(all.len()) {
        let (best, _) =
            nearest.iter().enumerate().fold(
                (0, 0),
                |(bi, bd), (i, &d)| if d > bd { (i, d) } else { (bi, bd) },
            );
        let pick = all[best].clone();
        for (n, p) in nearest.iter_mut().zip(&all) {
            *n = (*n).min(hamming(p, &pick));
        }
        chosen.push(pick);
    }
    chosen
}

/// Positions at which two orders differ.
pub fn hamming(a: &[usize], b: &[usize]) -> usize {
    a.iter().zip(b).filter(|(x, y)| x != y).count()
}

/// Every order of `0..n`, lexicographically.
fn all_permutations(n: usize) -> Vec<Vec<usize>> {
    let mut out = Vec::new();
    let mut p: Vec<usize> = (0..n).collect();
    loop {
        out.push(p.clone());
        // Next lexicographic permutation.
        let Some(i) = (1..n).rev().find(|&i| p[i - 1] < p[i]) else {
            return out;
        };
        let j = (i..n).rev().find(|&j| p[j] > p[i - 1]).unwrap_or(i);
        p.swap(i - 1, j);
        p[i..].reverse();
    }
}

/// Geometry of a puzzle: grid side, cell and tile size (pixels).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Puzzle {
    /// Cells per side.
    pub grid: usize,
    /// Cell side (the image's shorter side over `grid`).
    pub cell: usize,
    /// Tile side: the cell less an eighth (at least two pixels of play).
    pub tile: usize,
}

impl Puzzle {
    /// The puzzle for images of `h` x `w` pixels.
    pub fn for_image(h: usize, w: usize) -> Result<Self> {
        let grid = grid_for(h, w);
        let cell = h.min(w) / grid;
        let tile = cell.saturating_sub((cell / 8).max(2));
        if tile < 8 {
            return Err(Error::invalid(
                "jigsaw",
                format!("{h}x{w} images give {tile}-pixel tiles; the backbones need 8 or more (images of 20 pixels or more)"),
            ));
        }
        Ok(Self { grid, cell, tile })
    }
}

/// The puzzles of one batch: the tiles (image-major, then in shown order,
/// each `c x tile x tile`), each image's permutation index, and each tile's
/// top-left corner in its image (row, column), in the tiles' order. Image
/// `i`'s permutation `perms[label]` says which cell each shown slot holds:
/// slot `j` shows cell `perms[label][j]`. Offsets and labels come from
/// `seed` and the image's index.
pub struct JigsawBatch {
    /// Tile pixels.
    pub tiles: Vec<u8>,
    /// Permutation index of each image.
    pub labels: Vec<u32>,
    /// Top-left corner of each tile in its image.
    pub corners: Vec<(usize, usize)>,
}

/// Cuts every image of `pixels` (`shape` = (c, h, w) each) into the
/// puzzle `pz`, shuffled by a permutation of `perms` drawn per image.
pub fn jigsaw_batch(
    pixels: &[u8],
    shape: (usize, usize, usize),
    pz: Puzzle,
    perms: &[Vec<usize>],
    seed: u64,
) -> JigsawBatch {
    use rand::Rng as _;
    let (c, h, w) = shape;
    let per = c * h * w;
    let cells = pz.grid * pz.grid;
    let n = pixels.len() / per.max(1);
    let mut out = JigsawBatch {
        tiles: Vec::with_capacity(n * cells * c * pz.tile * pz.tile),
        labels: Vec::with_capacity(n),
        corners: Vec::with_capacity(n * cells),
    };
    for (i, img) in pixels.chunks_exact(per).enumerate() {
        let mut r = rng::stream_at(seed, "jigsaw", i as u64);
        let label = r.random_range(0..perms.len());
        // Where each cell's tile sits, drawn in cell order.
        let play = pz.cell - pz.tile;
        let at: Vec<(usize, usize)> = (0..cells)
            .map(|k| {
                let (gy, gx) = (k / pz.grid, k % pz.grid);
                let dy = r.random_range(0..=play);
                let dx = r.random_range(0..=play);
                (gy * pz.cell + dy, gx * pz.cell + dx)
            })
            .collect();
        for &cell in &perms[label] {
            let (y0, x0) = at[cell];
            for ch in 0..c {
                for y in y0..y0 + pz.tile {
                    let row = (ch * h + y) * w;
                    out.tiles
                        .extend_from_slice(&img[row + x0..row + x0 + pz.tile]);
                }
            }
            out.corners.push((y0, x0));
        }
        out.labels.push(label as u32);
    }
    out
}

/// Predict which order a puzzle's tiles are shown in.
pub struct Jigsaw {
    head: Linear,
    puzzle: Puzzle,
    perms: Vec<Vec<usize>>,
    seed: u64,
    /// Calls so far: each call draws fresh puzzles.
    calls: crate::calls::Calls,
    device: Device,
}

impl Jigsaw {
    /// A linear head over the concatenated features of the tiles of
    /// `image_shape` (c, h, w) images, `feature_dim` per tile.
    pub fn new(
        feature_dim: usize,
        image_shape: (usize, usize, usize),
        seed: u64,
        vb: VarBuilder,
    ) -> Result<Self> {
        let puzzle = Puzzle::for_image(image_shape.1, image_shape.2)?;
        let perms = permutation_set(puzzle.grid);
        let cells = puzzle.grid * puzzle.grid;
        let device = vb.device().clone();
        Ok(Self {
            head: candle_nn::linear(cells * feature_dim, perms.len(), vb)?,
            puzzle,
            perms,
            seed,
            calls: crate::calls::Calls::default(),
            device,
        })
    }

    /// The puzzle geometry and the permutation set in use.
    pub fn puzzle(&self) -> (Puzzle, &[Vec<usize>]) {
        (self.puzzle, &self.perms)
    }
}

impl Objective for Jigsaw {
    fn state(&self) -> Result<Vec<(String, Tensor)>> {
        self.calls.state()
    }
    fn restore_state(&self, saved: &std::collections::HashMap<String, Tensor>) -> Result<()> {
        self.calls.restore(saved)
    }
    fn name(&self) -> &'static str {
        "jigsaw"
    }

    fn head_outputs(&self) -> usize {
        self.perms.len()
    }

    fn loss(
        &self,
        backbone: &dyn Backbone,
        pixels: &[u8],
        shape: (usize, usize, usize),
        norm: &Normalization,
        train: bool,
    ) -> Result<(Tensor, f64, usize)> {
        let call = self.calls.next();
        let seed = rng::derive_seed(self.seed, "jigsaw-call", call);
        let b = jigsaw_batch(pixels, shape, self.puzzle, &self.perms, seed);
        let n = b.labels.len();
        let t = self.puzzle.tile;
        let x = batch::to_tensor(&b.tiles, (shape.0, t, t), norm, &self.device)?;
        let features = backbone.forward_t(&x, train)?;
        let features = features.reshape((n, ()))?;
        let labels = Tensor::from_vec(b.labels, n, &self.device)?;
        let logits = self.head.forward(&features)?;
        let (loss, acc) = classification_loss(&logits, &labels)?;
        Ok((loss, acc, n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_2x2_set_is_all_24_orders_and_the_3x3_set_is_spread_out() {
        let two = permutation_set(2);
        assert_eq!(two.len(), 24);
        let distinct: std::collections::HashSet<_> = two.iter().collect();
        assert_eq!(distinct.len(), 24);
        assert_eq!(two[0], vec![0, 1, 2, 3]);
        let three = permutation_set(3);
        assert_eq!(three.len(), PERMUTATIONS_3X3);
        assert_eq!(three[0], (0..9).collect::<Vec<_>>());
        let mut min = usize::MAX;
        for (i, a) in three.iter().enumerate() {
            let mut sorted = a.clone();
            sorted.sort_unstable();
            assert_eq!(
                sorted,
                (0..9).collect::<Vec<_>>(),
                "order {i} is a permutation"
            );
            for b in &three[..i] {
                min = min.min(hamming(a, b));
            }
        }
        // Every pair differs in at least 7 of the 9 positions (random
        // orders of nine differ in 8 on average, and greedy sets of 64 reach
        // a smallest distance of 7).
        assert!(min >= 7, "smallest Hamming distance {min}");
    }

    #[test]
    fn tiles_come_from_the_cells_their_label_says() {
        let (c, h, w) = (2, 28, 30);
        let pz = Puzzle::for_image(h, w).unwrap();
        assert_eq!(
            pz,
            Puzzle {
                grid: 2,
                cell: 14,
                tile: 12
            }
        );
        // Pixel value encodes (channel, row, column) so a tile's origin can
        // be read back.
        let img: Vec<u8> = (0..c * h * w)
            .map(|i| ((i * 7 + i / 13) % 251) as u8)
            .collect();
        let pixels = [img.clone(), img.clone(), img.clone()].concat();
        let perms = permutation_set(2);
        let b = jigsaw_batch(&pixels, (c, h, w), pz, &perms, 5);
        let again = jigsaw_batch(&pixels, (c, h, w), pz, &perms, 5);
        assert_eq!(
            (&b.tiles, &b.labels),
            (&again.tiles, &again.labels),
            "seeded"
        );
        let tile_len = c * pz.tile * pz.tile;
        assert_eq!(b.tiles.len(), 3 * 4 * tile_len);
        for (i, &label) in b.labels.iter().enumerate() {
            for (j, &cell) in perms[label as usize].iter().enumerate() {
                let k = i * 4 + j;
                let (y0, x0) = b.corners[k];
                // The tile lies inside the cell it claims.
                let (gy, gx) = (cell / 2, cell % 2);
                assert!(
                    (gy * 14..=gy * 14 + 2).contains(&y0),
                    "row {y0} of cell {cell}"
                );
                assert!(
                    (gx * 14..=gx * 14 + 2).contains(&x0),
                    "column {x0} of cell {cell}"
                );
                let tile = &b.tiles[k * tile_len..(k + 1) * tile_len];
                for ch in 0..c {
                    for y in 0..pz.tile {
                        let src = (ch * h + y0 + y) * w + x0;
                        let got = &tile[(ch * pz.tile + y) * pz.tile..][..pz.tile];
                        assert_eq!(got, &img[src..src + pz.tile]);
                    }
                }
            }
        }
        let other = jigsaw_batch(&pixels, (c, h, w), pz, &perms, 6);
        assert_ne!(b.tiles, other.tiles, "another seed, other puzzles");
    }

    /// On eight Fashion-MNIST images: every head and backbone parameter
    /// gets a gradient, and training brings the loss down.
    #[test]
    fn gradients_reach_every_parameter_and_the_loss_falls() {
        use selfsup_backbones::checkpoint::HEAD_PREFIX;
        use selfsup_core::train::{LrSchedule, Trainer};
        let (ds, norm, map, vb, _, backbone) = crate::tiny::setup();
        let obj = Jigsaw::new(
            backbone.feature_dim(),
            ds.image_shape(),
            0,
            vb.pp(HEAD_PREFIX),
        )
        .unwrap();
        assert_eq!(obj.head_outputs(), 24);
        let loss = || {
            obj.loss(
                backbone.as_ref(),
                ds.pixels(),
                ds.image_shape(),
                &norm,
                true,
            )
            .unwrap()
        };
        let (first, _, seen) = loss();
        assert_eq!(seen, 8);
        let grads = first.backward().unwrap();
        let data = map.data().lock().unwrap();
        let trained = data.iter().filter(|(name, _)| !name.contains("running_"));
        for (name, var) in trained {
            let g = grads
                .get(var.as_tensor())
                .unwrap_or_else(|| panic!("{name}: no gradient"));
            let norm = g
                .sqr()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(norm > 0.0, "{name}: zero gradient");
        }
        drop(data);
        let first = first.to_scalar::<f32>().unwrap();
        let mut tr =
            Trainer::new(map.all_vars(), LrSchedule::new(3e-3, 0, 120), 0.0, "test").unwrap();
        for _ in 0..120 {
            tr.step(&loss().0).unwrap();
        }
        // Fresh puzzles each call: the mean of a few calls.
        let last: f32 = (0..4)
            .map(|_| loss().0.to_scalar::<f32>().unwrap())
            .sum::<f32>()
            / 4.0;
        // Below the loss of a uniform guess over the 24 orders.
        let chance = (24f32).ln();
        assert!(
            last < 0.95 * chance && last < first,
            "loss {first} -> {last}, chance {chance}"
        );
    }

    #[test]
    fn small_images_are_refused_with_the_size_in_the_error() {
        let e = Puzzle::for_image(16, 16).unwrap_err().to_string();
        assert!(e.contains("16x16"), "{e}");
        assert_eq!(grid_for(64, 64), 3);
        assert_eq!(Puzzle::for_image(64, 64).unwrap().tile, 19);
    }
}
