#!/usr/bin/env bash
# The GPU path's checks, on a machine with a CUDA GPU (bench/README.md holds what they printed):
#   tests     the CUDA tests (python -m pytest -m cuda)
#   bench     bench/speed.py on VGG16, ResNet50, ResNet152 and EfficientNet-Lite0, with a profile of VGG16's step
#   generate  one real SGA generation: EfficientNet-Lite0 on the 200 ImageNet images of ../shared at the paper's
#             defaults (B 250, m 10, K 4, 20 epochs; fit 100, hold out 100), bf16 + CUDA graphs (the GPU default)
#             and fp32 eager
# Usage, from the repository root:  bash bench/gpu_check.sh OUT_DIR [tests] [bench] [generate]   (default: all)
# Test data: ../shared, or $UAP_SHARED_DIR; the generated UAPs go to OUT_DIR/uaps, or $UAP_ARTIFACTS.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: bash bench/gpu_check.sh OUT_DIR [tests] [bench] [generate]}
shift
parts=${*:-tests bench generate}
shared=${UAP_SHARED_DIR:-../shared}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
status=0
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv | tee "$out/gpu.txt"
python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$out/gpu.txt"
for part in $parts; do
  case $part in
    tests)
      python -m pytest -m cuda tests/test_cuda.py -v -s -p no:cacheprovider 2>&1 | tee "$out/cuda_tests.log"
      status=$((status || PIPESTATUS[0])) ;;
    bench)
      python bench/speed.py --markdown "$out/speed.md" --profile vgg16 2>&1 | tee "$out/speed.log"
      status=$((status || PIPESTATUS[0])) ;;
    generate)
      for precision in auto fp32; do
        compile=$([ "$precision" = auto ] && echo auto || echo off)
        python -m uap_core generate --model efficientnet_lite0 --algorithm sga --eps 10/255 --norm linf \
          --images "$shared/data/imagenet-samples-200" --fit 100 --holdout 100 --epochs 20 --seed 0 \
          --device cuda --precision "$precision" --compile "$compile" --out "${UAP_ARTIFACTS:-$out/uaps}" \
          --name "lite0_sga_imagenet200_$precision" --json 2>&1 | tee "$out/generate_$precision.json"
        status=$((status || PIPESTATUS[0]))
      done ;;
    *) echo "unknown part $part (tests, bench, generate)"; exit 2 ;;
  esac
done
exit $status
