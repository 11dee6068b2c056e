//! The BERT with the fused CPU ops (the default) against the same BERT
//! built from Candle ops (`Kernels::Stock`): the same logits and the same
//! gradient for every parameter, on a padded batch, with and without
//! dropout (both paths draw the same seeded masks). Its own test binary:
//! the kernel choice is process-wide.

use candle_core::{Device, Tensor};
use candle_nn::VarMap;
use selfsup_core::params::{max_abs_diff, seeded_var_builder};
use selfsup_kernels::{set_default, Kernels};
use selfsup_text::bert::{BertConfig, BertMlm, Dropout};

#[test]
fn fused_and_stock_paths_agree() {
    let map = VarMap::new();
    let vb = seeded_var_builder(&map, 4, &Device::Cpu);
    let m = BertMlm::new(&BertConfig::small(70, 24, 2, 3, 16), vb).unwrap();
    let ids = Tensor::new(
        &[[2u32, 9, 4, 30, 41, 3, 0, 0], [2, 11, 12, 13, 4, 50, 66, 3]],
        &Device::Cpu,
    )
    .unwrap();
    let mask = Tensor::new(
        &[[1u32, 1, 1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1, 1, 1]],
        &Device::Cpu,
    )
    .unwrap();
    let labels = Tensor::new(&[5u32, 13, 40], &Device::Cpu).unwrap();
    let drop = Dropout { p: 0.3, seed: 11 };
    for d in [None, Some(&drop)] {
        check_paths_agree(&map, &m, (&ids, &mask, &labels), d);
    }
    // Dropout changes the training output, and only with a new seed.
    let h = |d: Option<&Dropout>| m.encode_train(&ids, &mask, None, d).unwrap();
    let plain = h(None);
    assert!(max_abs_diff(&plain, &h(Some(&drop))).unwrap() > 1e-3);
    assert_eq!(max_abs_diff(&h(Some(&drop)), &h(Some(&drop))).unwrap(), 0.0);
    assert_eq!(
        max_abs_diff(&plain, &m.encode(&ids, &mask).unwrap()).unwrap(),
        0.0
    );
}

fn check_paths_agree(
    map: &VarMap,
    m: &BertMlm,
    (ids, mask, labels): (&Tensor, &Tensor, &Tensor),
    drop: Option<&Dropout>,
) {
    let run = |k: Kernels| {
        set_default(k);
        let h = m.encode_train(ids, mask, None, drop).unwrap();
        let logits = m.logits_of(&h, &[2, 4, 12]).unwrap();
        let loss = candle_nn::loss::cross_entropy(&logits, labels).unwrap();
        (logits, loss.backward().unwrap())
    };
    let (fast, gf) = run(Kernels::Fast);
    let (stock, gs) = run(Kernels::Stock);
    set_default(Kernels::Fast);
    let d = max_abs_diff(&fast, &stock).unwrap();
    assert!(d < 1e-4, "logits differ by {d} (dropout {drop:?})");
    let data = map.data().lock().unwrap();
    for (name, var) in data.iter() {
        let (a, b) = (gf.get(var).unwrap(), gs.get(var).unwrap());
        let scale = b.abs().unwrap().max_all().unwrap();
        let scale = scale.to_scalar::<f32>().unwrap().max(1e-6);
        let d = max_abs_diff(a, b).unwrap() / scale;
        assert!(
            d < 1e-3,
            "{name}: gradients differ by {d} of their largest ({drop:?})"
        );
    }
}
