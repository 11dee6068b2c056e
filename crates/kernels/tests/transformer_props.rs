//! Property tests of the transformer ops against Candle's differentiable
//! primitives (the reference the BERT used before them), on randomised
//! shapes and values: LayerNorm (rows of 1-300 elements, offsets up to ±8,
//! scales 0.01-4, rank 2-4, non-contiguous inputs), the scaled and masked
//! softmax (1-4 batches of 1-3 heads, keys 1-150, masked keys with a -1e4
//! bias, a whole masked row), and the exact GELU (values up to ±9). Outputs
//! and the gradients of a random linear function of the output agree
//! within 1e-4 of the reference's magnitude.

use candle_core::{DType, Device, Tensor, Var, D};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use selfsup_kernels::{add_bias, gelu_erf, layer_norm, scaled_softmax};

/// Largest absolute difference over the largest reference magnitude.
fn rel_err(got: &Tensor, want: &Tensor) -> f32 {
    let g = got.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let w = want.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(g.len(), w.len());
    let scale = w.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
    g.iter()
        .zip(&w)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()))
        / scale
}

fn uniform(rng: &mut ChaCha8Rng, dims: &[usize], lo: f32, hi: f32) -> Tensor {
    let n = dims.iter().product::<usize>();
    let v: Vec<f32> = (0..n).map(|_| rng.random_range(lo..hi)).collect();
    Tensor::from_vec(v, dims, &Device::Cpu).unwrap()
}

/// Loss Σ w ⊙ y with fixed random weights, so every output element's
/// gradient differs.
fn probe(y: &Tensor, w: &Tensor) -> Tensor {
    (y * w).unwrap().sum_all().unwrap()
}

fn layer_norm_reference(x: &Tensor, g: &Tensor, b: &Tensor, eps: f64) -> Tensor {
    let mean = x.mean_keepdim(D::Minus1).unwrap();
    let xc = x.broadcast_sub(&mean).unwrap();
    let var = xc.sqr().unwrap().mean_keepdim(D::Minus1).unwrap();
    let y = xc
        .broadcast_div(&(var + eps).unwrap().sqrt().unwrap())
        .unwrap();
    y.broadcast_mul(g).unwrap().broadcast_add(b).unwrap()
}

#[test]
fn layer_norm_matches_the_primitives() {
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    for case in 0..40 {
        let h = if case % 7 == 0 {
            1
        } else {
            rng.random_range(2..=300)
        };
        let mut dims: Vec<usize> = (0..rng.random_range(1..=3))
            .map(|_| rng.random_range(1..=9))
            .collect();
        dims.push(h);
        let off = rng.random_range(-8.0f32..8.0);
        let sc = rng.random_range(0.01f32..4.0);
        let raw =
            ((uniform(&mut rng, &dims, -1.0, 1.0) * sc as f64).unwrap() + off as f64).unwrap();
        let x = Var::from_tensor(&raw).unwrap();
        let gamma = Var::from_tensor(&uniform(&mut rng, &[h], -2.0, 2.0)).unwrap();
        let beta = Var::from_tensor(&uniform(&mut rng, &[h], -1.0, 1.0)).unwrap();
        let w = uniform(&mut rng, &dims, -1.0, 1.0);
        let eps = if case % 2 == 0 { 1e-12 } else { 1e-5 };
        let got = layer_norm(&x, &gamma, &beta, eps).unwrap();
        let want = layer_norm_reference(&x, &gamma, &beta, eps);
        let e = rel_err(&got, &want);
        assert!(e < 1e-4, "case {case} {dims:?}: output off by {e}");
        let gg = probe(&got, &w).backward().unwrap();
        let gw = probe(&want, &w).backward().unwrap();
        for (name, v) in [("x", &x), ("gamma", &gamma), ("beta", &beta)] {
            let e = rel_err(gg.get(v).unwrap(), gw.get(v).unwrap());
            // A row of one element normalises to 0: dx is 0 up to rounding.
            let tol = if h == 1 && name == "x" { 1.0 } else { 1e-4 };
            assert!(e < tol, "case {case} {dims:?}: d{name} off by {e}");
        }
    }
}

