#!/usr/bin/env bash
# Build the CUDA binaries on a machine without a GPU and pack them for the GPU
# machine: `bench/gpu/build.sh` (from the repository root) leaves
# .gpu/xtask.xz and .gpu/conv_props.xz, .gpu/cuda_props.xz, which
# bench/gpu/run.sh unpacks there. Needs the CUDA 13.0 wheels environment that
# `cuda-env.sh` prints (SELFSUP_CUDA_ENV names the script; see docs/cuda.md).
set -euo pipefail
env_script="${SELFSUP_CUDA_ENV:-../shared/gpu/cuda-env.sh}"
eval "$("$env_script")"
link="${CUDA_PATH:?cuda-env.sh must set CUDA_PATH}"
# cuDNN is loaded at run time from PyTorch's pip install on the GPU machine;
# here only the linker needs its names, so link against a stub with the real
# soname (as cuda-env.sh does for the driver).
if [ ! -f "$link/libcudnn.so" ]; then
  sys=$(find ~/.cargo/registry/src -path '*cudarc-0.19*/src/cudnn/sys/mod.rs' | head -1)
  [ -n "$sys" ] || { echo "cudarc 0.19 sources not found: run cargo fetch first" >&2; exit 1; }
  grep -ohE 'fn cudnn[A-Za-z0-9_]*\(' "$sys" | sed 's/^fn //; s/($//' | sort -u \
    | awk '{print "void " $1 "(void) {}"}' > "$link/cudnn_stub.c"
  gcc -shared -fPIC -o "$link/libcudnn.so" "$link/cudnn_stub.c" -Wl,-soname,libcudnn.so.9
fi
export CARGO_TARGET_DIR="${CUDA_TARGET_DIR:-/work/cuda-target}"
# Nothing stale is shipped: a failed build leaves no binaries behind.
rm -f .gpu/xtask.xz .gpu/conv_props.xz .gpu/cuda_props.xz
cargo build --release --features cuda -p xtask
tests=$(cargo test --release --features cuda -p selfsup-kernels --no-run --message-format=json \
  | python3 -c 'import json,sys
for l in sys.stdin:
    m=json.loads(l)
    if m.get("reason")=="compiler-artifact" and m.get("executable") and m["target"]["name"] in ("conv_props","cuda_props"):
        print(m["target"]["name"], m["executable"])')
mkdir -p .gpu
cp "$CARGO_TARGET_DIR/release/xtask" .gpu/xtask
echo "$tests" | while read -r name exe; do [ -n "$name" ] && cp "$exe" ".gpu/$name"; done
strip .gpu/xtask .gpu/conv_props .gpu/cuda_props 2>/dev/null || true
for f in xtask conv_props cuda_props; do [ -f .gpu/$f ] && xz -T2 -6 -f .gpu/$f; done
for f in xtask conv_props cuda_props; do
  [ -f ".gpu/$f.xz" ] || { echo "bench/gpu/build.sh: $f was not built" >&2; exit 1; }
done
ls -la .gpu
