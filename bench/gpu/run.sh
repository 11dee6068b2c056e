#!/usr/bin/env bash
# The whole GPU measurement in one command, run from the repository root on
# the GPU machine: unpacks the binaries bench/gpu/build.sh packed into .gpu/,
# runs the CUDA property tests, the bench (ours vs PyTorch eager, one run)
# and the default pipeline on the GPU, and writes the log (log.txt) and JSON
# reports to $OUT (default out/gpu). Stages: `bench/gpu/run.sh props bench
# bench-fp32 bench-measured bench-loop bench-dw pipeline` (props, bench and pipeline
# when none is named). Each stage has its own time limit so that the whole stays well
# under ten minutes.
set -uo pipefail
out="${OUT:-out/gpu}"
mkdir -p "$out"
stages="${*:-props bench pipeline}"
bin=/tmp/selfsup-gpu
mkdir -p "$bin"
for f in .gpu/*.xz; do
  name=$(basename "$f" .xz)
  xz -dc "$f" > "$bin/$name" && chmod +x "$bin/$name"
done
# The CUDA 13 libraries and cuDNN 9 come with PyTorch's pip install: use
# those (the ones PyTorch itself loads) before any system copy.
libdirs=""
for lib in libcublas.so.13 libnvrtc.so.13 libcurand.so.10 libcudart.so.13 libcudnn.so.9; do
  hits=$(find / -name "$lib" -not -path '/proc/*' 2>/dev/null)
  d=$(dirname "$( (echo "$hits" | grep site-packages; echo "$hits") | head -1)")
  case ":$libdirs:" in *":$d:"*) ;; *) libdirs="$libdirs:$d" ;; esac
done
export LD_LIBRARY_PATH="${libdirs#:}:${LD_LIBRARY_PATH:-}"
export SELFSUP_DATA_DIR="$PWD/data"
{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  python3 -c 'import torch; print("torch", torch.__version__, "cudnn", torch.backends.cudnn.version())'
  ldd "$bin/xtask" | grep -E "not found|cudnn|cublas" || true
} > "$out/log.txt" 2>&1
cat "$out/log.txt"
log() { tee -a "$out/log.txt"; }

for stage in $stages; do
  case "$stage" in
    props)
      # Strict-f32 convolutions (conv_props) and the fused ops (cuda_props).
      timeout 120 "$bin/conv_props" fast_conv_matches_reference_on_cuda 2>&1 | log
      # One at a time: some set process-wide modes (TF32, cuDNN depthwise).
      timeout 120 "$bin/cuda_props" --include-ignored --test-threads 1 2>&1 | log
      ;;
    bench)
      # ResNet-18 and MobileNetV2, rotation and SimCLR, batch 256; ours with
      # the fast kernels, PyTorch eager with its defaults (TF32 convs).
      timeout 300 "$bin/xtask" bench --device cuda --models resnet18,mobilenetv2 \
        --objectives rotation,simclr --batch 256 --kernels fast \
        --out "$out/bench.json" 2>&1 | log
      ;;
    bench-fp32)
      timeout 200 "$bin/xtask" bench --device cuda --models resnet18,mobilenetv2 \
        --objectives rotation --batch 256 --kernels fast --precision fp32 \
        --out "$out/bench-fp32.json" 2>&1 | log
      ;;
    bench-measured)
      # Our convolutions with timed algorithm choice, TF32 and strict f32.
      for p in tf32 fp32; do
        timeout 150 "$bin/xtask" bench --device cuda --models resnet18,mobilenetv2 \
          --objectives rotation --batch 256 --kernels fast --conv-algo measured \
          --precision "$p" --out "$out/bench-measured-$p.json" 2>&1 | log
      done
      ;;
    bench-loop)
      # The real training loop (augmentation on CPU threads, copies to the
      # GPU) against the device-resident step: the data path's cost.
      timeout 200 "$bin/xtask" bench --device cuda --models resnet18,mobilenetv2 \
        --objectives rotation,simclr --batch 256 --kernels fast --loop --no-pytorch \
        --out "$out/bench-loop.json" 2>&1 | log
      ;;
    bench-dw)
      # MobileNetV2's depthwise layers through our kernels instead of cuDNN.
      timeout 120 "$bin/xtask" bench --device cuda --models mobilenetv2 \
        --objectives rotation,simclr --batch 256 --kernels fast --depthwise kernels \
        --no-pytorch --out "$out/bench-dw.json" 2>&1 | log
      ;;
    pipeline)
      timeout 150 "$bin/xtask" pipeline --device cuda --out "$out/pipeline" \
        2>&1 | tail -40 | log
      cp "$out/pipeline/report.json" "$out/pipeline-report.json" 2>/dev/null
      cp "$out/pipeline/report.md" "$out/pipeline-report.md" 2>/dev/null
      rm -rf "$out/pipeline"
      ;;
    *) echo "unknown stage $stage (props, bench, bench-fp32, bench-measured, bench-loop, bench-dw, pipeline)" >&2 ;;
  esac
done
ls -la "$out"
