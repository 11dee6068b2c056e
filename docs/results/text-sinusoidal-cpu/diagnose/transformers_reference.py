"""The former `cargo xtask text` default recipe in `transformers`: a
`BertForMaskedLM` with a checkpoint's config (BERT's 0.02 initialisation
unless --init-range says otherwise, positions drawn at random as
transformers does) trained on the same tokens — the book's first 90 % of
paragraphs plus the shipped documentation, cut into 126-token windows —
with 40 % of the tokens chosen (80/10/10), the vocabulary head on the
chosen positions only, AdamW (lr 2e-3, betas 0.9/0.999, eps 1e-6, weight
decay 0.01 except biases and LayerNorm), 10 % linear warmup then linear
decay, gradient norm clipped at 1, batch 32, 1,500 steps, 2 threads.
Writes a checkpoint the two other scripts read. Needs torch, transformers
and tokenizers; about 7 minutes on 2 cores.

    python transformers_reference.py CHECKPOINT_DIR OUT_DIR [REPO_ROOT] [--init-range 0.02]
"""
import argparse
import random
import shutil

import torch
from tokenizers import Tokenizer
from transformers import BertConfig, BertForMaskedLM

from heldout_breakdown import ids_of, paragraphs

CLS, SEP, MASK, SPECIALS = 2, 3, 4, 5


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("checkpoint")
    ap.add_argument("out")
    ap.add_argument("root", nargs="?", default=".")
    ap.add_argument("--init-range", type=float, default=0.02)
    ap.add_argument("--steps", type=int, default=1500)
    a = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(2)
    tok = Tokenizer.from_file(a.checkpoint + "/tokenizer.json")
    book = paragraphs(a.root + "/data/text/rust-book.txt")
    train = book[: len(book) - round(len(book) * 0.1)]
    ids = ids_of(tok, train + paragraphs(a.root + "/data/rust-docs/rust-docs.txt"))
    seqs = [[CLS] + ids[i:i + 126] + [SEP] for i in range(0, len(ids), 126)]
    cfg = BertConfig.from_pretrained(a.checkpoint)
    cfg.initializer_range = a.init_range
    model = BertForMaskedLM(cfg)
    decays = lambda n: n.endswith("weight") and "LayerNorm" not in n
    groups = [
        {"params": [p for n, p in model.named_parameters() if decays(n)], "weight_decay": 0.01},
        {"params": [p for n, p in model.named_parameters() if not decays(n)], "weight_decay": 0.0},
    ]
    opt = torch.optim.AdamW(groups, lr=2e-3, betas=(0.9, 0.999), eps=1e-6)
    warm = round(a.steps * 0.1)
    rate = lambda s: (s + 1) / warm if s < warm else max(0.0, 1 - (s - warm) / max(1, a.steps - warm))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, rate)
    rng, order = random.Random(0), []
    for step in range(a.steps):
        if not order:
            order = list(range(len(seqs)))
            rng.shuffle(order)
        batch = [seqs[order.pop()] for _ in range(32) if order]
        t = max(len(s) for s in batch)
        inp = torch.zeros(len(batch), t, dtype=torch.long)
        att = torch.zeros(len(batch), t, dtype=torch.long)
        lab = torch.full((len(batch), t), -100, dtype=torch.long)
        for i, s in enumerate(batch):
            x = list(s)
            for j in range(1, len(s) - 1):
                if rng.random() < 0.4:
                    lab[i, j] = s[j]
                    r = rng.random()
                    if r < 0.8:
                        x[j] = MASK
                    elif r < 0.9:
                        x[j] = rng.randrange(SPECIALS, cfg.vocab_size)
            inp[i, : len(s)] = torch.tensor(x)
            att[i, : len(s)] = 1
        hidden = model.bert(input_ids=inp, attention_mask=att).last_hidden_state
        chosen = lab != -100
        loss = torch.nn.functional.cross_entropy(model.cls(hidden[chosen]), lab[chosen])
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if (step + 1) % 250 == 0:
            print(f"step {step + 1}: loss {loss.item():.3f}", flush=True)
    model.save_pretrained(a.out)
    shutil.copy(a.checkpoint + "/tokenizer.json", a.out + "/tokenizer.json")


if __name__ == "__main__":
    main()
