//! Every CPU kernel gives the same numbers on every SIMD path this machine
//! supports: the outputs and gradients of the dense (including planes cut
//! into bands) and depthwise convolutions, the fused BatchNorm (each
//! activation), the fused convolution + BatchNorm, add + ReLU, the
//! max-pool, the global average pool and the fused AdamW step, run with the
//! level capped at each of baseline / AVX2 / AVX-512 in turn, equal those
//! of the baseline path element for element. (The other property tests check the widest path
//! against Candle's reference ops; together they cover every path.)
//!
//! The cap is process-wide, so this file holds one test.

use candle_core::{Device, Tensor, Var};
use candle_nn::{Optimizer, ParamsAdamW};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use selfsup_kernels::simd::{self, SimdLevel};
use selfsup_kernels::{
    add_relu, batch_norm_train, conv2d, conv_bn_train, global_avg_pool, max_pool2, Activation,
    AdamW, Conv2dParams, Kernels,
};

fn var(rng: &mut ChaCha8Rng, dims: &[usize]) -> Var {
    let n: usize = dims.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rng.random_range(-2.0..2.0)).collect();
    Var::from_tensor(&Tensor::from_vec(v, dims, &Device::Cpu).unwrap()).unwrap()
}

fn flat(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

/// The output of `f(inputs)` and the gradient of `Σ output·weights` for each
/// input, all flattened.
fn with_grads(inputs: &[&Var], f: impl Fn() -> Tensor, seed: u64) -> Vec<Vec<f32>> {
    let y = f();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let w = var(&mut rng, y.dims());
    let grads = (&y * w.as_tensor())
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let mut out = vec![flat(&y)];
    for x in inputs {
        out.push(flat(grads.get(x).expect("every input gets a gradient")));
    }
    out
}

/// Everything the kernels compute on one fixed set of inputs.
fn all_kernels() -> Vec<Vec<f32>> {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let mut out = Vec::new();
    // Dense (stride 1 and 2, odd and non-square planes) and depthwise 3x3
    // (stride 1 and 2): (input, groups, stride).
    let convs = [
        ([3, 5, 9, 7], 1, 1),
        ([2, 4, 11, 10], 1, 2),
        ([2, 6, 13, 13], 6, 1),
        ([2, 6, 13, 13], 6, 2),
        // Planes of 361 outputs: cut into two bands of output rows.
        ([2, 3, 19, 19], 1, 1),
    ];
    for (dims, groups, stride) in convs {
        let x = var(&mut rng, &dims);
        let cout = if groups == 1 { 6 } else { dims[1] };
        let w = var(&mut rng, &[cout, dims[1] / groups, 3, 3]);
        let p = Conv2dParams {
            stride,
            padding: 1,
            groups,
        };
        out.extend(with_grads(
            &[&x, &w],
            || conv2d(&x, &w, p, Kernels::Fast).unwrap(),
            1,
        ));
    }
    // BatchNorm with each activation; add + ReLU; max-pool (with ties).
    for act in [Activation::Identity, Activation::Relu, Activation::Relu6] {
        let x = var(&mut rng, &[3, 5, 6, 10]);
        let (g, b) = (var(&mut rng, &[5]), var(&mut rng, &[5]));
        let bn = || batch_norm_train(&x, &g, &b, 1e-5, act).unwrap().0;
        out.extend(with_grads(&[&x, &g, &b], bn, 3));
    }
    // The fused convolution + BatchNorm (one banded plane, one group of
    // small images).
    for (dims, act) in [
        ([2, 3, 18, 17], Activation::Relu),
        ([5, 4, 7, 9], Activation::Relu6),
    ] {
        let x = var(&mut rng, &dims);
        let w = var(&mut rng, &[5, dims[1], 3, 3]);
        let (g, b) = (var(&mut rng, &[5]), var(&mut rng, &[5]));
        let p = Conv2dParams {
            stride: 1,
            padding: 1,
            groups: 1,
        };
        let f = || conv_bn_train(&x, &w, &g, &b, p, 1e-5, act).unwrap().0;
        out.extend(with_grads(&[&x, &w, &g, &b], f, 7));
    }
    let (a, b) = (var(&mut rng, &[2, 3, 8, 8]), var(&mut rng, &[2, 3, 8, 8]));
    out.extend(with_grads(&[&a, &b], || add_relu(&a, &b).unwrap(), 4));
    let x = var(&mut rng, &[2, 3, 8, 6]);
    let tied = x.as_tensor().clamp(-0.5f32, 0.5f32).unwrap();
    out.extend(with_grads(&[&x], || max_pool2(&tied).unwrap(), 5));
    out.extend(with_grads(
        &[&x],
        || global_avg_pool(x.as_tensor()).unwrap(),
        6,
    ));
    // Three AdamW steps on a small and a large (parallel-chunked) parameter.
    let params = [var(&mut rng, &[7, 3]), var(&mut rng, &[70_000])];
    let cfg = ParamsAdamW {
        lr: 1e-2,
        weight_decay: 0.05,
        ..Default::default()
    };
    let mut opt = AdamW::new(params.to_vec(), cfg).unwrap();
    for _ in 0..3 {
        let loss = params
            .iter()
            .map(|p| {
                p.as_tensor()
                    .sqr()
                    .unwrap()
                    .sin()
                    .unwrap()
                    .sum_all()
                    .unwrap()
            })
            .reduce(|a, b| (a + b).unwrap())
            .unwrap();
        opt.backward_step(&loss).unwrap();
    }
    out.extend(params.iter().map(|p| flat(p.as_tensor())));
    out
}

#[test]
fn every_simd_path_computes_what_the_baseline_does() {
    simd::set_max_level(Some(SimdLevel::Baseline));
    let base = all_kernels();
    for level in simd::detected().up_to() {
        simd::set_max_level(Some(level));
        assert_eq!(simd::active(), level);
        let got = all_kernels();
        for (i, (g, b)) in got.iter().zip(&base).enumerate() {
            assert_eq!(g.len(), b.len());
            let differ = g.iter().zip(b).filter(|(x, y)| x != y).count();
            assert_eq!(
                differ,
                0,
                "{}: output {i} differs from baseline in {differ} values",
                level.name()
            );
        }
    }
    simd::set_max_level(None);
    assert_eq!(simd::active(), simd::detected());
}
