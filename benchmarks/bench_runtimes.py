"""BiT-R50x1 on every CPU runtime, through `bigtransfer bench` itself: the figures RESULTS.md and the README give.

    python benchmarks/bench_runtimes.py [--rounds 7] [--out bench-r50x1.json]

The model is BiT-R50x1 (1000 classes, 224 px) with random weights that behave like trained ones (Kaiming-normal
convolutions, GroupNorm affines near 1/0), saved as a checkpoint; the images are scikit-image's photos, which
also calibrate int8. `bench` times eager PyTorch, transformers' BiT with the same weights, ONNX Runtime and
OpenVINO (float32, int8, and bf16 where the CPU has it) in one process, alternating blocks of warm calls.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from bench_deploy import sample_photos
from bigtransfer import BitConfig, BitForImageClassification, BitImageProcessor
from bigtransfer.cli.bench import print_table
from bigtransfer.deploy.bench import bench
from helpers import randomize_norms


def r50x1_checkpoint(directory: Path) -> Path:
    torch.manual_seed(0)
    model = BitForImageClassification(BitConfig(num_labels=1000)).eval()
    for module in model.modules():
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
    randomize_norms(model)
    model.save_pretrained(directory)
    BitImageProcessor().save_pretrained(directory)
    return directory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=3)
    parser.add_argument("--out", type=Path, help="also write the report as JSON here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        photos = sample_photos(Path(scratch))
        model = r50x1_checkpoint(Path(scratch) / "bit-r50x1-random")
        report = bench(str(model), runtimes=["torch", "transformers", "onnx", "openvino"], int8=True, bf16=True,
                       data=photos, rounds=args.rounds, calls=args.calls)  # fmt: skip
    report["model"] = "BiT-R50x1, random weights (1000 classes)"
    print_table(report)
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
