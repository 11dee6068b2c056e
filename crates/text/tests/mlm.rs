//! End to end on a slice of the shipped corpus: train, report, reload the
//! checkpoint, resume, fill; and (ignored unless `transformers` is
//! installed) load the checkpoint with Hugging Face's `BertForMaskedLM`.

mod common;

use candle_core::{Device, Tensor};
use selfsup_text::train::{self, TextConfig};

fn tiny() -> TextConfig {
    common::tiny("mlm", 200, 100)
}

#[test]
fn trains_reports_reloads_and_resumes() {
    let c = common::small_corpus();
    let dir = tempfile::tempdir().unwrap();
    let cfg = tiny();
    let r = train::run(&c, &cfg, dir.path(), false, &Device::Cpu, true).unwrap();
    // The report contract.
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("report.json")).unwrap()).unwrap();
    for k in ["top1", "top1_at_mask", "top5", "perplexity"] {
        assert!(json["heldout"][k].is_number(), "heldout.{k}");
        assert!(json["baselines"]["unigram"][k].is_number());
        assert!(json["baselines"]["untrained"][k].is_number());
    }
    // Learning happened: better than the untrained model, and already
    // past the unigram predictor's perplexity after 200 tiny steps.
    let untrained = &r.baselines["untrained"];
    let unigram = &r.baselines["unigram"];
    assert!(
        r.heldout.perplexity < untrained.perplexity && r.heldout.perplexity < unigram.perplexity,
        "{} vs untrained {} and unigram {}",
        r.heldout.perplexity,
        untrained.perplexity,
        unigram.perplexity
    );
    assert!(r.heldout.top5 > untrained.top5);
    assert_eq!(r.history.len(), 2);
    let md = std::fs::read_to_string(dir.path().join("report.md")).unwrap();
    let at_mask = 100.0 * r.heldout.top1_at_mask.unwrap();
    let row = format!(
        "| **trained BERT** | {:.2}% | {at_mask:.2}% |",
        100.0 * r.heldout.top1
    );
    assert!(md.contains(&row), "{row} not in\n{md}");
    // The checkpoint reloads: re-evaluated, it gives the reported held-out
    // numbers (a model that loaded wrong or not at all would not).
    let ck = dir.path().join("checkpoint");
    for f in ["model.safetensors", "config.json", "tokenizer.json"] {
        assert!(ck.join(f).exists(), "{f}");
    }
    let a = train::load(&ck, &Device::Cpu).unwrap();
    let held: Vec<Vec<u32>> = c
        .heldout
        .iter()
        .map(|p| selfsup_text::tokenize::encode(&a.tokenizer, p).unwrap())
        .collect();
    let seqs = selfsup_text::mlm::sequences(&held, cfg.max_len);
    let vocab = a.model.config.vocab_size;
    let (m, _) = train::evaluate(&a.model, &seqs, None, vocab, &cfg, &Device::Cpu).unwrap();
    assert!((m.perplexity - r.heldout.perplexity).abs() < 1e-3 * r.heldout.perplexity);
    // The held-out masks follow eval_mask_rate, not the training rate.
    let eval_at = |mask_rate, eval_mask_rate| {
        let c = TextConfig {
            mask_rate,
            eval_mask_rate,
            ..cfg.clone()
        };
        train::evaluate(&a.model, &seqs, None, vocab, &c, &Device::Cpu)
            .unwrap()
            .0
    };
    assert_eq!(eval_at(0.5, cfg.eval_mask_rate), m);
    assert!(eval_at(cfg.mask_rate, 0.3).tokens > m.tokens * 3 / 2);
    // Interrupted after step 73 and resumed: the same model as 200 straight
    // steps (order, masking and optimiser state all continue exactly).
    let again = tempfile::tempdir().unwrap();
    train::run_until(&c, &cfg, again.path(), false, Some(73), &Device::Cpu, true).unwrap();
    let resumed = train::run(&c, &cfg, again.path(), true, &Device::Cpu, true).unwrap();
    assert_eq!(resumed.heldout, r.heldout, "resume diverged");
    assert_eq!(resumed.history.last().unwrap().step, 200);
    // The baselines too: the untrained row is the same initialisation,
    // position table included, re-drawn.
    assert_eq!(resumed.baselines, r.baselines);
    // Resuming under other settings is refused.
    let other = TextConfig {
        lr: 1e-3,
        ..cfg.clone()
    };
    let e = train::run(&c, &other, again.path(), true, &Device::Cpu, true)
        .expect_err("settings differ")
        .to_string();
    assert!(e.contains("other settings"), "{e}");
    // Fill.
    let preds = train::fill(&a, "a value has an [MASK].", 5, &Device::Cpu).unwrap();
    assert_eq!(preds.len(), 1);
    assert_eq!(preds[0].len(), 5);
    let total: f64 = preds[0].iter().map(|p| p.1).sum();
    assert!(total > 0.0 && total <= 1.0 + 1e-6);
    assert!(train::fill(&a, "no mask here", 5, &Device::Cpu).is_err());
}

/// Run with `cargo test -p selfsup-text -- --ignored` on a machine where
/// `python3 -c 'import transformers, torch'` works (or point
/// `SELFSUP_PYTHON` at an interpreter that has them, e.g. a virtualenv's).
#[test]
#[ignore = "needs python3 with transformers and torch"]
fn transformers_loads_the_checkpoint_with_the_same_logits() {
    let c = common::small_corpus();
    let dir = tempfile::tempdir().unwrap();
    train::run(&c, &tiny(), dir.path(), false, &Device::Cpu, true).unwrap();
    let ck = dir.path().join("checkpoint");
    let ids = [2u32, 40, 50, 4, 60, 3];
    let a = train::load(&ck, &Device::Cpu).unwrap();
    let x = Tensor::new(&[ids], &Device::Cpu).unwrap();
    let mask = Tensor::ones((1, 6), candle_core::DType::U32, &Device::Cpu).unwrap();
    let ours: Vec<Vec<f32>> = a
        .model
        .forward(&x, &mask)
        .unwrap()
        .squeeze(0)
        .unwrap()
        .to_vec2()
        .unwrap();
    let script = format!(
        "import json, torch\nfrom transformers import BertForMaskedLM\nm = BertForMaskedLM.from_pretrained({:?}).eval()\nwith torch.no_grad():\n    out = m(torch.tensor([{:?}])).logits[0]\nprint(json.dumps(out.tolist()))\n",
        ck.display().to_string(),
        ids
    );
    let theirs: Vec<Vec<f32>> = common::python_json(&script);
    // Same shape first: zip alone would pass on an empty or short answer.
    assert_eq!(theirs.len(), ours.len(), "positions");
    assert!(
        theirs.iter().zip(&ours).all(|(t, o)| t.len() == o.len()),
        "vocabulary"
    );
    for (r, t) in ours.iter().zip(&theirs) {
        for (a, b) in r.iter().zip(t) {
            assert!((a - b).abs() <= 1e-4 * (1.0 + b.abs()), "{a} vs {b}");
        }
    }
}
