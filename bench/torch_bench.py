#!/usr/bin/env python3
"""PyTorch side of `cargo xtask bench`: the same training step, same models.

Times the rotation pretext's training step (backbone + 4-way linear head,
cross-entropy, backward, AdamW) and/or SimCLR's (--objectives simclr: two
views per image through the backbone as one batch, Linear-BN-ReLU-Linear
256-128 projector, NT-Xent at 0.2) and/or MAE's (--objectives mae, the ViT only:
75 % of patches masked, width-64 2-block decoder, normalised-pixel loss on the
masked patches) on a device-resident batch of 3x32x32 images
for the backbones selfsup implements, built here layer for layer like
crates/backbones (ConvNet 16-32-64 x2, ResNet-18 with the CIFAR stem,
MobileNetV2 with CIFAR strides, the ViT with 4x4 patches). Model `bert` times `transformers`'
BertForMaskedLM with `cargo xtask text`'s default configuration on its
masked-token step instead (sizes from --bert-*; row `pytorch`: labels -100 off the masked
positions, as a transformers user trains it; row `pytorch-masked`: the MLM
head applied to the masked positions only, as selfsup's trainer does), with
AdamW and global-norm clipping. Prints one JSON object:
{"rows": [{"model", "impl", "objective", "batch", "images_per_s", "spread",
"step_ms", "gpu_mem_mb"}], "torch": version}. `cargo xtask bench` runs it; it
can also be run by hand (see --help).
"""
import argparse
import json
import statistics
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class ConvNet(nn.Module):
    def __init__(self, cin=3, widths=(16, 32, 64), depth=2):
        super().__init__()
        self.stages = nn.ModuleList()
        for w in widths:
            layers = []
            for _ in range(depth):
                layers += [nn.Conv2d(cin, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU()]
                cin = w
            self.stages.append(nn.Sequential(*layers))
        self.dim = sum(widths)

    def forward(self, x):
        pooled = []
        for i, s in enumerate(self.stages):
            x = s(x)
            pooled.append(x.mean((2, 3)))
            if i + 1 < len(self.stages):
                x = F.max_pool2d(x, 2)
        return torch.cat(pooled, 1)


class Basic(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.c1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.b1 = nn.BatchNorm2d(cout)
        self.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.b2 = nn.BatchNorm2d(cout)
        self.short = None
        if stride != 1 or cin != cout:
            self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        h = F.relu(self.b1(self.c1(x)))
        h = self.b2(self.c2(h))
        return F.relu(h + (x if self.short is None else self.short(x)))


class ResNet18(nn.Module):
    def __init__(self, cin=3, width=64):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(cin, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        blocks, c = [], width
        for stage in range(4):
            cout = width << stage
            for b in range(2):
                blocks.append(Basic(c, cout, 2 if stage > 0 and b == 0 else 1))
                c = cout
        self.blocks = nn.Sequential(*blocks)
        self.dim = c

    def forward(self, x):
        return self.blocks(self.stem(x)).mean((2, 3))


def make_divisible(v):
    r = max(8, int(v + 4) // 8 * 8)
    return r + 8 if r < 0.9 * v else r


class Inverted(nn.Module):
    def __init__(self, cin, cout, stride, t):
        super().__init__()
        hid = cin * t
        layers = []
        if t != 1:
            layers += [nn.Conv2d(cin, hid, 1, bias=False), nn.BatchNorm2d(hid), nn.ReLU6()]
        layers += [nn.Conv2d(hid, hid, 3, stride, 1, groups=hid, bias=False), nn.BatchNorm2d(hid), nn.ReLU6(),
                   nn.Conv2d(hid, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.body = nn.Sequential(*layers)
        self.skip = stride == 1 and cin == cout

    def forward(self, x):
        h = self.body(x)
        return h + x if self.skip else h


class MobileNetV2(nn.Module):
    STAGES = [(1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]

    def __init__(self, cin=3, wm=1.0):
        super().__init__()
        c = make_divisible(32 * wm)
        layers = [nn.Conv2d(cin, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU6()]
        for t, ch, n, s in self.STAGES:
            cout = make_divisible(ch * wm)
            for r in range(n):
                layers.append(Inverted(c, cout, s if r == 0 else 1, t))
                c = cout
        self.dim = make_divisible(1280 * max(1.0, wm))
        layers += [nn.Conv2d(c, self.dim, 1, bias=False), nn.BatchNorm2d(self.dim), nn.ReLU6()]
        self.body = nn.Sequential(*layers)

    def forward(self, x):
        return self.body(x).mean((2, 3))


class Block(nn.Module):
    """Pre-LayerNorm transformer block: x + attn(norm1(x)), x + mlp(norm2(x))."""

    def __init__(self, dim, heads, hidden):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.q, self.k, self.v, self.proj = (nn.Linear(dim, dim) for _ in range(4))
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x):
        b, t, d = x.shape
        h = self.norm1(x)
        q, k, v = (l(h).view(b, t, self.heads, d // self.heads).transpose(1, 2) for l in (self.q, self.k, self.v))
        a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, t, d)
        x = x + self.proj(a)
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


def sincos_2d(gh, gw, dim):
    """Fixed positions: rows in the first half, columns in the second (sin then cos)."""
    q = dim // 4
    omega = 1.0 / 10000 ** (torch.arange(q, dtype=torch.float64) / q)

    def enc(pos):
        a = pos[:, None] * omega[None, :]
        return torch.cat([a.sin(), a.cos()], 1)
    rows = torch.arange(gh, dtype=torch.float64).repeat_interleave(gw)
    cols = torch.arange(gw, dtype=torch.float64).repeat(gh)
    return torch.cat([enc(rows), enc(cols)], 1).float()


class ViT(nn.Module):
    """selfsup's default ViT: 4x4 patches, width 128, 4 blocks of 4 heads, MLP 4x, mean-pooled."""

    def __init__(self, cin=3, patch=4, dim=128, depth=4, heads=4, mlp_ratio=4.0, size=32):
        super().__init__()
        self.embed = nn.Conv2d(cin, dim, patch, patch)
        g = size // patch
        self.register_buffer("pos", sincos_2d(g, g, dim))
        self.blocks = nn.Sequential(*(Block(dim, heads, int(dim * mlp_ratio)) for _ in range(depth)))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.dim = dim

    def forward(self, x):
        t = self.embed(x).flatten(2).transpose(1, 2) + self.pos
        return self.norm(self.blocks(t)).mean(1)


class MaeDecoder(nn.Module):
    """selfsup's default MAE decoder: width 64, 2 blocks of 4 heads, a learned mask token."""

    def __init__(self, enc_dim, dim=64, depth=2, heads=4, patch=4, cin=3, size=32):
        super().__init__()
        self.embed = nn.Linear(enc_dim, dim)
        self.mask_token = nn.Parameter(torch.randn(dim) * 0.02)
        g = size // patch
        self.register_buffer("pos", sincos_2d(g, g, dim))
        self.blocks = nn.Sequential(*(Block(dim, heads, 4 * dim) for _ in range(depth)))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pred = nn.Linear(dim, patch * patch * cin)
        self.patch = patch


def mae_loss(vit, dec, x, ratio=0.75):
    """MAE's step: random 25 % of patches through the encoder, mask tokens in the
    decoder, per-patch normalised pixel loss on the masked patches."""
    b, c, h, w = x.shape
    p = dec.patch
    patches = x.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // p) * (w // p), -1)
    tokens = vit.embed(x).flatten(2).transpose(1, 2) + vit.pos
    n, d = tokens.shape[1], tokens.shape[2]
    keep = round(n * (1 - ratio))
    shuffle = torch.rand(b, n, device=x.device).argsort(1)
    restore = shuffle.argsort(1)
    visible = tokens.gather(1, shuffle[:, :keep, None].expand(-1, -1, d))
    y = dec.embed(vit.norm(vit.blocks(visible)))
    full = torch.cat([y, dec.mask_token.expand(b, n - keep, -1)], 1)
    full = full.gather(1, restore[..., None].expand(-1, -1, full.shape[2])) + dec.pos
    pred = dec.pred(dec.norm(dec.blocks(full)))
    mean, var = patches.mean(-1, keepdim=True), patches.var(-1, unbiased=False, keepdim=True)
    target = (patches - mean) / (var + 1e-6).sqrt()
    hidden = torch.ones(b, n, device=x.device)
    hidden[:, :keep] = 0
    hidden = hidden.gather(1, restore)
    return (((pred - target) ** 2).mean(-1) * hidden).sum() / hidden.sum()


MODELS = {"convnet": ConvNet, "resnet18": ResNet18, "mobilenetv2": MobileNetV2, "vit": ViT}


def gpu_mem_mb(device):
    if device.type != "cuda":
        return None
    free, total = torch.cuda.mem_get_info(device)
    return (total - free) / 2**20


def nt_xent(z1, z2, tau):
    """SimCLR's loss: each of the 2N views picks its partner among the other 2N - 1."""
    n = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    sim = z @ z.t() / tau
    sim = sim - 1e9 * torch.eye(2 * n, device=z.device)
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(sim, target)


def row(name, args, device, impl, objective):
    torch.manual_seed(args.seed)
    backbone = MODELS[name]().to(device)
    if objective == "simclr":
        # selfsup-contrastive's default projector: Linear-BN-ReLU-Linear, 256-128.
        head = nn.Sequential(nn.Linear(backbone.dim, 256), nn.BatchNorm1d(256), nn.ReLU(),
                             nn.Linear(256, 128)).to(device)
    elif objective == "mae":
        head = MaeDecoder(backbone.dim).to(device)
    else:
        head = nn.Linear(backbone.dim, 4).to(device)
    params = list(backbone.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=5e-4)
    x = torch.randn(args.batch, 3, 32, 32, device=device)
    y = torch.arange(args.batch, device=device) % 4
    # SimCLR: two views of each image, through the backbone as one batch.
    views = torch.randn(2 * args.batch, 3, 32, 32, device=device)
    backbone.train()
    head.train()

    def loss_fn():
        if objective == "simclr":
            z = head(backbone(views))
            return nt_xent(z[:args.batch], z[args.batch:], 0.2)
        if objective == "mae":
            return mae_loss(backbone, head, x)
        return F.cross_entropy(head(backbone(x)), y)

    def update():
        opt.step()

    rates, phases = timed(args, device, loss_fn, opt, update, args.batch)
    med = statistics.median(rates)
    return {"model": name, "impl": impl, "objective": objective, "batch": args.batch,
            "images_per_s": med, "spread": (max(rates) - min(rates)) / 2, "step_ms": 1e3 * args.batch / med,
            "gflops": None, "gpu_mem_mb": gpu_mem_mb(device), "phases_ms": phases}


def bert_row(args, device, impl):
    """The masked-token training step of BertForMaskedLM, tokens/s."""
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(args.seed)
    cfg = BertConfig(vocab_size=args.bert_vocab, hidden_size=args.bert_hidden,
                     num_hidden_layers=args.bert_layers, num_attention_heads=args.bert_heads,
                     intermediate_size=4 * args.bert_hidden, hidden_act="gelu",
                     hidden_dropout_prob=args.bert_dropout, attention_probs_dropout_prob=0.0,
                     max_position_embeddings=max(128, args.seq_len), type_vocab_size=2,
                     layer_norm_eps=1e-12)
    model = BertForMaskedLM(cfg).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01, eps=1e-6)
    b, t = args.text_batch, args.seq_len
    ids = torch.randint(5, args.bert_vocab, (b, t), device=device)
    ids[:, 0], ids[:, -1] = 2, 3
    chosen = torch.rand(b, t, device=device) < 0.15
    chosen[:, 0] = chosen[:, -1] = False
    labels = torch.where(chosen, ids, torch.full_like(ids, -100))
    inputs = torch.where(chosen, torch.full_like(ids, 4), ids)
    attn = torch.ones_like(ids)

    def loss_fn():
        if impl == "pytorch-masked":
            h = model.bert(input_ids=inputs, attention_mask=attn).last_hidden_state
            logits = model.cls(h[chosen])
            return F.cross_entropy(logits, ids[chosen])
        return model(input_ids=inputs, attention_mask=attn, labels=labels).loss

    def update():
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    rates, phases = timed(args, device, loss_fn, opt, update, b * t)
    med = statistics.median(rates)
    return {"model": "bert", "impl": impl, "objective": "mlm", "batch": b,
            "images_per_s": med / t, "spread": (max(rates) - min(rates)) / 2 / t,
            "step_ms": 1e3 * b * t / med, "gflops": None, "gpu_mem_mb": gpu_mem_mb(device),
            "phases_ms": phases, "tokens_per_s": med, "seq_len": t}


def timed(args, device, loss_fn, opt, update, per_step):
    """Warms up, then times `args.reps` repetitions of `args.steps` training
    steps (loss, backward, `update`): each repetition's rate in `per_step`
    units per second, and the median forward / backward / optimizer
    milliseconds of one more step per repetition, each waited for."""
    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    def step():
        opt.zero_grad(set_to_none=True)
        loss = loss_fn()
        loss.backward()
        update()
        return loss

    for _ in range(args.warmup):
        step().item()
    rates = []
    for _ in range(args.reps):
        sync()
        t0 = time.perf_counter()
        for _ in range(args.steps):
            loss = step()
        loss.item()
        sync()
        rates.append(per_step * args.steps / (time.perf_counter() - t0))
    phases = [[], [], []]
    for _ in range(args.reps):
        opt.zero_grad(set_to_none=True)
        sync()
        t0 = time.perf_counter()
        loss = loss_fn()
        sync()
        t1 = time.perf_counter()
        loss.backward()
        sync()
        t2 = time.perf_counter()
        update()
        sync()
        t3 = time.perf_counter()
        for p, v in zip(phases, (t1 - t0, t2 - t1, t3 - t2)):
            p.append(1e3 * v)
    return rates, {k: statistics.median(v) for k, v in zip(("forward", "backward", "optimizer"), phases)}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--models", default="convnet,resnet18,mobilenetv2")
    p.add_argument("--objectives", default="rotation",
                   help="rotation, simclr and/or mae (the vit only), comma-separated")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--steps", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--text-batch", type=int, default=32, help="sequences per step of the bert rows")
    p.add_argument("--seq-len", type=int, default=128, help="tokens per sequence of the bert rows")
    p.add_argument("--bert-vocab", type=int, default=8000, help="vocabulary of the bert rows")
    p.add_argument("--bert-hidden", type=int, default=128, help="width of the bert rows")
    p.add_argument("--bert-layers", type=int, default=4, help="layers of the bert rows")
    p.add_argument("--bert-heads", type=int, default=2, help="attention heads of the bert rows")
    p.add_argument("--bert-dropout", type=float, default=0.1,
                   help="hidden dropout of the bert rows (selfsup's default; none on attention probabilities)")
    p.add_argument("--fp32", action="store_true",
                   help="also time with TF32 convolutions off (PyTorch enables TF32 for cuDNN convs by default)")
    p.add_argument("--precision", choices=("tf32", "fp32"), default="tf32",
                   help="cuDNN convolution math for every row: tf32 (PyTorch's default) or fp32 (strict)")
    args = p.parse_args()
    torch.backends.cudnn.allow_tf32 = args.precision == "tf32"
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    rows = []
    models = args.models.split(",")
    for objective in (o for o in args.objectives.split(",") if o and o != "mlm"):
        for name in (m for m in models if m != "bert" and (objective != "mae" or m == "vit")):
            rows.append(row(name, args, device, "pytorch", objective))
            print(f"pytorch {objective} {name}: {rows[-1]['images_per_s']:.1f} img/s", file=sys.stderr)
            if args.fp32 and device.type == "cuda":
                torch.backends.cudnn.allow_tf32 = False
                rows.append(row(name, args, device, "pytorch-fp32", objective))
                torch.backends.cudnn.allow_tf32 = args.precision == "tf32"
    if "bert" in models:
        for impl in ("pytorch", "pytorch-masked"):
            rows.append(bert_row(args, device, impl))
            print(f"{impl} mlm bert: {rows[-1]['tokens_per_s']:.0f} tokens/s", file=sys.stderr)
    json.dump({"torch": torch.__version__, "threads": torch.get_num_threads(), "rows": rows}, sys.stdout)
    print()


if __name__ == "__main__":
    main()
