#!/usr/bin/env bash
# The README's study figures: each study run with the settings its docstring reports (uap_core/studies/*.py),
# on the CI data in ../shared (or UAP_SHARED_DIR); only the PNG (and the CSV of its numbers) is kept here.
#   bash assets/studies/make_figures.sh [study …]      # default: all seven; ~45 min on 2 CPU cores
set -euo pipefail
cd "$(dirname "$0")/../.."
SHARED="${UAP_SHARED_DIR:-$(cd .. && pwd)/shared}"
CIFAR="$SHARED/data/cifar10-test-2000.npz"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
declare -A ARGS=(
  [images_needed]="--methods sga,sgd_uap --fit-sizes 10,30,100,300 --seeds 0,1 --holdout 500 --epochs 1 --min-steps 20 --device cpu"
  [batch_stability]="--batch-sizes 10,100 --sga-batch 100 --sga-minibatches 10 --budget 4000 --fit 500 --holdout 500 --device cpu"
  [transfer_ensembles]="--methods sga --fit 100 --holdout 500 --epochs 20 --device cpu"
  [dominant_labels]=""
  [geometry]="--normals 500 --holdout 500"
  [finetune]="--train 500 --fit 300 --holdout 500 --pool 5 --pool-fit 300"
  [robustness]="--fit 256 --holdout 500 --epochs 8 --batch-size 32 --robust jpeg,rotation,screen --device cpu"
)
for study in "${@:-images_needed batch_stability transfer_ensembles dominant_labels geometry finetune robustness}"; do
  for name in $study; do
    echo "== python -m uap_core study $name ${ARGS[$name]} --images $CIFAR" >&2
    # shellcheck disable=SC2086
    python -m uap_core study "$name" ${ARGS[$name]} --images "$CIFAR" --out "$WORK/$name" --png on
    cp "$WORK/$name/$name.png" "$WORK/$name/$name.csv" assets/studies/
  done
done
