"""Does an upstream's representation transfer? Linear few-shot accuracy (big_vision's evaluator,
`bigtransfer fewshot`) on a downstream task (benchmarks/downstreams.py: by default the five Fashion-MNIST
classes `bit-tiny-fashion5` never saw; `--downstream mnist5k` for real digits), for the upstream's frozen
features, the same architecture with random weights, and the raw pixels.

    python benchmarks/fewshot_fashion_mnist.py [--upstream DIR ...] [--downstream mnist5k] [--shots 1 5 10] [--seeds 5]

Prints a Markdown table of mean ± std top-1 (%) over the seeds, on all of the task's test images.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from bigtransfer import BitConfig, BitForImageClassification, BitImageProcessor
from bigtransfer.checkpoints.sources import bundled_model
from bigtransfer.data.datasets import ImageDataset
from bigtransfer.inference.few_shot import FewShotProtocol, fewshot_pool, linear_fewshot
from bigtransfer.train import fewshot
from downstreams import DOWNSTREAMS


def pixels(dataset: ImageDataset, indices) -> np.ndarray:
    """The 28×28 grey values in [0, 1], one row per image."""
    return np.stack([np.asarray(dataset.load(int(i)).convert("L"), np.float32).ravel() / 255 for i in indices])


def row(name: str, shots: dict) -> str:
    return f"| {name} | " + " | ".join(f"{100 * r['mean']:.1f} ± {100 * r['std']:.1f}" for r in shots.values()) + " |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--upstream", nargs="+", default=[str(bundled_model("bit-tiny-fashion5"))])
    parser.add_argument("--downstream", choices=sorted(DOWNSTREAMS), default="fashion5")
    parser.add_argument("--shots", type=int, nargs="+", default=[1, 5, 10])
    parser.add_argument("--seeds", type=int, default=5)
    args = parser.parse_args()

    train, test = DOWNSTREAMS[args.downstream]()
    protocol = FewShotProtocol(shots=args.shots, seeds=args.seeds)
    options = dict(protocol=protocol, progress=False)
    print("| features | " + " | ".join(f"{s}-shot" for s in args.shots) + " |")
    print("|---|" + "---|" * len(args.shots))
    for upstream in args.upstream:
        print(row(f"upstream `{Path(upstream).name}`", fewshot(upstream, train, test, **options)["shots"]), flush=True)
        config = BitConfig.from_pretrained(upstream)
        torch.manual_seed(0)
        random_init = BitForImageClassification(config)
        processor = BitImageProcessor.from_pretrained(upstream)
        result = fewshot(random_init, train, test, processor=processor, **options)
        print(row(f"same architecture, random init (`{Path(upstream).name}`)", result["shots"]), flush=True)
    pool = fewshot_pool(train.labels, protocol)
    features = dict(zip(pool.tolist(), pixels(train, pool)))
    result = linear_fewshot(features, train.labels, pixels(test, range(len(test))), test.labels, protocol)
    print(row("raw pixels (784)", result))


if __name__ == "__main__":
    main()