#[test]
fn layer_norm_takes_non_contiguous_inputs_and_checks_shapes() {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let x = uniform(&mut rng, &[6, 5], -3.0, 3.0).t().unwrap();
    let g = uniform(&mut rng, &[6], 0.5, 1.5);
    let b = uniform(&mut rng, &[6], -0.5, 0.5);
    let got = layer_norm(&x, &g, &b, 1e-5).unwrap();
    let want = layer_norm_reference(&x, &g, &b, 1e-5);
    assert!(rel_err(&got, &want) < 1e-5);
    let e = layer_norm(&x, &b.narrow(0, 0, 5).unwrap(), &b, 1e-5).unwrap_err();
    assert!(e.to_string().contains("scale has shape [5]"), "{e}");
    let xf64 = x.to_dtype(DType::F64).unwrap();
    assert!(layer_norm(&xf64, &g, &b, 1e-5).is_err());
}

fn softmax_reference(x: &Tensor, scale: f64, bias: Option<&Tensor>) -> Tensor {
    let z = (x * scale).unwrap();
    let z = match bias {
        Some(b) => {
            let (bn, t) = b.dims2().unwrap();
            let mut shape = vec![bn];
            shape.extend(std::iter::repeat_n(1, x.rank() - 2));
            shape.push(t);
            z.broadcast_add(&b.reshape(shape).unwrap()).unwrap()
        }
        None => z,
    };
    candle_nn::ops::softmax(&z, D::Minus1).unwrap()
}

#[test]
fn scaled_softmax_matches_the_primitives() {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    for case in 0..40 {
        let (b, heads, q) = (
            rng.random_range(1..=4),
            rng.random_range(1..=3),
            rng.random_range(1..=20),
        );
        let t = rng.random_range(1..=150);
        let dims = [b, heads, q, t];
        let x = Var::from_tensor(&uniform(&mut rng, &dims, -12.0, 12.0)).unwrap();
        let scale = rng.random_range(0.05..1.0);
        // Each batch masks a random tail of its keys (all of them in case 3).
        let bias: Vec<f32> = (0..b)
            .flat_map(|_| {
                let keep = if case == 3 {
                    0
                } else {
                    rng.random_range(1..=t)
                };
                (0..t).map(move |j| if j < keep { 0.0 } else { -1e4 })
            })
            .collect();
        let bias = Tensor::from_vec(bias, (b, t), &Device::Cpu).unwrap();
        let masked = case % 3 != 0 || case == 3;
        let bias = masked.then_some(&bias);
        let w = uniform(&mut rng, &dims, -1.0, 1.0);
        let got = scaled_softmax(&x, scale, bias).unwrap();
        let want = softmax_reference(&x, scale, bias);
        let e = rel_err(&got, &want);
        assert!(e < 1e-5, "case {case} {dims:?}: output off by {e}");
        let gg = probe(&got, &w).backward().unwrap();
        let gw = probe(&want, &w).backward().unwrap();
        let e = rel_err(gg.get(&x).unwrap(), gw.get(&x).unwrap());
        assert!(e < 1e-4, "case {case} {dims:?}: dx off by {e}");
    }
}

#[test]
fn scaled_softmax_rows_sum_to_one_and_the_bias_is_checked() {
    let x = Tensor::new(&[[1f32, 2.0, 3.0], [0.0, 0.0, 0.0]], &Device::Cpu).unwrap();
    let bias = Tensor::new(&[[0f32, 0.0, -1e4], [0.0, -1e4, 0.0]], &Device::Cpu).unwrap();
    let y = scaled_softmax(&x, 2.0, Some(&bias)).unwrap();
    let y: Vec<Vec<f32>> = y.to_vec2().unwrap();
    // Row 0: softmax(2, 4) over the first two keys; row 1: halves.
    let e = (-2f32).exp();
    assert!((y[0][0] - e / (1.0 + e)).abs() < 1e-6, "{y:?}");
    assert!((y[0][1] - 1.0 / (1.0 + e)).abs() < 1e-6, "{y:?}");
    assert!(y[0][2] < 1e-30 && y[1][1] < 1e-30, "{y:?}");
    assert!((y[1][0] - 0.5).abs() < 1e-6 && (y[1][2] - 0.5).abs() < 1e-6);
    let bad = Tensor::zeros((3, 3), DType::F32, &Device::Cpu).unwrap();
    let e = scaled_softmax(&x, 1.0, Some(&bad)).unwrap_err();
    assert!(e.to_string().contains("bias has shape [3, 3]"), "{e}");
}

