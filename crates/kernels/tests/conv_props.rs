//! Property tests: on randomised shapes (odd and non-square sizes, stride 1
//! and 2, padding 0 and 1, dense and depthwise, batches of 1-3 and 5-9), the fast convolution's
//! output and both gradients match a direct-loop reference within 1e-4
//! relative error, and so does Candle's stock op wherever its backward works.
//! With the `cuda` feature and a GPU present, the same cases also run on the
//! GPU against the CPU reference.

use candle_core::{Device, Tensor, Var};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use selfsup_kernels::{conv2d, Conv2dParams, Kernels};

#[derive(Debug, Clone, Copy)]
struct Case {
    b: usize,
    cin: usize,
    cout: usize,
    h: usize,
    w: usize,
    k: usize,
    p: Conv2dParams,
}

/// Direct loops: y, and the gradients of sum(y * g) w.r.t. x and w.
fn reference(c: &Case, x: &[f32], w: &[f32], g: &[f32]) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let Case {
        b,
        cin,
        cout,
        h,
        w: wd,
        k,
        p,
    } = *c;
    let ho = (h + 2 * p.padding - k) / p.stride + 1;
    let wo = (wd + 2 * p.padding - k) / p.stride + 1;
    let cg = cin / p.groups;
    let og = cout / p.groups;
    let mut y = vec![0f32; b * cout * ho * wo];
    let mut gx = vec![0f32; x.len()];
    let mut gw = vec![0f32; w.len()];
    for n in 0..b {
        for o in 0..cout {
            let grp = o / og;
            for i in 0..ho {
                for j in 0..wo {
                    let yi = ((n * cout + o) * ho + i) * wo + j;
                    let mut acc = 0f64;
                    for ci in 0..cg {
                        let cin_idx = grp * cg + ci;
                        for u in 0..k {
                            for v in 0..k {
                                let r = (i * p.stride + u) as isize - p.padding as isize;
                                let s = (j * p.stride + v) as isize - p.padding as isize;
                                if r < 0 || s < 0 || r >= h as isize || s >= wd as isize {
                                    continue;
                                }
                                let xi = ((n * cin + cin_idx) * h + r as usize) * wd + s as usize;
                                let wi = ((o * cg + ci) * k + u) * k + v;
                                acc += f64::from(x[xi]) * f64::from(w[wi]);
                                gx[xi] += g[yi] * w[wi];
                                gw[wi] += g[yi] * x[xi];
                            }
                        }
                    }
                    y[yi] = acc as f32;
                }
            }
        }
    }
    (y, gx, gw)
}

fn rel_err(got: &[f32], want: &[f32]) -> f32 {
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
    let diff = got
        .iter()
        .zip(want)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    diff / scale
}

fn random_case(rng: &mut ChaCha8Rng) -> Case {
    let k = if rng.random_bool(0.75) { 3 } else { 1 };
    let padding = if k == 3 { rng.random_range(0..=1) } else { 0 };
    let stride = rng.random_range(1..=2);
    let depthwise = k == 3 && rng.random_bool(0.35);
    let cin = rng.random_range(1..=6);
    let cout = if depthwise {
        cin
    } else {
        rng.random_range(1..=7)
    };
    // Mostly tiny batches (several images share one GEMM); sometimes larger
    // ones with planes of 256+ outputs (one image per group, cut into bands
    // of output rows, groups in parallel).
    let big = rng.random_bool(0.2);
    let (b, sizes) = if big {
        let sizes = if stride == 2 { 33..=38 } else { 16..=19 };
        (rng.random_range(5..=9), sizes)
    } else {
        (rng.random_range(1..=3), 5..=13)
    };
    Case {
        b,
        cin,
        cout,
        h: rng.random_range(sizes.clone()),
        w: rng.random_range(sizes),
        k,
        p: Conv2dParams {
            stride,
            padding,
            groups: if depthwise { cin } else { 1 },
        },
    }
}

