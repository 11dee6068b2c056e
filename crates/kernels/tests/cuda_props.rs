//! The CUDA ops against the CPU reference on randomised shapes: the fused
//! training-mode BatchNorm (every activation; output, batch statistics and
//! the gradients for x, γ and β), the residual add + ReLU, the AdamW step
//! (several steps, parameters and moments), and the cuDNN convolution with
//! TF32 allowed (strict f32 is `conv_props`' CUDA case).
//!
//! The fused convolution + BatchNorm (dense through cuDNN, depthwise
//! through this crate's kernels, reductions split over several blocks)
//! and cuDNN's grouped convolution for depthwise layers are checked the
//! same way.
//!
//! Each test needs a `cuda` build and a GPU: without the feature they are
//! ignored; with it, they fail where no GPU answers. Some set process-wide
//! modes (TF32, depthwise through cuDNN): run them one at a time
//! (`--test-threads 1`), as bench/gpu/run.sh does.

use candle_core::{Device, Tensor, Var};
use candle_nn::{Optimizer, ParamsAdamW};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use selfsup_kernels::{
    add_relu, batch_norm_train, batch_norm_train_cuda, conv2d, conv_bn_train, conv_bn_train_cuda,
    set_conv_tf32, set_depthwise_cudnn, Activation, AdamW, Conv2dParams, Kernels,
};

fn gpu() -> Device {
    let d = Device::cuda_if_available(0).expect("CUDA initialises");
    assert!(
        d.is_cuda(),
        "a CUDA build runs this only where a GPU is present"
    );
    d
}

/// Largest absolute difference over the largest reference magnitude.
fn rel_err(got: &[f32], want: &[f32]) -> f32 {
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
    let diff = got
        .iter()
        .zip(want)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    diff / scale
}

fn flat(t: &Tensor) -> Vec<f32> {
    t.flatten_all()
        .unwrap()
        .to_device(&Device::Cpu)
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
}

/// Values with a per-channel offset and scale.
fn values(rng: &mut ChaCha8Rng, dims: &[usize]) -> Vec<f32> {
    let c = dims[1];
    let s: usize = dims[2..].iter().product();
    let offs: Vec<f32> = (0..c).map(|_| rng.random_range(-4.0f32..4.0)).collect();
    let scales: Vec<f32> = (0..c).map(|_| rng.random_range(0.1f32..3.0)).collect();
    (0..dims.iter().product::<usize>())
        .map(|i| offs[(i / s) % c] + scales[(i / s) % c] * rng.random_range(-1.0f32..1.0))
        .collect()
}

