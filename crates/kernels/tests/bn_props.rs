//! Property tests: on randomised shapes (batch 1-5, 1-9 channels, rank 2 and
//! 4, odd and non-square planes) and values (per-channel offsets up to ±6,
//! scales 0.05-3, negative γ), the fused training-mode batch norm with each
//! activation matches Candle's `candle_nn::BatchNorm` followed by Candle's
//! ReLU / ReLU6 — output, batch statistics, and the gradients for x, γ and β
//! — within 1e-4 relative error; the fused residual add + ReLU matches
//! Candle's add and ReLU the same way. The fused eval-mode batch norm
//! (running statistics) gives Candle's output bit for bit and its
//! gradients within 1e-5.

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{BatchNorm, ModuleT};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use selfsup_kernels::{add_relu, batch_norm_eval, batch_norm_train, Activation};

/// Largest absolute difference over the largest reference magnitude.
fn rel_err(got: &[f32], want: &[f32]) -> f32 {
    rel_err_to(got, want, want)
}

/// Largest absolute difference over the largest magnitude of `scale`.
fn rel_err_to(got: &[f32], want: &[f32], scale: &[f32]) -> f32 {
    assert_eq!(got.len(), want.len());
    let scale = scale.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
    let diff = got
        .iter()
        .zip(want)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    diff / scale
}

