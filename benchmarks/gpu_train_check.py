"""Short GPU check of the training path (run on a lent CUDA machine, not in CI).

    PYTHONPATH=src python benchmarks/gpu_train_check.py

Fine-tunes a tiny BiT on CUDA in fp32 and with bf16 autocast, then under torchrun with one process
(NCCL), and checks: finite losses, the bf16 run lands near the fp32 run, and the one-process NCCL
run equals the plain CUDA run.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file

from bigtransfer import BitConfig, BitForImageClassification
from bigtransfer.train import FineTuning, RunOptions, finetune


def make_images(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for label, name in enumerate(["dark", "mid", "light"]):
        (root / name).mkdir(parents=True)
        for i in range(20):
            pixels = np.clip(rng.normal(50 + 80 * label, 40, (40, 40, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


def main() -> None:
    work = Path(tempfile.mkdtemp())
    images = make_images(work / "images")
    torch.manual_seed(0)
    BitForImageClassification(BitConfig(hidden_sizes=[32, 64, 128, 256], depths=[1, 1, 1, 1], num_groups=8,
                                         embedding_size=32, num_labels=3)).save_pretrained(work / "up")  # fmt: skip
    recipe = FineTuning(batch_size=32, steps=30, resize=40, crop=32)
    options = RunOptions(progress=False, device="cuda", seed=1)
    fp32 = finetune(str(work / "up"), str(images), str(images), recipe=recipe,
                    run=dataclasses.replace(options, out=work / "fp32"))  # fmt: skip
    bf16 = finetune(str(work / "up"), str(images), str(images), recipe=recipe,
                    run=dataclasses.replace(options, out=work / "bf16", bf16=True))  # fmt: skip
    print(f"cuda fp32: top-1 {fp32['eval']['top1']:.3f}; bf16 autocast: top-1 {bf16['eval']['top1']:.3f}")
    a, b = load_file(work / "fp32/model/model.safetensors"), load_file(work / "bf16/model/model.safetensors")
    print(f"max |weights fp32 - bf16| {max((a[k] - b[k]).abs().max().item() for k in a):.4f}")
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "1", "-m", "bigtransfer", "finetune",
               "--model", str(work / "up"), "--data", str(images), "--batch-size", "32", "--steps", "30", "--resize",
               "40", "--crop", "32", "--seed", "1", "--device", "cuda", "--out", str(work / "ddp"), "--quiet"]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, env={**os.environ})
    print("torchrun (NCCL, 1 process):", "ok" if result.returncode == 0 else result.stderr[-2000:])
    if result.returncode == 0:
        c = load_file(work / "ddp/model/model.safetensors")
        print(f"max |weights plain - DDP| {max((a[k] - c[k]).abs().max().item() for k in a):.2e}")


if __name__ == "__main__":
    main()
