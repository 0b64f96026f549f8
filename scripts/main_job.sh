#!/usr/bin/env bash
# The README's main job: 10-shot BiT-HyperRule transfer on real product photos (Fashion-MNIST), offline, then predict.
# The upstream model ships in the package: a small BiT pre-trained on the five other Fashion-MNIST classes
# (benchmarks/transfer_fashion_mnist.py regenerates it). CPU-sized resolution: --resize 36 --crop 32.
set -euo pipefail
data=/usr/share/datasets/fashion-mnist
out="${1:-runs/quickstart-$(date +%Y%m%d-%H%M%S)}"
classes="Sandal,Shirt,Sneaker,Bag,Ankle boot"

bigtransfer finetune --model bit-tiny-fashion5 \
  --data "$data/train-images-idx3-ubyte.gz" --eval-data "$data/t10k-images-idx3-ubyte.gz" --classes "$classes" \
  --shots 10 --seed 0 --batch-size 64 --resize 36 --crop 32 --eval-every 100 --out "$out"

mkdir -p "$out/held-out"
python - "$data/t10k-images-idx3-ubyte.gz" "$out/held-out" <<'PY'
import sys
from bigtransfer.train.data import load_dataset
held_out = load_dataset(sys.argv[1]).select_classes(["Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"])
for label, name in enumerate(held_out.classes):  # one test image per class, never seen in training
    index = int((held_out.labels == label).nonzero()[0][0])
    held_out.load(index).save(f"{sys.argv[2]}/{index:04d}-{name.replace(' ', '_')}.png")
PY
bigtransfer predict "$out/held-out" --model "$out/model" --top-k 2

echo
echo "Beside the fine-tuned top-1 above: the upstream's frozen features with a linear classifier, on"
echo "10 photos per class (big_vision's few-shot evaluator; seed 0 draws the photos fine-tuning used; random features and"
echo "raw pixels for comparison are in benchmarks/RESULTS.md):"
bigtransfer fewshot --model bit-tiny-fashion5 \
  --data "$data/train-images-idx3-ubyte.gz" --eval-data "$data/t10k-images-idx3-ubyte.gz" --classes "$classes" \
  --shots 10 --seeds 3 --quiet
echo "model, metrics.json, curves.png and confusion.png are in $out"
