//! The ViT's forward pass against a hand-written PyTorch module given the
//! same weights and input. Run with
//! `cargo test -p selfsup-backbones --test vit_reference -- --ignored` where
//! `python3 -c 'import torch'` works, or point `SELFSUP_PYTHON` at an
//! interpreter that has torch.

use candle_core::{Device, Tensor};
use candle_nn::VarMap;
use selfsup_backbones::BackboneConfig;
use selfsup_core::params::seeded_var_builder;
use std::collections::BTreeMap;

/// The reference: patches in (C, p, p) order through the embedding, 2-D
/// sine-cosine positions (rows in the first half, columns in the second),
/// pre-LayerNorm blocks, final LayerNorm, mean over tokens.
const REFERENCE: &str = r#"
import json, math, sys, torch
import torch.nn.functional as F
d = json.load(sys.stdin)
W = {k: torch.tensor(v["data"], dtype=torch.float64).reshape(v["shape"]) for k, v in d["weights"].items()}
x = torch.tensor(d["x"], dtype=torch.float64).reshape(d["x_shape"])
p, heads, eps = d["patch"], d["heads"], 1e-6
B, C, H, Wd = x.shape
gh, gw = H // p, Wd // p
x = x[:, :, :gh * p, :gw * p]
patches = x.reshape(B, C, gh, p, gw, p).permute(0, 2, 4, 1, 3, 5).reshape(B, gh * gw, C * p * p)
lin = lambda t, n: t @ W[n + ".weight"].T + W[n + ".bias"]
ln = lambda t, n: F.layer_norm(t, t.shape[-1:], W[n + ".weight"], W[n + ".bias"], eps)
D = W["patch_embed.weight"].shape[0]
q = D // 4
omega = torch.tensor([1.0 / 10000 ** (i / q) for i in range(q)], dtype=torch.float64)
def enc(pos):
    a = pos[:, None] * omega[None, :]
    return torch.cat([a.sin(), a.cos()], 1)
rows = torch.arange(gh, dtype=torch.float64).repeat_interleave(gw)
cols = torch.arange(gw, dtype=torch.float64).repeat(gh)
pos = torch.cat([enc(rows), enc(cols)], 1)
t = lin(patches, "patch_embed") + pos
i = 0
while f"blocks.{i}.norm1.weight" in W:
    b = f"blocks.{i}"
    h = ln(t, b + ".norm1")
    Q, K, V = (lin(h, f"{b}.attn.{n}").reshape(B, -1, heads, D // heads).transpose(1, 2) for n in "qkv")
    att = torch.softmax(Q @ K.transpose(-1, -2) / math.sqrt(D // heads), -1)
    ctx = (att @ V).transpose(1, 2).reshape(B, -1, D)
    t = t + lin(ctx, b + ".attn.proj")
    t = t + lin(F.gelu(lin(ln(t, b + ".norm2"), b + ".mlp.fc1")), b + ".mlp.fc2")
    i += 1
out = ln(t, "norm").mean(1)
print(json.dumps(out.tolist()))
"#;

fn python_json(script: &str, stdin: &str) -> Vec<Vec<f32>> {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let py = std::env::var("SELFSUP_PYTHON").unwrap_or_else(|_| "python3".into());
    let mut child = Command::new(py)
        .arg("-c")
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
#[ignore = "needs python3 with torch"]
fn vit_forward_matches_a_pytorch_reference() {
    let cfg = BackboneConfig::Vit {
        in_channels: 3,
        patch_size: 4,
        dim: 24,
        depth: 2,
        heads: 3,
        mlp_ratio: 2.0,
    };
    let map = VarMap::new();
    let net = cfg
        .build(seeded_var_builder(&map, 5, &Device::Cpu))
        .unwrap();
    // A 13x13 input: the reference crops to 12x12 like the ViT.
    let shape = (2, 3, 13, 13);
    let n = 2 * 3 * 13 * 13;
    let xs: Vec<f32> = (0..n)
        .map(|i| ((i * 29 % 97) as f32 / 48.0) - 1.0)
        .collect();
    let x = Tensor::from_vec(xs.clone(), shape, &Device::Cpu).unwrap();
    let ours: Vec<Vec<f32>> = net.forward_t(&x, false).unwrap().to_vec2().unwrap();
    // The Candle-op path (other devices, `--kernels stock`) agrees too.
    selfsup_kernels::set_fusion(false);
    let stock: Vec<Vec<f32>> = net.forward_t(&x, false).unwrap().to_vec2().unwrap();
    selfsup_kernels::set_fusion(true);
    let mut weights = BTreeMap::new();
    for (name, v) in map.data().lock().unwrap().iter() {
        let t = v.as_tensor();
        weights.insert(
            name.clone(),
            serde_json::json!({
                "shape": t.dims(),
                "data": t.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            }),
        );
    }
    let input = serde_json::json!({
        "weights": weights, "x": xs, "x_shape": [2, 3, 13, 13], "patch": 4, "heads": 3,
    });
    let theirs = python_json(REFERENCE, &input.to_string());
    assert_eq!(theirs.len(), ours.len(), "images");
    assert!(theirs
        .iter()
        .zip(&ours)
        .all(|(t, o)| t.len() == o.len() && o.len() == 24));
    for (o, t) in ours.iter().chain(&stock).zip(theirs.iter().chain(&theirs)) {
        for (a, b) in o.iter().zip(t) {
            assert!((a - b).abs() <= 1e-4, "{a} vs {b}");
        }
    }
}