#[test]
fn gelu_matches_candles_gelu_erf() {
    let mut rng = ChaCha8Rng::seed_from_u64(8);
    for case in 0..20 {
        let dims = [rng.random_range(1..=40), rng.random_range(1..=700)];
        let x = Var::from_tensor(&uniform(&mut rng, &dims, -9.0, 9.0)).unwrap();
        let w = uniform(&mut rng, &dims, -1.0, 1.0);
        let got = gelu_erf(&x).unwrap();
        let want = x.gelu_erf().unwrap();
        let e = rel_err(&got, &want);
        assert!(e < 1e-5, "case {case}: output off by {e}");
        let gg = probe(&got, &w).backward().unwrap();
        let gw = probe(&want, &w).backward().unwrap();
        let e = rel_err(gg.get(&x).unwrap(), gw.get(&x).unwrap());
        assert!(e < 1e-4, "case {case}: dx off by {e}");
    }
    // Exact values: GELU(0) = 0, GELU(1) = Φ(1) = 0.841344746.
    let y: Vec<f32> = gelu_erf(&Tensor::new(&[[0f32, 1.0, -1.0]], &Device::Cpu).unwrap())
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    assert!(
        y[0].abs() < 1e-7 && (y[1] - 0.841_344_7).abs() < 1e-6,
        "{y:?}"
    );
    assert!((y[2] + 0.158_655_3).abs() < 1e-6, "{y:?}");
}

#[test]
fn add_bias_matches_broadcast_add() {
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    for case in 0..20 {
        let dims: Vec<usize> = (0..rng.random_range(2..=4))
            .map(|_| rng.random_range(1..=70))
            .collect();
        let tail = rng.random_range(1..dims.len());
        let bdims = dims[dims.len() - tail..].to_vec();
        let x = Var::from_tensor(&uniform(&mut rng, &dims, -3.0, 3.0)).unwrap();
        let b = Var::from_tensor(&uniform(&mut rng, &bdims, -3.0, 3.0)).unwrap();
        let w = uniform(&mut rng, &dims, -1.0, 1.0);
        let got = add_bias(&x, &b).unwrap();
        let want = x.broadcast_add(&b).unwrap();
        assert_eq!(
            rel_err(&got, &want),
            0.0,
            "case {case}: {dims:?} + {bdims:?}"
        );
        let gg = probe(&got, &w).backward().unwrap();
        let gw = probe(&want, &w).backward().unwrap();
        assert_eq!(rel_err(gg.get(&x).unwrap(), gw.get(&x).unwrap()), 0.0);
        let e = rel_err(gg.get(&b).unwrap(), gw.get(&b).unwrap());
        assert!(e < 1e-4, "case {case} {dims:?} + {bdims:?}: db off by {e}");
    }
    let x = Tensor::zeros((2, 3), DType::F32, &Device::Cpu).unwrap();
    let e = add_bias(&x, &Tensor::zeros(2, DType::F32, &Device::Cpu).unwrap()).unwrap_err();
    assert!(e.to_string().contains("not the tail of [2, 3]"), "{e}");
}

/// Attention from Candle ops: heads split, scores, softmax, context.
fn attention_reference(q: &Tensor, k: &Tensor, v: &Tensor, heads: usize, bias: &Tensor) -> Tensor {
    let (b, t, h) = q.dims3().unwrap();
    let d = h / heads;
    let split = |x: &Tensor| {
        x.reshape((b, t, heads, d))
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .contiguous()
            .unwrap()
    };
    let (q, k, v) = (split(q), split(k), split(v));
    let s = q.matmul(&k.t().unwrap().contiguous().unwrap()).unwrap();
    let s = (s / (d as f64).sqrt())
        .unwrap()
        .broadcast_add(&bias.reshape((b, 1, 1, t)).unwrap())
        .unwrap();
    let p = candle_nn::ops::softmax(&s, D::Minus1).unwrap();
    p.matmul(&v)
        .unwrap()
        .transpose(1, 2)
        .unwrap()
        .contiguous()
        .unwrap()
        .reshape((b, t, h))
        .unwrap()
}