fn uniform(rng: &mut ChaCha8Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

/// Output, mean, variance and the three gradients of one batch norm on
/// `dev` (the CPU's fused op, or the CUDA one).
fn bn_run(
    dev: &Device,
    dims: &[usize],
    (x, gamma, beta, g): (&[f32], &[f32], &[f32], &[f32]),
    act: Activation,
) -> Vec<Vec<f32>> {
    let c = dims[1];
    let xv = Var::from_vec(x.to_vec(), dims, dev).unwrap();
    let gv = Var::from_vec(gamma.to_vec(), c, dev).unwrap();
    let bv = Var::from_vec(beta.to_vec(), c, dev).unwrap();
    let (y, mean, var) = if dev.is_cpu() {
        let (y, s) = batch_norm_train(xv.as_tensor(), &gv, &bv, 1e-5, act).unwrap();
        (y, s.mean, s.var)
    } else {
        let (y, s) = batch_norm_train_cuda(xv.as_tensor(), &gv, &bv, 1e-5, act).unwrap();
        assert_eq!(s.count, x.len() / c);
        (y, flat(&s.mean), flat(&s.var))
    };
    let gt = Tensor::from_vec(g.to_vec(), dims, dev).unwrap();
    let grads = (y.clone() * gt)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let grad = |v: &Var| flat(grads.get(v.as_tensor()).expect("a gradient"));
    vec![flat(&y), mean, var, grad(&xv), grad(&gv), grad(&bv)]
}

#[test]
#[cfg_attr(not(feature = "cuda"), ignore = "a CUDA build with a GPU runs this")]
fn cuda_batch_norm_matches_the_cpu_op() {
    let dev = gpu();
    let mut rng = ChaCha8Rng::seed_from_u64(21);
    let mut split_cases = 0;
    for case in 0..40 {
        // Some planes large enough that a channel's reduction is split over
        // several blocks (more than 8192 values per channel).
        let big = case % 4 == 0;
        let dims = if big {
            vec![rng.random_range(3..=6), rng.random_range(1..=5), 48, 47]
        } else if case % 7 == 1 {
            vec![rng.random_range(6..=40), rng.random_range(1..=9)]
        } else {
            let n = rng.random_range(1..=5);
            let c = rng.random_range(1..=9);
            vec![n, c, rng.random_range(1..=11), rng.random_range(2..=11)]
        };
        if dims[0] * dims[2..].iter().product::<usize>() > 8192 {
            split_cases += 1;
        }
        let c = dims[1];
        let x = values(&mut rng, &dims);
        let gamma: Vec<f32> = (0..c).map(|_| rng.random_range(-2.0f32..2.0)).collect();
        let beta = uniform(&mut rng, c);
        let g = uniform(&mut rng, x.len());
        let act = [Activation::Identity, Activation::Relu, Activation::Relu6][case % 3];
        let data = (&x[..], &gamma[..], &beta[..], &g[..]);
        let want = bn_run(&Device::Cpu, &dims, data, act);
        let got = bn_run(&dev, &dims, data, act);
        let names = ["y", "mean", "var", "dx", "dgamma", "dbeta"];
        for ((name, a), b) in names.iter().zip(&got).zip(&want) {
            let e = rel_err(a, b);
            assert!(
                e < 1e-4,
                "{name} of case {case} {dims:?} {act:?}: rel err {e}"
            );
        }
    }
    assert!(split_cases >= 5, "only {split_cases} split reductions");
}

#[test]
#[cfg_attr(not(feature = "cuda"), ignore = "a CUDA build with a GPU runs this")]
fn cuda_add_relu_matches_the_cpu_op() {
    let dev = gpu();
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    for dims in [vec![3usize, 4, 5, 6], vec![2, 70_001], vec![1, 1]] {
        let n: usize = dims.iter().product();
        let (a, b, g) = (
            uniform(&mut rng, n),
            uniform(&mut rng, n),
            uniform(&mut rng, n),
        );
        let run = |d: &Device| {
            let av = Var::from_vec(a.clone(), &dims[..], d).unwrap();
            let bv = Var::from_vec(b.clone(), &dims[..], d).unwrap();
            let y = add_relu(av.as_tensor(), bv.as_tensor()).unwrap();
            let gt = Tensor::from_vec(g.clone(), &dims[..], d).unwrap();
            let grads = (y.clone() * gt)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            let ga = flat(grads.get(av.as_tensor()).unwrap());
            let gb = flat(grads.get(bv.as_tensor()).unwrap());
            (flat(&y), ga, gb)
        };
        let (want, got) = (run(&Device::Cpu), run(&dev));
        assert_eq!(got.0, want.0, "add_relu output of {dims:?}");
        assert_eq!(got.1, want.1, "add_relu gradient of {dims:?}");
        assert_eq!(got.2, want.2, "add_relu gradient of {dims:?}");
    }
}

#[test]
#[cfg_attr(not(feature = "cuda"), ignore = "a CUDA build with a GPU runs this")]
fn cuda_adamw_steps_like_the_cpu_one() {
    let dev = gpu();
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let sizes = [1usize, 17, 300_001];
    let init: Vec<Vec<f32>> = sizes.iter().map(|&n| uniform(&mut rng, n)).collect();
    let grads: Vec<Vec<Vec<f32>>> = (0..4)
        .map(|_| sizes.iter().map(|&n| uniform(&mut rng, n)).collect())
        .collect();
    let params = ParamsAdamW {
        lr: 3e-3,
        weight_decay: 0.05,
        ..Default::default()
    };
    let run = |d: &Device| {
        let vars: Vec<Var> = init
            .iter()
            .map(|v| Var::from_vec(v.clone(), v.len(), d).unwrap())
            .collect();
        let mut opt = AdamW::new(vars.clone(), params.clone()).unwrap();
        for step in &grads {
            // The gradient of Σ θ·g is g.
            let loss = vars
                .iter()
                .zip(step)
                .map(|(v, g)| {
                    let gt = Tensor::from_vec(g.clone(), g.len(), d).unwrap();
                    (v.as_tensor() * gt).unwrap().sum_all().unwrap()
                })
                .reduce(|a, b| (a + b).unwrap())
                .unwrap();
            opt.backward_step(&loss).unwrap();
        }
        let state = opt.state().expect("every parameter is fused");
        (
            vars.iter().map(|v| flat(v.as_tensor())).collect::<Vec<_>>(),
            state,
        )
    };
    let (want, want_state) = run(&Device::Cpu);
    let (got, got_state) = run(&dev);
    for (i, (a, b)) in got.iter().zip(&want).enumerate() {
        let e = rel_err(a, b);
        assert!(e < 1e-6, "parameter {i}: rel err {e}");
    }
    assert_eq!(got_state.0, want_state.0, "step count");
    for (i, (a, b)) in got_state.1.iter().zip(&want_state.1).enumerate() {
        assert!(rel_err(&a.0, &b.0) < 1e-6, "first moment {i}");
        assert!(rel_err(&a.1, &b.1) < 1e-6, "second moment {i}");
    }
}

/// With TF32 allowed (the default), cuDNN's convolutions and gradients stay
/// within TF32's rounding of the CPU's f32 results.
#[test]
#[cfg_attr(not(feature = "cuda"), ignore = "a CUDA build with a GPU runs this")]
fn cuda_tf32_convolution_stays_near_f32() {
    let dev = gpu();
    set_conv_tf32(true);
    let mut rng = ChaCha8Rng::seed_from_u64(17);
    for (b, cin, cout, hw, k, stride) in [
        (8, 16, 32, 17, 3, 1),
        (4, 32, 16, 16, 3, 2),
        (2, 8, 8, 9, 1, 2),
    ] {
        let p = Conv2dParams {
            stride,
            padding: k / 2,
            groups: 1,
        };
        let x = uniform(&mut rng, b * cin * hw * hw);
        let w = uniform(&mut rng, cout * cin * k * k);
        let run = |d: &Device| {
            let xv = Var::from_vec(x.clone(), (b, cin, hw, hw), d).unwrap();
            let wv = Var::from_vec(w.clone(), (cout, cin, k, k), d).unwrap();
            let y = conv2d(xv.as_tensor(), wv.as_tensor(), p, Kernels::Fast).unwrap();
            let grads = y.sqr().unwrap().sum_all().unwrap().backward().unwrap();
            let gx = flat(grads.get(xv.as_tensor()).unwrap());
            let gw = flat(grads.get(wv.as_tensor()).unwrap());
            [flat(&y), gx, gw]
        };
        let (want, got) = (run(&Device::Cpu), run(&dev));
        for (name, (g, r)) in ["y", "dx", "dw"].iter().zip(got.iter().zip(&want)) {
            let e = rel_err(g, r);
            assert!(
                e < 1e-2,
                "TF32 {name} of {b}x{cin}x{hw}x{hw} k{k} s{stride}: rel err {e}"
            );
        }
    }
}

/// One convolution case: batch, channels in/out, square size, kernel,
/// stride, groups.
type ConvCase = (usize, usize, usize, usize, usize, usize, usize);

/// Output, mean, variance and the gradients for x, w, γ and β of
/// act(BN(conv(x, w))) on `dev`: the fused CUDA op on a GPU; on the CPU the
/// fused CPU op (dense) or the fast convolution then the fused BatchNorm
/// (depthwise).
fn conv_bn_run(dev: &Device, case: ConvCase, data: [&[f32]; 5], act: Activation) -> Vec<Vec<f32>> {
    let (b, cin, cout, hw, k, stride, groups) = case;
    let p = Conv2dParams {
        stride,
        padding: k / 2,
        groups,
    };
    let xv = Var::from_vec(data[0].to_vec(), (b, cin, hw, hw), dev).unwrap();
    let wv = Var::from_vec(data[1].to_vec(), (cout, cin / groups, k, k), dev).unwrap();
    let gv = Var::from_vec(data[2].to_vec(), cout, dev).unwrap();
    let bv = Var::from_vec(data[3].to_vec(), cout, dev).unwrap();
    let (x, w) = (xv.as_tensor(), wv.as_tensor());
    let (y, mean, var) = if dev.is_cuda() {
        let (y, s) = conv_bn_train_cuda(x, w, (&gv, &bv), None, p, (1e-5, act)).unwrap();
        (y, flat(&s.mean), flat(&s.var))
    } else if groups == 1 {
        let (y, s) = conv_bn_train(x, w, &gv, &bv, p, 1e-5, act).unwrap();
        (y, s.mean, s.var)
    } else {
        let h = conv2d(x, w, p, Kernels::Fast).unwrap();
        let (y, s) = batch_norm_train(&h, &gv, &bv, 1e-5, act).unwrap();
        (y, s.mean, s.var)
    };
    let gt = Tensor::from_vec(data[4].to_vec(), y.shape(), dev).unwrap();
    let grads = (y.clone() * gt)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let grad = |v: &Var| flat(grads.get(v.as_tensor()).expect("a gradient"));
    vec![
        flat(&y),
        mean,
        var,
        grad(&xv),
        grad(&wv),
        grad(&gv),
        grad(&bv),
    ]
}

#[test]
#[cfg_attr(not(feature = "cuda"), ignore = "a CUDA build with a GPU runs this")]
fn cuda_conv_bn_matches_the_cpu_ops() {
    let dev = gpu();
    set_conv_tf32(false);
    let mut rng = ChaCha8Rng::seed_from_u64(31);
    let cases: [ConvCase; 7] = [
        (4, 3, 8, 17, 3, 1, 1),
        (3, 6, 5, 16, 3, 2, 1),
        (2, 5, 7, 9, 1, 1, 1),
        (16, 4, 4, 32, 3, 1, 4), // depthwise, 16384 outputs per channel: split
        (9, 6, 6, 33, 3, 2, 6),  // depthwise, stride 2
        (12, 3, 3, 24, 5, 1, 3), // depthwise 5x5, split
        (2, 5, 5, 7, 7, 1, 5),   // depthwise 7x7: the general kernel
    ];
    // Depthwise layers through this crate's kernels, then through cuDNN.
    let runs = cases
        .iter()
        .map(|c| (*c, false))
        .chain(cases.iter().map(|c| (*c, true)));
    for (n, (case, dw_cudnn)) in runs.enumerate() {
        set_depthwise_cudnn(dw_cudnn);
        let (b, cin, cout, hw, k, stride, groups) = case;
        let ho = (hw + 2 * (k / 2) - k) / stride + 1;
        let x = uniform(&mut rng, b * cin * hw * hw);
        let w = uniform(&mut rng, cout * (cin / groups) * k * k);
        let gamma: Vec<f32> = (0..cout).map(|_| rng.random_range(-2.0f32..2.0)).collect();
        let beta = uniform(&mut rng, cout);
        let g = uniform(&mut rng, b * cout * ho * ho);
        let act = [Activation::Relu, Activation::Relu6, Activation::Identity][n % 3];
        let data = [&x[..], &w[..], &gamma[..], &beta[..], &g[..]];
        let want = conv_bn_run(&Device::Cpu, case, data, act);
        let got = conv_bn_run(&dev, case, data, act);
        let names = ["y", "mean", "var", "dx", "dw", "dgamma", "dbeta"];
        for ((name, a), r) in names.iter().zip(&got).zip(&want) {
            let e = rel_err(a, r);
            assert!(
                e < 1e-4,
                "{name} of {case:?} {act:?} (cuDNN depthwise: {dw_cudnn}): rel err {e}"
            );
        }
    }
    set_depthwise_cudnn(true);
}

/// The residual forms: relu(bn(conv(x)) + r) and bn(conv(x)) + r, against
/// the CPU's fused conv + BatchNorm followed by the sum (and ReLU).
#[test]
#[cfg_attr(not(feature = "cuda"), ignore = "a CUDA build with a GPU runs this")]
fn cuda_conv_bn_residual_matches_the_cpu_ops() {
    let dev = gpu();
    set_conv_tf32(false);
    let mut rng = ChaCha8Rng::seed_from_u64(51);
    for (b, c, hw, act) in [
        (4, 8, 16, Activation::Relu),
        (3, 6, 9, Activation::Identity),
    ] {
        let p = Conv2dParams {
            stride: 1,
            padding: 1,
            groups: 1,
        };
        let n = b * c * hw * hw;
        let (x, r, g) = (
            uniform(&mut rng, n),
            uniform(&mut rng, n),
            uniform(&mut rng, n),
        );
        let w = uniform(&mut rng, c * c * 9);
        let gamma: Vec<f32> = (0..c).map(|_| rng.random_range(-2.0f32..2.0)).collect();
        let beta = uniform(&mut rng, c);
        let run = |d: &Device| {
            let xv = Var::from_vec(x.clone(), (b, c, hw, hw), d).unwrap();
            let rv = Var::from_vec(r.clone(), (b, c, hw, hw), d).unwrap();
            let wv = Var::from_vec(w.clone(), (c, c, 3, 3), d).unwrap();
            let gv = Var::from_vec(gamma.clone(), c, d).unwrap();
            let bv = Var::from_vec(beta.clone(), c, d).unwrap();
            let (xt, wt, rt) = (xv.as_tensor(), wv.as_tensor(), rv.as_tensor());
            let y = if d.is_cuda() {
                conv_bn_train_cuda(xt, wt, (&gv, &bv), Some(rt), p, (1e-5, act))
                    .unwrap()
                    .0
            } else {
                let (h, _) =
                    conv_bn_train(xt, wt, &gv, &bv, p, 1e-5, Activation::Identity).unwrap();
                let s = (h + rt).unwrap();
                if act == Activation::Relu {
                    s.relu().unwrap()
                } else {
                    s
                }
            };
            let gt = Tensor::from_vec(g.clone(), y.shape(), d).unwrap();
            let grads = (y.clone() * gt)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            let grad = |v: &Var| flat(grads.get(v.as_tensor()).expect("a gradient"));
            vec![
                flat(&y),
                grad(&xv),
                grad(&rv),
                grad(&wv),
                grad(&gv),
                grad(&bv),
            ]
        };
        let (want, got) = (run(&Device::Cpu), run(&dev));
        for ((name, a), w) in ["y", "dx", "dr", "dw", "dgamma", "dbeta"]
            .iter()
            .zip(&got)
            .zip(&want)
        {
            let e = rel_err(a, w);
            assert!(
                e < 1e-4,
                "residual {name} of {b}x{c}x{hw}x{hw} {act:?}: rel err {e}"
            );
        }
    }
}

#[test]
#[cfg_attr(not(feature = "cuda"), ignore = "a CUDA build with a GPU runs this")]
fn cuda_depthwise_through_cudnn_matches_the_cpu() {
    let dev = gpu();
    set_conv_tf32(false);
    set_depthwise_cudnn(true); // the default
    let mut rng = ChaCha8Rng::seed_from_u64(41);
    for (b, c, hw, k, stride) in [(8, 16, 16, 3, 1), (4, 24, 17, 3, 2), (2, 8, 12, 5, 1)] {
        let p = Conv2dParams {
            stride,
            padding: k / 2,
            groups: c,
        };
        let x = uniform(&mut rng, b * c * hw * hw);
        let w = uniform(&mut rng, c * k * k);
        let run = |d: &Device| {
            let xv = Var::from_vec(x.clone(), (b, c, hw, hw), d).unwrap();
            let wv = Var::from_vec(w.clone(), (c, 1, k, k), d).unwrap();
            let y = conv2d(xv.as_tensor(), wv.as_tensor(), p, Kernels::Fast).unwrap();
            let grads = y.sqr().unwrap().sum_all().unwrap().backward().unwrap();
            let gx = flat(grads.get(xv.as_tensor()).unwrap());
            let gw = flat(grads.get(wv.as_tensor()).unwrap());
            [flat(&y), gx, gw]
        };
        let (want, got) = (run(&Device::Cpu), run(&dev));
        for (name, (g, r)) in ["y", "dx", "dw"].iter().zip(got.iter().zip(&want)) {
            let e = rel_err(g, r);
            assert!(
                e < 1e-4,
                "cuDNN depthwise {name} of {b}x{c}x{hw}x{hw} k{k} s{stride}: rel err {e}"
            );
        }
    }
}
