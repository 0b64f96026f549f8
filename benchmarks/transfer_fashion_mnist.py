"""A miniature of BiT's claim, offline: pre-train upstream on five Fashion-MNIST classes, transfer with the
BiT-HyperRule to a downstream task (benchmarks/downstreams.py: the other five classes, or with
`--downstream mnist5k` real digits) at 1/5/10/100 shots (several seeds), and compare with the same
architecture trained from scratch by the same rule.

    python benchmarks/transfer_fashion_mnist.py [--pretrain [--arch wide|wider] [--upstream-data glyphs] | --upstream DIR]
        [--downstream mnist5k] [--seeds 5] [--shots 1 5 10 100]

--pretrain first re-creates the upstream model into --work/upstream (`--arch small`: the one shipped as
`bit-tiny-fashion5`; `--arch wide`: twice its depth and width; `--arch wider`: 1.5× wide's widths) from
`--upstream-data` (`garments`, the shipped one's; `glyphs`: printed letters); without it the shipped one
(or --upstream) is used. Prints a Markdown table of mean ± std test top-1 on all of the
task's test images.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import time
from pathlib import Path

import torch

from bigtransfer import BitConfig, BitForImageClassification
from bigtransfer.train import FineTuning, Pretraining, RunOptions, finetune, pretrain
from downstreams import DOWNSTREAMS, UPSTREAMS

UPSTREAM_CONFIGS = {
    # the shipped upstream: ~0.5 M parameters, 32 px, 20 epochs on 30,000 images (≈5 min on 2 CPU cores)
    "small": dict(depths=[1, 1, 1, 1], hidden_sizes=[64, 128, 256, 512], embedding_size=32, num_groups=8),
    # twice the depth and width (3.5 M parameters, 15-25 min): its features beat raw pixels at 10 shots
    "wide": dict(depths=[2, 2, 2, 2], hidden_sizes=[128, 256, 512, 1024], embedding_size=64, num_groups=8),
    # 1.5× the wide one's widths (7.9 M parameters, ~25 min): features 8 points above pixels at 10-shot digits
    "wider": dict(depths=[2, 2, 2, 2], hidden_sizes=[192, 384, 768, 1536], embedding_size=96, num_groups=8),
}
PRETRAIN = Pretraining(epochs=20, batch_size=128, crop=32)


def make_upstream(work: Path, arch: str, data: str, seed: int) -> Path:
    train, test = UPSTREAMS[data]()
    config = BitConfig(**UPSTREAM_CONFIGS[arch])
    metrics = pretrain(train, config, test, recipe=PRETRAIN, run=RunOptions(out=work / "upstream", seed=seed))
    top1, seconds = metrics["eval"]["top1"], metrics["seconds"]
    print(f"upstream: top-1 {top1:.4f} on its own {len(train.classes)} classes ({seconds} s)")
    return work / "upstream" / "model"


def make_scratch(work: Path, upstream: Path, seed: int) -> Path:
    """The upstream architecture with fresh random weights (seeded), as a model directory."""
    config = BitForImageClassification.from_pretrained(upstream).config
    torch.manual_seed(seed)
    BitForImageClassification(config).save_pretrained(work / f"scratch-{seed}")
    return work / f"scratch-{seed}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default="runs/transfer-fashion-mnist")
    parser.add_argument("--pretrain", action="store_true", help="re-create the upstream model first")
    parser.add_argument("--arch", choices=sorted(UPSTREAM_CONFIGS), default="small", help="with --pretrain")
    parser.add_argument("--upstream-data", choices=sorted(UPSTREAMS), default="garments", help="with --pretrain")
    parser.add_argument("--upstream-seed", type=int, default=0, help="with --pretrain: its initialisation and order")
    parser.add_argument("--upstream", help="upstream model directory (default: the bundled bit-tiny-fashion5)")
    parser.add_argument("--downstream", choices=sorted(DOWNSTREAMS), default="fashion5")
    parser.add_argument("--shots", type=int, nargs="+", default=[1, 5, 10, 100])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=32, help="HyperRule batch (512 in the paper; CPU: 32)")
    args = parser.parse_args()

    work = Path(args.work)
    if args.pretrain:
        upstream = make_upstream(work, args.arch, args.upstream_data, args.upstream_seed)
    else:
        upstream = Path(args.upstream) if args.upstream else _bundled()
    train, test = DOWNSTREAMS[args.downstream]()
    results: dict[str, dict[int, list[float]]] = {"BiT transfer": {}, "from scratch": {}}
    started = time.perf_counter()
    for shots in args.shots:
        for seed in range(args.seeds):
            for name, start in (("BiT transfer", upstream), ("from scratch", make_scratch(work, upstream, seed))):
                out = work / f"{name.split()[0].lower()}-{shots}shot-seed{seed}"
                shutil.rmtree(out, ignore_errors=True)
                recipe = FineTuning(shots=shots, batch_size=args.batch_size, resize=36, crop=32)
                metrics = finetune(str(start), train, test, recipe=recipe,
                                   run=RunOptions(out=out, seed=seed, progress=False))  # fmt: skip
                results[name].setdefault(shots, []).append(metrics["eval"]["top1"])
                print(f"{name:13s} {shots:3d}-shot seed {seed}: top-1 {metrics['eval']['top1']:.4f}", flush=True)
    print(f"\n{len(args.shots) * args.seeds * 2} fine-tuning runs in {time.perf_counter() - started:.0f} s\n")
    header = "| start | " + " | ".join(f"{s}-shot" for s in args.shots) + " |"
    print(header + "\n|---|" + "---|" * len(args.shots))
    for name, by_shots in results.items():
        cells = [f"{100 * statistics.mean(v):.1f} ± {100 * statistics.pstdev(v):.1f}" for v in by_shots.values()]
        print(f"| {name} | " + " | ".join(cells) + " |")
    (work / "results.json").write_text(json.dumps(results, indent=2))


def _bundled() -> Path:
    from bigtransfer.checkpoints.sources import bundled_model

    return bundled_model("bit-tiny-fashion5")


if __name__ == "__main__":
    main()