#[test]
fn attention_matches_the_candle_ops() {
    let mut rng = ChaCha8Rng::seed_from_u64(21);
    for case in 0..25 {
        let heads = rng.random_range(1..=4);
        let d = rng.random_range(1..=24);
        let (b, t) = (rng.random_range(1..=4), rng.random_range(1..=40));
        let dims = [b, t, heads * d];
        let x = |rng: &mut ChaCha8Rng| Var::from_tensor(&uniform(rng, &dims, -2.0, 2.0)).unwrap();
        let (q, k, v) = (x(&mut rng), x(&mut rng), x(&mut rng));
        let bias: Vec<f32> = (0..b)
            .flat_map(|_| {
                let keep = rng.random_range(1..=t);
                (0..t).map(move |j| if j < keep { 0.0 } else { -1e4 })
            })
            .collect();
        let bias = Tensor::from_vec(bias, (b, t), &Device::Cpu).unwrap();
        let w = uniform(&mut rng, &dims, -1.0, 1.0);
        let got = selfsup_kernels::attention(&q, &k, &v, heads, Some(&bias)).unwrap();
        let want = attention_reference(&q, &k, &v, heads, &bias);
        let e = rel_err(&got, &want);
        assert!(e < 1e-5, "case {case} {dims:?} x{heads}: output off by {e}");
        let gg = probe(&got, &w).backward().unwrap();
        let gw = probe(&want, &w).backward().unwrap();
        for (name, var) in [("q", &q), ("k", &k), ("v", &v)] {
            let e = rel_err(gg.get(var).unwrap(), gw.get(var).unwrap());
            assert!(
                e < 1e-4,
                "case {case} {dims:?} x{heads}: d{name} off by {e}"
            );
        }
    }
}

#[test]
fn attention_without_a_bias_and_bad_shapes() {
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let q = uniform(&mut rng, &[2, 5, 6], -1.0, 1.0);
    let zero = Tensor::zeros((2, 5), DType::F32, &Device::Cpu).unwrap();
    let a = selfsup_kernels::attention(&q, &q, &q, 3, None).unwrap();
    let b = attention_reference(&q, &q, &q, 3, &zero);
    assert!(rel_err(&a, &b) < 1e-5);
    let e = selfsup_kernels::attention(&q, &q, &q, 4, None).unwrap_err();
    assert!(e.to_string().contains("does not split into 4 heads"), "{e}");
    let k = q.narrow(1, 0, 4).unwrap();
    let e = selfsup_kernels::attention(&q, &k, &q, 3, None).unwrap_err();
    assert!(e.to_string().contains("keys [2, 4, 6]"), "{e}");
    let e = selfsup_kernels::attention(&q, &q, &q, 3, Some(&zero.t().unwrap())).unwrap_err();
    assert!(e.to_string().contains("bias has shape [5, 2]"), "{e}");
}

#[test]
fn linear_matches_candles_linear() {
    let mut rng = ChaCha8Rng::seed_from_u64(31);
    for case in 0..20 {
        let (inp, out) = (rng.random_range(1..=90), rng.random_range(1..=90));
        let mut dims: Vec<usize> = (0..rng.random_range(1..=2))
            .map(|_| rng.random_range(1..=30))
            .collect();
        dims.push(inp);
        let x = Var::from_tensor(&uniform(&mut rng, &dims, -2.0, 2.0)).unwrap();
        let w = Var::from_tensor(&uniform(&mut rng, &[out, inp], -1.0, 1.0)).unwrap();
        let b = Var::from_tensor(&uniform(&mut rng, &[out], -1.0, 1.0)).unwrap();
        let got = selfsup_kernels::linear(&x, &w, &b).unwrap();
        let want = candle_nn::Module::forward(
            &candle_nn::Linear::new(w.as_tensor().clone(), Some(b.as_tensor().clone())),
            &x,
        )
        .unwrap();
        assert_eq!(got.dims(), want.dims());
        let e = rel_err(&got, &want);
        assert!(e < 1e-5, "case {case} {dims:?} -> {out}: output off by {e}");
        let wp = uniform(&mut rng, want.dims(), -1.0, 1.0);
        let gg = probe(&got, &wp).backward().unwrap();
        let gw = probe(&want, &wp).backward().unwrap();
        for (name, v) in [("x", &x), ("w", &w), ("b", &b)] {
            let e = rel_err(gg.get(v).unwrap(), gw.get(v).unwrap());
            assert!(
                e < 1e-4,
                "case {case} {dims:?} -> {out}: d{name} off by {e}"
            );
        }
    }
    let x = Tensor::zeros((2, 3), DType::F32, &Device::Cpu).unwrap();
    let w = Tensor::zeros((4, 2), DType::F32, &Device::Cpu).unwrap();
    let b = Tensor::zeros(4, DType::F32, &Device::Cpu).unwrap();
    let e = selfsup_kernels::linear(&x, &w, &b).unwrap_err();
    assert!(e.to_string().contains("want (4, 3)"), "{e}");
}

