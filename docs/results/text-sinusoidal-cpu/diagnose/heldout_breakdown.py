"""Held-out masked-token top-1 of a `cargo xtask text` checkpoint, split by
what the model saw at the position: `[MASK]`, a random token, or the token
itself (BERT's 80/10/10), and by whether the answer is one of the 100 most
frequent held-out tokens. Beside it, a left-bigram predictor (the most
frequent training successor of the token to the left) on the same kind of
draw. Needs torch, transformers and tokenizers.

    python heldout_breakdown.py CHECKPOINT_DIR [REPO_ROOT]

The held-out text is cut as the trainer cuts it (the book's last 10 % of
paragraphs, 126-token windows); the masks are this script's own (seed 0,
2 passes), so the overall top-1 is close to, not equal to, report.json's.
"""
import collections
import random
import sys

import torch
from tokenizers import Tokenizer
from transformers import BertForMaskedLM

CLS, SEP, MASK, SPECIALS = 2, 3, 4, 5


def paragraphs(path):
    text = open(path, encoding="utf-8").read()
    blocks = text.split("\n\n") if "\n\n" in text else text.split("\n")
    return [p for p in (" ".join(b.split()) for b in blocks) if p]


def ids_of(tok, paras):
    out = []
    for e in tok.encode_batch(paras, add_special_tokens=False):
        out += e.ids
    return out


def main():
    ck = sys.argv[1]
    root = sys.argv[2] if len(sys.argv) > 2 else "."
    torch.set_num_threads(2)
    tok = Tokenizer.from_file(ck + "/tokenizer.json")
    model = BertForMaskedLM.from_pretrained(ck).eval()
    vocab = model.config.vocab_size
    book = paragraphs(root + "/data/text/rust-book.txt")
    n_held = round(len(book) * 0.1)
    held = ids_of(tok, book[len(book) - n_held:])
    train = ids_of(tok, book[: len(book) - n_held] + paragraphs(root + "/data/rust-docs/rust-docs.txt"))
    successors = collections.defaultdict(collections.Counter)
    for a, b in zip(train, train[1:]):
        successors[a][b] += 1
    most = collections.Counter(train).most_common(1)[0][0]
    bigram = {a: c.most_common(1)[0][0] for a, c in successors.items()}
    top = {t for t, _ in collections.Counter(held).most_common(100)}
    windows = [held[i:i + 126] for i in range(0, len(held), 126)]
    rng = random.Random(0)
    stats = collections.defaultdict(lambda: [0, 0])
    for _ in range(2):
        for w in windows:
            seq = [CLS] + w + [SEP]
            inp, pos, kind = list(seq), [], []
            for i in range(1, len(seq) - 1):
                if rng.random() < 0.15:
                    r = rng.random()
                    if r < 0.8:
                        inp[i], k = MASK, "mask"
                    elif r < 0.9:
                        inp[i], k = rng.randrange(SPECIALS, vocab), "random"
                    else:
                        k = "kept"
                    pos.append(i)
                    kind.append(k)
            if not pos:
                continue
            with torch.no_grad():
                pred = model(input_ids=torch.tensor([inp])).logits[0][pos].argmax(-1).tolist()
            for p, k, guess in zip(pos, kind, pred):
                truth = seq[p]
                group = "top100" if truth in top else "rest"
                for key in ("all", k, f"{k}/{group}"):
                    stats[key][0] += int(guess == truth)
                    stats[key][1] += 1
                if k == "mask" and p > 1:
                    stats["left-bigram, mask"][0] += int(bigram.get(seq[p - 1], most) == truth)
                    stats["left-bigram, mask"][1] += 1
    for key in sorted(stats):
        hit, n = stats[key]
        print(f"{key:18s} {100 * hit / n:6.2f} % of {n}")


if __name__ == "__main__":
    main()
