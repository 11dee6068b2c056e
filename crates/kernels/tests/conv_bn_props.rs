//! The fused convolution + BatchNorm + activation gives exactly the numbers
//! of the two ops it replaces (the fast convolution, then the fused
//! BatchNorm): output, batch statistics and the gradients for x, w, γ and
//! β, bit for bit, on randomised shapes — grouped small images, large
//! planes cut into bands of output rows, stride 2, padding 0 and 1, 1x1 and
//! 3x3 kernels, each activation — on the global pool and on a 2-thread one.

use candle_core::{Device, Tensor, Var};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use selfsup_kernels::{
    batch_norm_train, conv2d, conv_bn_train, fused_conv_bn_supported, Activation, Conv2dParams,
    Kernels,
};

#[derive(Debug, Clone, Copy)]
struct Case {
    b: usize,
    cin: usize,
    cout: usize,
    size: (usize, usize),
    k: usize,
    p: Conv2dParams,
    act: Activation,
}

fn random_case(rng: &mut ChaCha8Rng) -> Case {
    let k = if rng.random_bool(0.75) { 3 } else { 1 };
    let stride = rng.random_range(1..=2);
    let big = rng.random_bool(0.3);
    let sizes = match (big, stride) {
        (false, _) => 5..=12,
        (true, 1) => 17..=34,
        (true, _) => 33..=40,
    };
    Case {
        b: if big {
            rng.random_range(2..=5)
        } else {
            rng.random_range(1..=9)
        },
        cin: rng.random_range(1..=6),
        cout: rng.random_range(1..=7),
        size: (rng.random_range(sizes.clone()), rng.random_range(sizes)),
        k,
        p: Conv2dParams {
            stride,
            padding: if k == 3 { rng.random_range(0..=1) } else { 0 },
            groups: 1,
        },
        act: [Activation::Identity, Activation::Relu, Activation::Relu6][rng.random_range(0..3)],
    }
}

fn randn(rng: &mut ChaCha8Rng, dims: &[usize], scale: f32, offset: f32) -> Var {
    let n: usize = dims.iter().product();
    let v: Vec<f32> = (0..n)
        .map(|_| offset + scale * rng.random_range(-1.0f32..1.0))
        .collect();
    Var::from_vec(v, dims, &Device::Cpu).unwrap()
}

fn bits(t: &Tensor) -> Vec<u32> {
    let v: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
    v.iter().map(|f| f.to_bits()).collect()
}

/// Output, (mean, var) and the gradients of Σ y·r for x, w, γ, β.
type Run = (Vec<u32>, Vec<u32>, [Vec<u32>; 4]);

fn run(c: &Case, vars: &[Var; 5], fused: bool) -> Run {
    let [x, w, gamma, beta, r] = vars;
    let (y, stats) = if fused {
        conv_bn_train(x, w, gamma, beta, c.p, 1e-5, c.act).unwrap()
    } else {
        let h = conv2d(x, w, c.p, Kernels::Fast).unwrap();
        batch_norm_train(&h, gamma, beta, 1e-5, c.act).unwrap()
    };
    let grads = (&y * r.as_tensor())
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let g = |v: &Var| bits(grads.get(v).expect("a gradient"));
    let moments: Vec<u32> = stats
        .mean
        .iter()
        .chain(&stats.var)
        .map(|f| f.to_bits())
        .collect();
    (bits(&y), moments, [g(x), g(w), g(gamma), g(beta)])
}