fn values(rng: &mut ChaCha8Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

/// Runs `kernels` on `device`; returns y, dx, dw.
fn run(
    c: &Case,
    x: &[f32],
    w: &[f32],
    g: &[f32],
    kernels: Kernels,
    device: &Device,
) -> candle_core::Result<(Vec<f32>, Vec<f32>, Vec<f32>)> {
    let xv = Var::from_vec(x.to_vec(), (c.b, c.cin, c.h, c.w), device)?;
    let wv = Var::from_vec(w.to_vec(), (c.cout, c.cin / c.p.groups, c.k, c.k), device)?;
    let y = conv2d(xv.as_tensor(), wv.as_tensor(), c.p, kernels)?;
    let gt = Tensor::from_vec(g.to_vec(), y.shape(), device)?;
    let grads = (y.clone() * gt)?.sum_all()?.backward()?;
    let flat = |t: &Tensor| t.flatten_all()?.to_device(&Device::Cpu)?.to_vec1::<f32>();
    Ok((
        flat(&y)?,
        flat(grads.get(xv.as_tensor()).expect("x gradient"))?,
        flat(grads.get(wv.as_tensor()).expect("w gradient"))?,
    ))
}

fn check_device(device: &Device, cases: usize, seed: u64) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut stock_checked = 0;
    let mut kinds = std::collections::HashSet::new();
    for n in 0..cases {
        let c = random_case(&mut rng);
        let ho = (c.h + 2 * c.p.padding - c.k) / c.p.stride + 1;
        let wo = (c.w + 2 * c.p.padding - c.k) / c.p.stride + 1;
        let x = values(&mut rng, c.b * c.cin * c.h * c.w);
        let w = values(&mut rng, c.cout * (c.cin / c.p.groups) * c.k * c.k);
        let g = values(&mut rng, c.b * c.cout * ho * wo);
        let (ry, rgx, rgw) = reference(&c, &x, &w, &g);
        let (y, gx, gw) = run(&c, &x, &w, &g, Kernels::Fast, device)
            .unwrap_or_else(|e| panic!("case {n} {c:?}: {e}"));
        for (what, got, want) in [("y", &y, &ry), ("dx", &gx, &rgx), ("dw", &gw, &rgw)] {
            let e = rel_err(got, want);
            assert!(
                e < 1e-4,
                "fast {what} case {n} {c:?} on {device:?}: rel err {e}"
            );
        }
        kinds.insert((c.p.stride, c.p.padding, c.p.groups > 1, c.h != c.w));
        // Candle's stock backward is wrong for stride 2 on non-square inputs.
        let stock_ok = c.p.stride == 1 || c.h == c.w;
        if stock_ok {
            let (sy, sgx, sgw) = run(&c, &x, &w, &g, Kernels::Stock, device).unwrap();
            for (what, got, want) in [("y", &sy, &ry), ("dx", &sgx, &rgx), ("dw", &sgw, &rgw)] {
                let e = rel_err(got, want);
                assert!(e < 1e-4, "stock {what} case {n} {c:?}: rel err {e}");
            }
            stock_checked += 1;
        }
    }
    assert!(stock_checked > cases / 4, "too few stock comparisons");
    // Every combination of stride, padding, depthwise and non-square showed up.
    assert!(
        kinds.len() >= 12,
        "only {} shape kinds covered",
        kinds.len()
    );
}

#[test]
fn fast_conv_matches_reference_on_random_shapes_cpu() {
    check_device(&Device::Cpu, 120, 7);
}

/// The same check on a 2-thread pool, so the parallel path over image groups
/// (taken when there are at least twice as many groups as threads: the
/// 5-9-image batches with one image per group) runs on any host.
#[test]
fn fast_conv_matches_reference_on_a_two_thread_pool() {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    pool.install(|| check_device(&Device::Cpu, 80, 13));
}

/// Stride-1 convolutions whose output rows are as wide as their input
/// rows ("same" padding) build im2col rows, and add col2im rows back, as
/// contiguous runs of the input plane with the edge columns zeroed. These
/// shapes hit the runs' edges: 3x3 kernels over planes cut into bands,
/// 5x5 kernels with padding 2 (runs shifted by up to two columns, rows
/// narrower than the kernel's reach), 1x1 kernels, and, for contrast,
/// unpadded 3x3 kernels and a 3x5 plane with padding 1, which take the
/// row-by-row path.
#[test]
fn same_padding_runs_match_reference() {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let shapes = [
        (3, 2, 4, 20, 19, 3, 1),
        (2, 3, 2, 9, 11, 5, 2),
        (2, 2, 3, 9, 4, 5, 2),
        (3, 4, 6, 7, 7, 1, 0),
        (4, 3, 5, 17, 16, 3, 0),
        (2, 2, 3, 3, 5, 3, 1),
    ];
    for (b, cin, cout, h, w, k, padding) in shapes {
        let c = Case {
            b,
            cin,
            cout,
            h,
            w,
            k,
            p: Conv2dParams {
                stride: 1,
                padding,
                groups: 1,
            },
        };
        let (ho, wo) = (h + 2 * padding + 1 - k, w + 2 * padding + 1 - k);
        let x = values(&mut rng, b * cin * h * w);
        let wt = values(&mut rng, cout * cin * k * k);
        let g = values(&mut rng, b * cout * ho * wo);
        let (ry, rgx, rgw) = reference(&c, &x, &wt, &g);
        let (y, gx, gw) = run(&c, &x, &wt, &g, Kernels::Fast, &Device::Cpu).unwrap();
        for (what, got, want) in [("y", &y, &ry), ("dx", &gx, &rgx), ("dw", &gw, &rgw)] {
            let e = rel_err(got, want);
            assert!(e < 1e-5, "{what} of {c:?}: rel err {e}");
        }
    }
}

