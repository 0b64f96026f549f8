#!/usr/bin/env bash
# The README's main job: BiT transfer to real handwritten digits, 10 per class, offline after set-up, then predict.
# The upstream model ships in the package: a small BiT pre-trained only on printed *letters* (no digits; see
# src/bigtransfer/bundled/README.md). The digits are the 5,000 real MNIST ones that `scripts/setup.sh demo`
# fetched into runs/mnist-5k (3,000 to draw shots from, 2,000 to test on). CPU-sized resolution: 36 → 32 px.
# To show what transfer buys, the same network is also fine-tuned from random weights by the same rule.
set -euo pipefail
data=runs/mnist-5k
out="${1:-runs/quickstart-$(date +%Y%m%d-%H%M%S)}"
[ -f "$data/t10k-labels-idx1-ubyte.gz" ] || { echo "No digits in $data: run 'bash scripts/setup.sh demo' first." >&2; exit 1; }
rule=(--data "$data/train-images-idx3-ubyte.gz" --eval-data "$data/t10k-images-idx3-ubyte.gz"
      --shots 10 --seed 0 --batch-size 32 --resize 36 --crop 32)

bigtransfer finetune --model bit-tiny-glyphs "${rule[@]}" --eval-every 100 --out "$out"

mkdir -p "$out/held-out"
python - "$data/t10k-images-idx3-ubyte.gz" "$out/held-out" <<'PY'
import sys
from bigtransfer.data.sources import load_dataset
held_out = load_dataset(sys.argv[1])
for label, name in enumerate(held_out.classes):  # one test digit per class, never seen in training
    index = int((held_out.labels == label).nonzero()[0][0])
    held_out.load(index).save(f"{sys.argv[2]}/{index:04d}-digit-{name}.png")
PY
bigtransfer predict "$out/held-out" --model "$out/model" --top-k 2

echo
echo "The baseline: the same network from random weights (seed 0), fine-tuned by the same rule on the same 100 digits..."
python -c "
import sys, torch
from bigtransfer import BitForImageClassification
config = BitForImageClassification.from_pretrained('bit-tiny-glyphs').config
torch.manual_seed(0)
BitForImageClassification(config).save_pretrained(sys.argv[1])
" "$out/scratch-init"
bigtransfer finetune --model "$out/scratch-init" "${rule[@]}" --out "$out/scratch" --quiet > "$out/scratch.log"
echo "...and the upstream's frozen features with a linear classifier (big_vision's few-shot evaluator, 3 draws):"
bigtransfer fewshot --model bit-tiny-glyphs "${rule[@]:0:4}" --shots 10 --runs 3 --quiet

python - "$out" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
transfer, scratch = (json.loads((out / d / "metrics.json").read_text())["eval"]["top1"] for d in (".", "scratch"))
print(f"\nTop-1 on the 2,000 test digits after fine-tuning on 10 per class:\n"
      f"  BiT transfer from bit-tiny-glyphs (letters only)  {transfer:.4f}\n"
      f"  the same network from random weights             {scratch:.4f}\n"
      f"  what transfer bought                             {100 * (transfer - scratch):+.1f} points")
PY
echo "model, metrics.json, curves.png and confusion.png are in $out (the baseline's in $out/scratch)"
