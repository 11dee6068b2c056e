"""Mean attention weight of each layer and head of a `cargo xtask text`
checkpoint on the tokens 2 and 1 before, itself, and 1 and 2 after, over
one 128-token stretch of the book's held-out text with 15 % of it masked;
a head that ignores position puts about 1/128 (0.008) on each. Also the
predictions at the masks. Needs torch, transformers and tokenizers.

    python attention_offsets.py CHECKPOINT_DIR [REPO_ROOT]
"""
import collections
import random
import sys

import torch
from tokenizers import Tokenizer
from transformers import BertForMaskedLM


def main():
    ck = sys.argv[1]
    root = sys.argv[2] if len(sys.argv) > 2 else "."
    tok = Tokenizer.from_file(ck + "/tokenizer.json")
    model = BertForMaskedLM.from_pretrained(ck, attn_implementation="eager").eval()
    lines = open(root + "/data/text/rust-book.txt", encoding="utf-8").read().split("\n")
    ids = [2] + tok.encode(" ".join(lines[-200:-150]), add_special_tokens=False).ids[:126] + [3]
    rng = random.Random(1)
    inp = list(ids)
    pos = [i for i in range(1, len(ids) - 1) if rng.random() < 0.15]
    for p in pos:
        inp[p] = 4
    with torch.no_grad():
        out = model(input_ids=torch.tensor([inp]), output_attentions=True)
    guesses = out.logits[0].argmax(-1)
    print("at the masks:", collections.Counter(tok.id_to_token(int(guesses[p])) for p in pos).most_common(8))
    print("the answers:", [tok.id_to_token(ids[p]) for p in pos])
    for layer, att in enumerate(out.attentions):
        for head in range(att.shape[1]):
            a = att[0, head]
            means = {k: round(float(torch.diagonal(a, offset=k).mean()), 3) for k in (-2, -1, 0, 1, 2)}
            print(f"layer {layer} head {head}: {means}")


if __name__ == "__main__":
    main()
