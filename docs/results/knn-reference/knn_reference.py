"""An independent kNN-on-random-features reference for selfsup's `knn`
protocol, in PyTorch: the embedded Fashion-MNIST (first 10,000 training
images, full test set), the default ConvNet (widths 16, 32, 64; two 3x3
conv + BatchNorm + ReLU per stage; 2x2 max-pool between stages; the
globally average-pooled output of every stage, concatenated), eval-mode
BatchNorm, L2-normalised features, cosine kNN with 1 + similarity votes,
k among 1, 3, 5, 10, 20 by leave-one-out on the 10 labeled images per
class (ties to the smaller k). Written from the protocol's description,
not from selfsup's code.

    python3 knn_reference.py [--data ../../../data/fashion-mnist] [--seeds 0,1,2]
    python3 knn_reference.py --check DIR

`--check DIR` reads what `cargo run --release --example export_features
-- DIR SEED` wrote (selfsup's features, labels, labeled indices,
normalisation and encoder weights) and reports (1) this file's kNN on
selfsup's features and (2) how far this file's network, given selfsup's
weights, is from selfsup's features.
"""
import argparse
import gzip
import json
import struct

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


def idx(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    magic, n = struct.unpack(">II", data[:8])
    if magic == 2051:
        h, w = struct.unpack(">II", data[8:16])
        return np.frombuffer(data, np.uint8, offset=16).reshape(n, 1, h, w)
    return np.frombuffer(data, np.uint8, offset=8)


class ConvNet(nn.Module):
    def __init__(self, widths=(16, 32, 64), depth=2, init="torch"):
        super().__init__()
        self.stages = nn.ModuleList()
        cin = 1
        for w in widths:
            layers = []
            for _ in range(depth):
                conv = nn.Conv2d(cin, w, 3, padding=1, bias=False)
                if init == "kaiming":
                    nn.init.kaiming_normal_(conv.weight, mode="fan_in", nonlinearity="relu")
                layers += [conv, nn.BatchNorm2d(w), nn.ReLU()]
                cin = w
            self.stages.append(nn.Sequential(*layers))

    def forward(self, x):
        pooled = []
        for i, stage in enumerate(self.stages):
            x = stage(x)
            pooled.append(x.mean(dim=(2, 3)))
            if i + 1 < len(self.stages):
                x = F.max_pool2d(x, 2)
        return torch.cat(pooled, 1)


def votes(sim, ref_y, k, exclude_self):
    preds = []
    for q in range(sim.shape[0]):
        row = sim[q].copy()
        order = [j for j in np.argsort(-row, kind="stable") if not (exclude_self and j == q)]
        v = np.zeros(10)
        for j in order[:k]:
            v[ref_y[j]] += 1.0 + row[j]
        preds.append(int(np.argmax(v)))
    return np.array(preds)


def knn(train_x, train_y, test_x, ks=(1, 3, 5, 10, 20)):
    tr = train_x / np.linalg.norm(train_x, axis=1, keepdims=True)
    te = test_x / np.linalg.norm(test_x, axis=1, keepdims=True)
    self_sim = tr @ tr.T
    best = (-1.0, ks[0])
    for k in ks:
        if k >= len(train_y):
            continue
        acc = (votes(self_sim, train_y, k, True) == train_y).mean()
        if acc > best[0]:
            best = (acc, k)
    k = best[1]
    return votes(te @ tr.T, train_y, k, False), k


def safetensors(path):
    raw = open(path, "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8 : 8 + n])
    out = {}
    for name, v in header.items():
        if name != "__metadata__":
            start, end = v["data_offsets"]
            out[name] = np.frombuffer(raw[8 + n + start : 8 + n + end], "<f4").reshape(v["shape"])
    return out


def check(d, data):
    tr, te = np.load(f"{d}/train_x.npy"), np.load(f"{d}/test_x.npy")
    ty, yte = np.load(f"{d}/train_y.npy").astype(int), np.load(f"{d}/test_y.npy").astype(int)
    pred, k = knn(tr, ty, te)
    print(f"this file's kNN on selfsup's features: {100 * (pred == yte).mean():.2f} % (k = {k})")
    w = safetensors(f"{d}/encoder.safetensors")
    net = ConvNet().eval()
    for i, stage in enumerate(net.stages):
        for j in range(len(stage) // 3):
            p = f"backbone.stages.{i}.{j}"
            conv, bn = stage[3 * j], stage[3 * j + 1]
            conv.weight.data = torch.tensor(w[p + ".conv.weight"].copy())
            for name in ("weight", "bias", "running_mean", "running_var"):
                getattr(bn, name).data = torch.tensor(w[f"{p}.bn.{name}"].copy())
    mean, std = np.load(f"{d}/norm.npy")
    xtr = idx(f"{data}/train-images-idx3-ubyte.gz")[np.load(f"{d}/labeled.npy")]
    with torch.no_grad():
        f = net(torch.tensor(((xtr / 255.0) - mean) / std, dtype=torch.float32)).numpy()
    print(f"this file's network with selfsup's weights: max |feature difference| {np.abs(f - tr).max():.2e}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="../../../data/fashion-mnist")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--check")
    a = ap.parse_args()
    torch.set_num_threads(2)
    if a.check:
        return check(a.check, a.data)
    xtr = idx(f"{a.data}/train-images-idx3-ubyte.gz")
    ytr = idx(f"{a.data}/train-labels-idx1-ubyte.gz")
    xte = idx(f"{a.data}/t10k-images-idx3-ubyte.gz")
    yte = idx(f"{a.data}/t10k-labels-idx1-ubyte.gz")
    mean, std = (xtr / 255.0).mean(), (xtr / 255.0).std()
    norm = lambda x: torch.tensor(((x / 255.0) - mean) / std, dtype=torch.float32)
    for init in ("torch", "kaiming"):
        accs = []
        for seed in [int(s) for s in a.seeds.split(",")]:
            rng = np.random.default_rng(seed)
            labeled = np.concatenate(
                [rng.choice(np.flatnonzero(ytr == c), 10, replace=False) for c in range(10)]
            )
            torch.manual_seed(seed)
            net = ConvNet(init=init).eval()
            with torch.no_grad():
                f_tr = net(norm(xtr[labeled])).numpy()
                f_te = torch.cat([net(norm(xte[i : i + 1000])) for i in range(0, 10000, 1000)]).numpy()
            pred, k = knn(f_tr, ytr[labeled], f_te)
            accs.append((pred == yte).mean())
            print(f"init {init} seed {seed}: kNN {100 * accs[-1]:.2f} % (k = {k})")
        print(f"init {init}: kNN {100 * np.mean(accs):.2f} % ± {100 * np.std(accs, ddof=1):.2f}")


if __name__ == "__main__":
    main()