#[test]
fn cross_entropy_matches_candles() {
    let mut rng = ChaCha8Rng::seed_from_u64(41);
    for case in 0..20 {
        let (n, c) = (rng.random_range(1..=60), rng.random_range(1..=900));
        let x = Var::from_tensor(&uniform(&mut rng, &[n, c], -15.0, 15.0)).unwrap();
        let labels: Vec<u32> = (0..n).map(|_| rng.random_range(0..c as u32)).collect();
        let labels = Tensor::new(labels.as_slice(), &Device::Cpu).unwrap();
        let got = selfsup_kernels::cross_entropy(&x, &labels).unwrap();
        let want = candle_nn::loss::cross_entropy(&x, &labels).unwrap();
        assert_eq!(got.dims(), want.dims());
        let e = rel_err(&got, &want);
        assert!(e < 1e-5, "case {case} ({n}, {c}): loss off by {e}");
        let two = |l: &Tensor| (l * 2.0).unwrap().backward().unwrap();
        let (gg, gw) = (two(&got), two(&want));
        let e = rel_err(gg.get(&x).unwrap(), gw.get(&x).unwrap());
        assert!(e < 1e-4, "case {case} ({n}, {c}): dlogits off by {e}");
    }
    // Hand-computed: logits (0, ln 3) with label 1: −log(3/4).
    let x = Tensor::new(&[[0f32, 3f32.ln()]], &Device::Cpu).unwrap();
    let l = selfsup_kernels::cross_entropy(&x, &Tensor::new(&[1u32], &Device::Cpu).unwrap());
    let v = l.unwrap().to_scalar::<f32>().unwrap();
    assert!((v + 0.75f32.ln()).abs() < 1e-6, "{v}");
    let bad = Tensor::new(&[2u32], &Device::Cpu).unwrap();
    let e = selfsup_kernels::cross_entropy(&x, &bad).unwrap_err();
    assert!(
        e.to_string().contains("label 2 is not below the 2 classes"),
        "{e}"
    );
}

#[test]
fn dropout_is_seeded_unbiased_and_its_gradient_is_the_mask() {
    let mut rng = ChaCha8Rng::seed_from_u64(51);
    let dims = [64, 40, 50];
    let x = Var::from_tensor(&uniform(&mut rng, &dims, 0.5, 1.5)).unwrap();
    let p = 0.1;
    let y = selfsup_kernels::dropout(&x, p, 7).unwrap();
    let n = x.elem_count();
    let mask = selfsup_kernels::dropout_mask(n, p, 7);
    let mask_t = Tensor::from_vec(mask.clone(), &dims, &Device::Cpu).unwrap();
    // The output is x times the mask, which keeps 1 - p of the elements
    // scaled by 1 / (1 - p).
    assert_eq!(rel_err(&y, &(x.as_tensor() * &mask_t).unwrap()), 0.0);
    let kept = mask.iter().filter(|&&m| m > 0.0).count() as f64 / n as f64;
    assert!((kept - 0.9).abs() < 0.003, "kept {kept}");
    assert!(mask
        .iter()
        .all(|&m| m == 0.0 || (m - 1.0 / 0.9).abs() < 1e-6));
    // Same seed, same mask; another seed, another mask.
    assert_eq!(
        rel_err(&selfsup_kernels::dropout(&x, p, 7).unwrap(), &y),
        0.0
    );
    let other = selfsup_kernels::dropout_mask(n, p, 8);
    let same = mask.iter().zip(&other).filter(|(a, b)| a == b).count() as f64 / n as f64;
    assert!(same < 0.9, "seeds 7 and 8 agree on {same} of the mask");
    // Neighbouring elements are not correlated: runs of drops are rare.
    let pairs = mask
        .windows(2)
        .filter(|w| w[0] == 0.0 && w[1] == 0.0)
        .count() as f64;
    assert!((pairs / n as f64 - 0.01).abs() < 0.002, "{pairs}");
    // The gradient is the mask.
    let w = uniform(&mut rng, &dims, -1.0, 1.0);
    let g = probe(&y, &w).backward().unwrap();
    assert_eq!(rel_err(g.get(&x).unwrap(), &(&w * &mask_t).unwrap()), 0.0);
    // p = 0 keeps everything; p = 1 is refused.
    let all = selfsup_kernels::dropout(&x, 0.0, 3).unwrap();
    assert_eq!(rel_err(&all, &x), 0.0);
    let e = selfsup_kernels::dropout(&x, 1.0, 3).unwrap_err();
    assert!(e.to_string().contains("must be in [0, 1)"), "{e}");
}
