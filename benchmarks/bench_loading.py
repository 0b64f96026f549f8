"""Load time of an R101x3 (BiT-M-R101x3 layout, 1000 classes, 388 M parameters) from a safetensors folder: today's
`from_pretrained` (built on the meta device, only missing keys initialised) against the earlier path (a full build
on the CPU, every weight drawn at random, then the checkpoint copied over it), in the same run.

    python benchmarks/bench_loading.py [--rounds 5]

The folder is written once, with random weights, into a temporary directory (about 1.6 GB). One warm load of each
path first (the file then sits in the page cache); then rounds alternate the order of the two paths. Prints the
median of each, the full build alone (what the earlier path spent on weights it then overwrote), and checks that
both paths load the same tensors.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import tempfile
import time
from pathlib import Path

import torch

from bigtransfer import BitConfig, BitForImageClassification
from bigtransfer.checkpoints.sources import load_checkpoint
from bigtransfer.checkpoints.weights import match_state_dict, materialize

R101X3 = dict(depths=[3, 4, 23, 3], width_factor=3, num_labels=1000)


def load_before(folder: Path) -> BitForImageClassification:
    """The earlier `from_pretrained`: shapes checked on a meta skeleton, then a full build, then the load."""
    settings, weights = load_checkpoint(folder)
    config = BitConfig.from_dict(settings)
    with torch.device("meta"):
        skeleton = BitForImageClassification(config)
    to_load, _ = match_state_dict(skeleton, weights, False, str(folder))
    model = BitForImageClassification(config)
    model.load_state_dict(materialize(to_load), strict=False)
    model.config.dtype = model.dtype
    model.config._name_or_path = str(folder)
    return model.eval()


def load_after(folder: Path) -> BitForImageClassification:
    return BitForImageClassification.from_pretrained(folder)


def build_only(folder: Path) -> BitForImageClassification:
    return BitForImageClassification(BitConfig.from_pretrained(folder))


def seconds(load, folder: Path) -> float:
    gc.collect()
    start = time.perf_counter()
    model = load(folder)
    elapsed = time.perf_counter() - start
    del model
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; seconds, median of {args.rounds} rounds")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "r101x3"
        BitForImageClassification(BitConfig(**R101X3)).save_pretrained(folder)
        before, after = load_before(folder).state_dict(), load_after(folder).state_dict()  # warm, and compared
        identical = before.keys() == after.keys() and all(torch.equal(before[key], after[key]) for key in before)
        del before, after
        paths = {"before (full build, then load)": load_before, "after (meta build, load)": load_after,
                 "full build alone": build_only}  # fmt: skip
        timings: dict[str, list[float]] = {name: [] for name in paths}
        for round_ in range(args.rounds):
            order = list(paths) if round_ % 2 == 0 else list(reversed(paths))
            for name in order:
                timings[name].append(seconds(paths[name], folder))
    for name, values in timings.items():
        print(f"{name:34} {statistics.median(values):6.2f} s  (min {min(values):.2f}, max {max(values):.2f})")
    ratio = statistics.median(timings["before (full build, then load)"]) / statistics.median(
        timings["after (meta build, load)"]
    )
    print(f"after is {ratio:.2f}× as fast; the two paths load identical tensors: {identical}")


if __name__ == "__main__":
    main()