fn check(cases: usize, seed: u64) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut banded = 0;
    for n in 0..cases {
        let c = random_case(&mut rng);
        let (h, wd) = c.size;
        let pad = c.p.padding;
        let ho = (h + 2 * pad - c.k) / c.p.stride + 1;
        let wo = (wd + 2 * pad - c.k) / c.p.stride + 1;
        banded += usize::from(ho * wo > 256);
        let vars = [
            randn(&mut rng, &[c.b, c.cin, h, wd], 1.0, 0.0),
            randn(&mut rng, &[c.cout, c.cin, c.k, c.k], 0.5, 0.0),
            randn(&mut rng, &[c.cout], 1.0, 0.5),
            randn(&mut rng, &[c.cout], 1.0, 0.0),
            randn(&mut rng, &[c.b, c.cout, ho, wo], 1.0, 0.0),
        ];
        assert!(fused_conv_bn_supported(&vars[0], &vars[1], c.p));
        let want = run(&c, &vars, false);
        let got = run(&c, &vars, true);
        assert!(got.0 == want.0, "case {n} {c:?}: outputs differ");
        assert!(got.1 == want.1, "case {n} {c:?}: statistics differ");
        for (i, what) in ["x", "w", "gamma", "beta"].iter().enumerate() {
            assert!(
                got.2[i] == want.2[i],
                "case {n} {c:?}: gradient for {what} differs"
            );
        }
    }
    assert!(banded >= 3, "only {banded} cases had planes cut into bands");
}

#[test]
fn fused_conv_bn_matches_the_two_ops_bit_for_bit() {
    check(40, 11);
}

#[test]
fn fused_conv_bn_matches_the_two_ops_on_a_two_thread_pool() {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    pool.install(|| check(20, 12));
}

#[test]
fn unsupported_inputs_are_refused_with_the_reason() {
    let d = Device::Cpu;
    let x = Tensor::zeros((1, 4, 8, 8), candle_core::DType::F32, &d).unwrap();
    let w = Tensor::zeros((4, 1, 3, 3), candle_core::DType::F32, &d).unwrap();
    let g = Tensor::ones(4, candle_core::DType::F32, &d).unwrap();
    let depthwise = Conv2dParams {
        stride: 1,
        padding: 1,
        groups: 4,
    };
    assert!(!fused_conv_bn_supported(&x, &w, depthwise));
    let e = conv_bn_train(&x, &w, &g, &g, depthwise, 1e-5, Activation::Relu)
        .unwrap_err()
        .to_string();
    assert!(e.contains("groups 1"), "{e}");
    let dense = Tensor::zeros((4, 4, 3, 3), candle_core::DType::F32, &d).unwrap();
    let short = Tensor::ones(3, candle_core::DType::F32, &d).unwrap();
    let p = Conv2dParams {
        stride: 1,
        padding: 1,
        groups: 1,
    };
    let e = conv_bn_train(&x, &dense, &short, &g, p, 1e-5, Activation::Relu)
        .unwrap_err()
        .to_string();
    assert!(e.contains("4 output channels"), "{e}");
}

/// With the input and kernel frozen (plain tensors), only γ and β get
/// gradients, equal to the two ops' bit for bit.
#[test]
fn frozen_input_and_kernel_give_only_scale_and_shift_gradients() {
    let mut rng = ChaCha8Rng::seed_from_u64(13);
    let p = Conv2dParams {
        stride: 1,
        padding: 1,
        groups: 1,
    };
    let x = randn(&mut rng, &[3, 4, 9, 9], 1.0, 0.0)
        .as_tensor()
        .detach();
    let w = randn(&mut rng, &[5, 4, 3, 3], 0.5, 0.0)
        .as_tensor()
        .detach();
    let gamma = randn(&mut rng, &[5], 1.0, 0.5);
    let beta = randn(&mut rng, &[5], 1.0, 0.0);
    let r = randn(&mut rng, &[3, 5, 9, 9], 1.0, 0.0);
    let grads = |fused: bool| {
        let y = if fused {
            conv_bn_train(&x, &w, &gamma, &beta, p, 1e-5, Activation::Relu)
        } else {
            let h = conv2d(&x, &w, p, Kernels::Fast).unwrap();
            batch_norm_train(&h, &gamma, &beta, 1e-5, Activation::Relu)
        }
        .unwrap()
        .0;
        let g = (&y * r.as_tensor())
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        assert!(g.get(&x).is_none() && g.get(&w).is_none());
        (bits(g.get(&gamma).unwrap()), bits(g.get(&beta).unwrap()))
    };
    assert_eq!(grads(true), grads(false));
}
