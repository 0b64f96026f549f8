"""The cost of TensorBoard reporting on the README's main job: its `bigtransfer finetune` (bit-tiny-glyphs on 10 MNIST
digits per class, held-out top-1 every 100 steps) with `--report-to none` against `--report-to tensorboard`.

    PYTHONPATH=src python benchmarks/bench_tracking.py                      # the main job's 500 steps
    PYTHONPATH=src python benchmarks/bench_tracking.py --steps 200 --rounds 5

Both run as users run them (a subprocess of the command line each), in alternating rounds (none first in even
rounds, tensorboard first in odd ones), the whole comparison twice; each pass prints the medians of the command's
wall time and of the run's own training time (metrics.json "seconds": the loop with its evaluations), and their
ratio. The two runs of a round must end in bit-identical weights: reporting changes no update.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from safetensors.torch import load_file

# scripts/main_job.sh's fine-tuning, as it runs it
MAIN_JOB = ["--model", "bit-tiny-glyphs", "--shots", "10", "--seed", "0", "--batch-size", "32", "--resize", "36",
            "--crop", "32", "--eval-every", "100"]  # fmt: skip
TRACKERS = ("none", "tensorboard")


def finetune(data: Path, out: Path, report_to: str, steps: int | None) -> tuple[float, float]:
    """(wall seconds of the command, the run's training seconds)."""
    command = [sys.executable, "-m", "bigtransfer", "finetune", *MAIN_JOB, "--data", str(data / "train-images-idx3-ubyte.gz"),
               "--eval-data", str(data / "t10k-images-idx3-ubyte.gz"), "--out", str(out), "--quiet",
               "--report-to", report_to, *(["--steps", str(steps)] if steps else [])]  # fmt: skip
    began = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - began
    return wall, json.loads((out / "metrics.json").read_text())["seconds"]


def one_pass(data: Path, rounds: int, steps: int | None, root: Path) -> dict[str, dict[str, float]]:
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in TRACKERS}
    for round_ in range(rounds):
        order = TRACKERS if round_ % 2 == 0 else TRACKERS[::-1]
        outs = {name: root / f"{name}-{round_}" for name in order}
        for name in order:
            times[name].append(finetune(data, outs[name], name, steps))
        weights = [load_file(outs[name] / "model" / "model.safetensors") for name in TRACKERS]
        assert all((weights[0][key] == weights[1][key]).all() for key in weights[0]), "reporting changed the weights"
        assert (outs["tensorboard"] / "tensorboard").is_dir() and not (outs["none"] / "tensorboard").exists()
    return {name: {"wall": statistics.median(w for w, _ in runs), "train": statistics.median(t for _, t in runs)}
            for name, runs in times.items()}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("runs/mnist-5k"), help="scripts/setup.sh demo's digits")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per pass (default 3)")
    parser.add_argument("--steps", type=int, default=None, help="fewer steps than the main job's 500")
    args = parser.parse_args()
    if not (args.data / "t10k-labels-idx1-ubyte.gz").is_file():
        sys.exit(f"No digits in {args.data}: run 'bash scripts/setup.sh demo' first, or pass --data.")
    print(f"main job finetune, {args.steps or 'the HyperRule'}'s steps, {args.rounds} alternating rounds per pass")
    print(f"{'pass':>4}  {'none wall s':>11}  {'tb wall s':>9}  {'ratio':>6}  {'none train s':>12}  {'tb train s':>10}  "
          f"{'ratio':>6}")  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="bench-tracking-") as root:
        for number in (1, 2):
            medians = one_pass(args.data, args.rounds, args.steps, Path(root) / f"pass-{number}")
            none, board = medians["none"], medians["tensorboard"]
            print(f"{number:>4}  {none['wall']:>11.2f}  {board['wall']:>9.2f}  {board['wall'] / none['wall']:>6.3f}  "
                  f"{none['train']:>12.2f}  {board['train']:>10.2f}  {board['train'] / none['train']:>6.3f}", flush=True)  # fmt: skip
    print("weights bit-identical with and without reporting in every round")


if __name__ == "__main__":
    main()