fn flat(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

fn random_dims(rng: &mut ChaCha8Rng) -> Vec<usize> {
    let c = rng.random_range(1..=9);
    if rng.random_bool(0.2) {
        vec![rng.random_range(6..=40), c]
    } else {
        vec![
            rng.random_range(1..=5),
            c,
            rng.random_range(1..=11),
            rng.random_range(2..=11),
        ]
    }
}

/// Values with a per-channel offset and scale, so that the statistics are
/// not those of a standard normal.
fn values(rng: &mut ChaCha8Rng, dims: &[usize]) -> Vec<f32> {
    let c = dims[1];
    let s: usize = dims[2..].iter().product();
    let offs: Vec<f32> = (0..c).map(|_| rng.random_range(-6.0f32..6.0)).collect();
    let scales: Vec<f32> = (0..c).map(|_| rng.random_range(0.05f32..3.0)).collect();
    (0..dims.iter().product::<usize>())
        .map(|i| {
            let ch = (i / s) % c;
            offs[ch] + scales[ch] * rng.random_range(-1.0f32..1.0)
        })
        .collect()
}

fn activate(t: &Tensor, act: Activation) -> Tensor {
    match act {
        Activation::Identity => t.clone(),
        Activation::Relu => t.relu().unwrap(),
        Activation::Relu6 => t.relu().unwrap().minimum(6f32).unwrap(),
    }
}

#[test]
fn fused_batch_norm_matches_candle_on_random_shapes() {
    let d = Device::Cpu;
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let acts = [Activation::Identity, Activation::Relu, Activation::Relu6];
    let mut seen = std::collections::HashSet::new();
    let mut checked = 0;
    for case in 0..60 {
        let dims = random_dims(&mut rng);
        let act = acts[case % 3];
        let c = dims[1];
        let count: usize = dims.iter().product::<usize>() / c;
        // Fewer values per channel make the input gradient a cancellation of
        // terms (for two values it is exactly zero but for ε), where both
        // implementations only compute rounding noise.
        if count < 6 {
            continue;
        }
        let x = values(&mut rng, &dims);
        let gamma: Vec<f32> = (0..c).map(|_| rng.random_range(-2.0f32..2.0)).collect();
        // Shifts around 3 put ReLU6's upper bend inside the data.
        let beta: Vec<f32> = (0..c).map(|_| rng.random_range(-1.0f32..4.0)).collect();
        let gout: Vec<f32> = (0..x.len())
            .map(|_| rng.random_range(-1.0f32..1.0))
            .collect();
        let eps = 1e-5;

        // Candle: candle_nn's BatchNorm (momentum 1, so the running stats are
        // this batch's), then Candle's activation, then autograd.
        let xv = Var::from_vec(x.clone(), dims.as_slice(), &d).unwrap();
        let gv = Var::from_vec(gamma.clone(), c, &d).unwrap();
        let bv = Var::from_vec(beta.clone(), c, &d).unwrap();
        let bn = BatchNorm::new_with_momentum(
            c,
            Tensor::zeros(c, DType::F32, &d).unwrap(),
            Tensor::ones(c, DType::F32, &d).unwrap(),
            gv.as_tensor().clone(),
            bv.as_tensor().clone(),
            eps,
            1.0,
        )
        .unwrap();
        let normalised = bn.forward_t(xv.as_tensor(), true).unwrap();
        let want = activate(&normalised, act);
        // The output's error is measured against the magnitude before the
        // activation: a ReLU that zeroes all but a near-zero value must not
        // turn float rounding into a large relative error.
        let pre = flat(&normalised);
        let go = Tensor::from_vec(gout.clone(), dims.as_slice(), &d).unwrap();
        let wg = (want.clone() * &go)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();

        let xf = Var::from_vec(x.clone(), dims.as_slice(), &d).unwrap();
        let gf = Var::from_vec(gamma.clone(), c, &d).unwrap();
        let bf = Var::from_vec(beta.clone(), c, &d).unwrap();
        let (got, stats) =
            batch_norm_train(xf.as_tensor(), gf.as_tensor(), bf.as_tensor(), eps, act).unwrap();
        assert_eq!(got.dims(), dims.as_slice());
        let gg = (got.clone() * &go)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();

        let label = format!("case {case} {dims:?} {act:?}");
        let checks = [
            ("y", flat(&got), flat(&want)),
            (
                "dx",
                flat(gg.get(xf.as_tensor()).unwrap()),
                flat(wg.get(xv.as_tensor()).unwrap()),
            ),
            (
                "dgamma",
                flat(gg.get(gf.as_tensor()).unwrap()),
                flat(wg.get(gv.as_tensor()).unwrap()),
            ),
            (
                "dbeta",
                flat(gg.get(bf.as_tensor()).unwrap()),
                flat(wg.get(bv.as_tensor()).unwrap()),
            ),
            ("mean", stats.mean.clone(), flat(bn.running_mean())),
            (
                "unbiased var",
                stats
                    .var
                    .iter()
                    .map(|v| v * count as f32 / (count as f32 - 1.0))
                    .collect(),
                flat(bn.running_var()),
            ),
        ];
        for (what, g, w) in checks {
            let e = if what == "y" {
                rel_err_to(&g, &w, &pre)
            } else {
                rel_err(&g, &w)
            };
            assert!(e < 1e-4, "{label}: {what} rel err {e}\n got {g:?}\nwant {w:?}\nx {x:?} gamma {gamma:?} beta {beta:?}");
        }
        assert_eq!(stats.count, count, "{label}");
        seen.insert((dims.len(), act as u8));
        checked += 1;
    }
    assert!(
        checked >= 40,
        "only {checked} of 60 cases were large enough"
    );
    assert_eq!(seen.len(), 6, "rank x activation combinations: {seen:?}");
}

#[test]
fn fused_add_relu_matches_candle() {
    let d = Device::Cpu;
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    for case in 0..20 {
        let dims = random_dims(&mut rng);
        let n: usize = dims.iter().product();
        let a: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        let b: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        let gout: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        let go = Tensor::from_vec(gout, dims.as_slice(), &d).unwrap();
        let run = |fused: bool| {
            let av = Var::from_vec(a.clone(), dims.as_slice(), &d).unwrap();
            let bv = Var::from_vec(b.clone(), dims.as_slice(), &d).unwrap();
            let y = if fused {
                add_relu(av.as_tensor(), bv.as_tensor()).unwrap()
            } else {
                (av.as_tensor() + bv.as_tensor()).unwrap().relu().unwrap()
            };
            let g = (y.clone() * &go)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            (
                flat(&y),
                flat(g.get(av.as_tensor()).unwrap()),
                flat(g.get(bv.as_tensor()).unwrap()),
            )
        };
        let (y, ga, gb) = run(true);
        let (wy, wa, wb) = run(false);
        for (what, g, w) in [("y", y, wy), ("da", ga, wa), ("db", gb, wb)] {
            let e = rel_err(&g, &w);
            assert!(e < 1e-6, "case {case} {dims:?}: {what} rel err {e}");
        }
    }
}

#[test]
fn fused_ops_refuse_what_they_cannot_run() {
    let d = Device::Cpu;
    let x = Tensor::zeros((2, 3, 4, 4), DType::F64, &d).unwrap();
    let g = Tensor::ones(3, DType::F32, &d).unwrap();
    let e = batch_norm_train(&x, &g, &g, 1e-5, Activation::Relu).unwrap_err();
    assert!(e.to_string().contains("F64"), "{e}");
    let x = Tensor::zeros((2, 4, 4, 4), DType::F32, &d).unwrap();
    let e = batch_norm_train(&x, &g, &g, 1e-5, Activation::Relu).unwrap_err();
    assert!(e.to_string().contains("4 channels"), "{e}");
    let y = Tensor::zeros((2, 4, 4, 3), DType::F32, &d).unwrap();
    assert!(add_relu(&x, &y).is_err());
}

#[test]
fn eval_batch_norm_is_candles_bit_for_bit() {
    let d = Device::Cpu;
    let mut rng = ChaCha8Rng::seed_from_u64(17);
    let acts = [Activation::Identity, Activation::Relu, Activation::Relu6];
    let mut seen = std::collections::HashSet::new();
    for case in 0..30 {
        let dims = random_dims(&mut rng);
        let act = acts[case % 3];
        let c = dims[1];
        let x = values(&mut rng, &dims);
        let per = |rng: &mut ChaCha8Rng, lo: f32, hi: f32| -> Vec<f32> {
            (0..c).map(|_| rng.random_range(lo..hi)).collect()
        };
        let (mean, var) = (per(&mut rng, -6.0, 6.0), per(&mut rng, 0.0, 9.0));
        let (gamma, beta) = (per(&mut rng, -2.0, 2.0), per(&mut rng, -1.0, 4.0));
        let gout: Vec<f32> = (0..x.len())
            .map(|_| rng.random_range(-1.0f32..1.0))
            .collect();
        let go = Tensor::from_vec(gout, dims.as_slice(), &d).unwrap();
        let t = |v: &[f32]| Tensor::from_vec(v.to_vec(), c, &d).unwrap();
        let run = |fused: bool| {
            let xv = Var::from_vec(x.clone(), dims.as_slice(), &d).unwrap();
            let (gv, bv) = (
                Var::from_tensor(&t(&gamma)).unwrap(),
                Var::from_tensor(&t(&beta)).unwrap(),
            );
            let y = if fused {
                let stats = (&t(&mean), &t(&var));
                batch_norm_eval(
                    xv.as_tensor(),
                    stats,
                    (gv.as_tensor(), bv.as_tensor()),
                    1e-5,
                    act,
                )
                .unwrap()
            } else {
                let bn = BatchNorm::new(
                    c,
                    t(&mean),
                    t(&var),
                    gv.as_tensor().clone(),
                    bv.as_tensor().clone(),
                    1e-5,
                )
                .unwrap();
                activate(&bn.forward_t(xv.as_tensor(), false).unwrap(), act)
            };
            let grads = (y.clone() * &go)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            let grad = |v: &Var| flat(grads.get(v.as_tensor()).unwrap());
            (flat(&y), grad(&xv), grad(&gv), grad(&bv))
        };
        let (got, want) = (run(true), run(false));
        let label = format!("case {case} {dims:?} {act:?}");
        assert_eq!(got.0, want.0, "{label}: output");
        for (what, g, w) in [
            ("dx", &got.1, &want.1),
            ("dgamma", &got.2, &want.2),
            ("dbeta", &got.3, &want.3),
        ] {
            let e = rel_err(g, w);
            assert!(e < 1e-5, "{label}: {what} rel err {e}");
        }
        seen.insert((dims.len(), act as u8));
    }
    assert_eq!(seen.len(), 6, "rank x activation combinations: {seen:?}");
    // Running statistics of the wrong length are refused, naming them.
    let x = Tensor::zeros((2, 3, 4, 4), DType::F32, &d).unwrap();
    let (ok, short) = (
        Tensor::ones(3, DType::F32, &d).unwrap(),
        Tensor::ones(2, DType::F32, &d).unwrap(),
    );
    let e = batch_norm_eval(&x, (&ok, &short), (&ok, &ok), 1e-5, Activation::Relu).unwrap_err();
    assert!(e.to_string().contains("variance"), "{e}");
}

/// The CUDA ops, handed CPU tensors (or called in a build without CUDA),
/// say what they need instead of running.
#[test]
fn cuda_ops_refuse_cpu_tensors_with_a_clear_error() {
    use selfsup_kernels::{
        batch_norm_train_cuda, conv_bn_train_cuda, cuda_fused_supported, ema_update_cuda,
        fused_conv_bn_cuda_supported, Conv2dParams,
    };
    let d = Device::Cpu;
    let x = Tensor::zeros((2, 3, 4, 4), DType::F32, &d).unwrap();
    let w = Tensor::zeros((3, 3, 3, 3), DType::F32, &d).unwrap();
    let g = Tensor::ones(3, DType::F32, &d).unwrap();
    let p = Conv2dParams {
        stride: 1,
        padding: 1,
        groups: 1,
    };
    assert!(!cuda_fused_supported(&x));
    assert!(!fused_conv_bn_cuda_supported(&x, &w, p));
    let e = batch_norm_train_cuda(&x, &g, &g, 1e-5, Activation::Relu).unwrap_err();
    assert!(
        e.to_string()
            .contains("fused CUDA batch norm runs on a GPU"),
        "{e}"
    );
    let e = conv_bn_train_cuda(&x, &w, (&g, &g), None, p, (1e-5, Activation::Relu)).unwrap_err();
    assert!(
        e.to_string().contains("conv + batch norm runs on one GPU"),
        "{e}"
    );
    let e = ema_update_cuda(&g, &g, 0.9, 0.1).unwrap_err();
    assert!(e.to_string().contains("moving average on CUDA"), "{e}");
}