#[test]
#[cfg_attr(
    not(feature = "cuda"),
    ignore = "a CUDA build (`--features cuda`) with a GPU runs this"
)]
fn fast_conv_matches_reference_on_cuda() {
    let d = Device::cuda_if_available(0).expect("CUDA initialises");
    assert!(
        d.is_cuda(),
        "a CUDA build runs this only where a GPU is present"
    );
    // Strict f32: cuDNN's TF32 math would round products to 10-bit
    // mantissas (cuda_props checks that mode against its own tolerance).
    selfsup_kernels::set_conv_tf32(false);
    // Depthwise layers through cuDNN (the default), then this crate's
    // kernels.
    check_device(&d, 120, 11);
    selfsup_kernels::set_depthwise_cudnn(false);
    check_device(&d, 120, 12);
    selfsup_kernels::set_depthwise_cudnn(true);
}

#[test]
fn eval_path_matches_stock_forward_and_tracks_no_graph() {
    let d = Device::Cpu;
    let x = Tensor::randn(0f32, 1.0, (2, 3, 8, 8), &d).unwrap();
    let w = Tensor::randn(0f32, 1.0, (5, 3, 3, 3), &d).unwrap();
    let p = Conv2dParams {
        stride: 1,
        padding: 1,
        groups: 1,
    };
    let a = conv2d(&x, &w, p, Kernels::Fast).unwrap();
    let b = x.conv2d(&w, 1, 1, 1, 1).unwrap();
    assert!(!a.track_op());
    let scale = b
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    let d = (a - b).unwrap().abs().unwrap().max_all().unwrap();
    assert!(d.to_scalar::<f32>().unwrap() / scale < 1e-5);
}

#[test]
fn bad_shapes_are_errors() {
    let d = Device::Cpu;
    let x = Tensor::zeros((1, 4, 8, 8), candle_core::DType::F32, &d).unwrap();
    let w = Tensor::zeros((4, 3, 3, 3), candle_core::DType::F32, &d).unwrap();
    let p = Conv2dParams::default();
    assert!(conv2d(&x, &w, p, Kernels::Fast).is_err());
    let tiny = Tensor::zeros((1, 3, 2, 2), candle_core::DType::F32, &d).unwrap();
    let e = conv2d(&tiny, &w, p, Kernels::Fast).unwrap_err().to_string();
    assert!(e.contains("smaller than the kernel"), "{e}");
    assert_eq!("fast".parse::<Kernels>().unwrap(), Kernels::Fast);
    assert!("turbo".parse::<Kernels>().unwrap_err().contains("turbo"));
    // Sizes from a caller's arguments never wrap: a padding whose padded
    // size or output overflows is an error, not a wrapped allocation, with
    // either implementation and for dense and grouped kernels.
    let x = Tensor::zeros((1, 3, 4, 4), candle_core::DType::F32, &d).unwrap();
    let dw = Tensor::zeros((3, 1, 3, 3), candle_core::DType::F32, &d).unwrap();
    for padding in [usize::MAX / 2, 1 << 33] {
        for (w, groups) in [(&w, 1), (&dw, 3)] {
            let p = Conv2dParams {
                padding,
                groups,
                ..p
            };
            for k in [Kernels::Fast, Kernels::Stock] {
                let e = conv2d(&x, w, p, k).unwrap_err().to_string();
                assert!(e.contains("too large"), "{padding} {groups} {k:?}: {e}");
            }
        }
    }
}
