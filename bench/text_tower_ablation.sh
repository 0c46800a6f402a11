#!/usr/bin/env bash
# Short, equal-budget comparison of phantom-tiny's text towers (docs/model.md):
# frozen pretrained MiniLM vs a CLIP text transformer trained from scratch.
# Usage: bash bench/text_tower_ablation.sh [STEPS]   (data: data/phantoms, see docs/model.md)
set -euo pipefail
steps=${1:-500}
for variant in phantom-tiny configs/experiments/phantom-tiny-cliptext.yaml; do
  name=$(basename "$variant" .yaml)
  .venv/bin/vlseg train --config configs/train/phantom_tiny.yaml model="$variant" \
    out="runs/ablation/$name" epochs=1 max_steps="$steps" resume=false val_limit=200
  .venv/bin/vlseg eval --model "runs/ablation/$name/last" --data data/phantoms \
    --split test test_heldout --limit 600 --out "runs/ablation/$name.json"
done
