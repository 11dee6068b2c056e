//! The two other objectives end to end on a slice of the shipped corpus:
//! `mlm,nsp` writes a `BertForPreTraining` checkpoint whose next-sentence
//! head answers `next_probability`; `denoise` learns to copy the input
//! and fill some spans. Ignored unless `transformers` is
//! installed: `transformers` loads the NSP checkpoint as
//! `BertForPreTraining` with both heads' logits equal to ours, and still as
//! `BertForMaskedLM`.

mod common;

use candle_core::{DType, Device, Tensor};
use selfsup_text::train::{self, TextConfig};

fn tiny(objectives: &str, steps: usize) -> TextConfig {
    common::tiny(objectives, steps, steps)
}

#[test]
fn nsp_trains_a_pretraining_checkpoint() {
    let c = common::small_corpus();
    let dir = tempfile::tempdir().unwrap();
    let r = train::run(
        &c,
        &tiny("mlm,nsp", 150),
        dir.path(),
        false,
        &Device::Cpu,
        true,
    )
    .unwrap();
    let nsp = r.nsp.expect("an nsp run reports next-sentence accuracy");
    assert!(
        nsp.pairs > 100 && nsp.is_next > 20 && nsp.is_next < nsp.pairs - 20,
        "{nsp:?}"
    );
    assert!(r.nsp_untrained.is_some() && r.denoise.is_none());
    // The masked-token side learns too.
    assert!(r.heldout.perplexity < r.baselines["untrained"].perplexity);
    let ck = dir.path().join("checkpoint");
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(ck.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["architectures"][0], "BertForPreTraining");
    let a = train::load(&ck, &Device::Cpu).unwrap();
    let p = train::next_probability(
        &a,
        "A value has an owner.",
        "The owner drops it.",
        &Device::Cpu,
    )
    .unwrap();
    assert!(p > 0.0 && p < 1.0, "{p}");
    // An MLM-only checkpoint has no head to ask.
    let plain = tempfile::tempdir().unwrap();
    train::run(&c, &tiny("mlm", 5), plain.path(), false, &Device::Cpu, true).unwrap();
    let m = train::load(&plain.path().join("checkpoint"), &Device::Cpu).unwrap();
    let e = train::next_probability(&m, "A.", "B.", &Device::Cpu).unwrap_err();
    assert!(e.to_string().contains("no next-sentence head"), "{e}");
}

#[test]
fn denoising_learns_to_copy_and_fill() {
    let c = common::small_corpus();
    let dir = tempfile::tempdir().unwrap();
    let r = train::run(
        &c,
        &tiny("denoise", 200),
        dir.path(),
        false,
        &Device::Cpu,
        true,
    )
    .unwrap();
    let d = r.denoise.expect("a denoise run reports reconstruction");
    // 15 % corrupted: copying is right on ~85 % of the tokens.
    assert!((d.copy_accuracy - 0.85).abs() < 0.02, "{d:?}");
    // From nothing (an untrained model predicts at random) this tiny model
    // learns to copy the input through 200 steps, and fills a few spans.
    assert!(d.accuracy > 0.97 * d.copy_accuracy, "{d:?}");
    assert!(d.span_accuracy > 0.01, "{d:?}");
    assert!(d.corrupted > 0 && d.tokens > d.corrupted);
}

#[test]
#[ignore = "needs python3 with transformers and torch"]
fn transformers_loads_the_nsp_checkpoint_with_both_heads() {
    let c = common::small_corpus();
    let dir = tempfile::tempdir().unwrap();
    train::run(
        &c,
        &tiny("mlm,nsp", 30),
        dir.path(),
        false,
        &Device::Cpu,
        true,
    )
    .unwrap();
    let ck = dir.path().join("checkpoint");
    let a = train::load(&ck, &Device::Cpu).unwrap();
    let ids = [2u32, 40, 50, 4, 3, 60, 70, 3];
    let types = [0u32, 0, 0, 0, 0, 1, 1, 1];
    let x = Tensor::new(&[ids], &Device::Cpu).unwrap();
    let ty = Tensor::new(&[types], &Device::Cpu).unwrap();
    let mask = Tensor::ones((1, 8), DType::U32, &Device::Cpu).unwrap();
    let h = a.model.encode_typed(&x, &mask, Some(&ty)).unwrap();
    let tokens: Vec<Vec<f32>> = a
        .model
        .logits(&h.squeeze(0).unwrap())
        .unwrap()
        .to_vec2()
        .unwrap();
    let next: Vec<f32> = a
        .model
        .nsp_logits(&h)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let script = format!(
        "import json, torch\nfrom transformers import BertForPreTraining, BertForMaskedLM\n\
         m = BertForPreTraining.from_pretrained({ck:?}).eval()\n\
         ids = torch.tensor([{ids:?}]); ty = torch.tensor([{types:?}])\n\
         with torch.no_grad():\n    o = m(ids, token_type_ids=ty)\n\
         mlm = BertForMaskedLM.from_pretrained({ck:?}).eval()\n\
         with torch.no_grad():\n    o2 = mlm(ids, token_type_ids=ty)\n\
         print(json.dumps([o.prediction_logits[0].tolist(), o.seq_relationship_logits[0].tolist(), o2.logits[0].tolist()]))\n",
        ck = ck.display().to_string(),
    );
    let (theirs, their_next, as_mlm): (Vec<Vec<f32>>, Vec<f32>, Vec<Vec<f32>>) =
        common::python_json(&script);
    let close = |a: f32, b: f32| (a - b).abs() <= 1e-4 * (1.0 + b.abs());
    assert_eq!(their_next.len(), 2);
    for (a, b) in next.iter().zip(&their_next) {
        assert!(close(*a, *b), "next-sentence logit {a} vs {b}");
    }
    for t in [&theirs, &as_mlm] {
        // Same shape first: zip alone would pass on a short answer.
        assert_eq!(t.len(), tokens.len(), "positions");
        for (r, tr) in tokens.iter().zip(t) {
            assert_eq!(r.len(), tr.len(), "vocabulary");
            for (a, b) in r.iter().zip(tr) {
                assert!(close(*a, *b), "token logit {a} vs {b}");
            }
        }
    }
}
