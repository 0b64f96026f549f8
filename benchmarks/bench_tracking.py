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
import resource
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
FIGURES = ("wall", "cpu", "train")  # seconds: the command's, the CPU's, the run's own training loop


def finetune(data: Path, out: Path, report_to: str, steps: int | None) -> tuple[float, float, float]:
    """(wall seconds of the command, the CPU seconds it and its loading workers used, the run's training seconds).
    CPU time is the figure least moved by other work on a shared machine; the writer thread's cost is in it."""
    command = [sys.executable, "-m", "bigtransfer", "finetune", *MAIN_JOB, "--data", str(data / "train-images-idx3-ubyte.gz"),
               "--eval-data", str(data / "t10k-images-idx3-ubyte.gz"), "--out", str(out), "--quiet",
               "--report-to", report_to, *(["--steps", str(steps)] if steps else [])]  # fmt: skip
    used, began = _children_cpu(), time.perf_counter()
    finished = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wall, cpu = time.perf_counter() - began, _children_cpu() - used
    if finished.returncode:
        sys.exit(f"{' '.join(command)} failed:\n{finished.stderr}")
    return wall, cpu, json.loads((out / "metrics.json").read_text())["seconds"]


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)  # ended children and the descendants they waited for
    return usage.ru_utime + usage.ru_stime


def one_pass(data: Path, rounds: int, steps: int | None, root: Path) -> dict[str, dict[str, float]]:
    times: dict[str, list[tuple[float, float, float]]] = {name: [] for name in TRACKERS}
    for round_ in range(rounds):
        order = TRACKERS if round_ % 2 == 0 else TRACKERS[::-1]
        outs = {name: root / f"{name}-{round_}" for name in order}
        for name in order:
            times[name].append(finetune(data, outs[name], name, steps))
        weights = [load_file(outs[name] / "model" / "model.safetensors") for name in TRACKERS]
        assert all((weights[0][key] == weights[1][key]).all() for key in weights[0]), "reporting changed the weights"
        assert (outs["tensorboard"] / "tensorboard").is_dir() and not (outs["none"] / "tensorboard").exists()
    return {name: dict(zip(FIGURES, (statistics.median(run[i] for run in runs) for i in range(len(FIGURES)))))
            for name, runs in times.items()}  # fmt: skip


def row_cost(root: Path, rows: int = 2000) -> float:
    """Seconds the loop spends handing one metrics.jsonl row to TensorBoard (the median over `rows`): the part of
    the overhead that grows with the steps, measured apart from the noise of whole runs."""
    from bigtransfer.train.tracking.base import Trackers
    from bigtransfer.train.tracking.tensorboard import TensorBoardTracker

    trackers = Trackers(lambda step: [TensorBoardTracker(root, {}, step)])
    trackers.start(0)
    costs = []
    for step in range(1, rows + 1):
        began = time.perf_counter()
        trackers.log_training(
            {"step": step, "lr": 0.003, "loss": 1.0 / step, "data_wait_s": 0.001, "images_per_s": 900.0}
        )
        costs.append(time.perf_counter() - began)
    trackers.close("FINISHED")
    return statistics.median(costs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("runs/mnist-5k"), help="scripts/setup.sh demo's digits")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per pass (default 3)")
    parser.add_argument("--steps", type=int, default=None, help="fewer steps than the main job's 500")
    args = parser.parse_args()
    if not (args.data / "t10k-labels-idx1-ubyte.gz").is_file():
        sys.exit(f"No digits in {args.data}: run 'bash scripts/setup.sh demo' first, or pass --data.")
    print(f"main job finetune, {args.steps or 'the HyperRule'} steps, {args.rounds} alternating rounds per pass")
    print("pass  " + "  ".join(f"{figure + ' none':>10}  {figure + ' tb':>8}  {'ratio':>6}" for figure in FIGURES))
    with tempfile.TemporaryDirectory(prefix="bench-tracking-") as root:
        for number in (1, 2):
            medians = one_pass(args.data, args.rounds, args.steps, Path(root) / f"pass-{number}")
            none, board = medians["none"], medians["tensorboard"]
            print(f"{number:>4}  " + "  ".join(f"{none[f]:>10.2f}  {board[f]:>8.2f}  {board[f] / none[f]:>6.3f}"
                                              for f in FIGURES), flush=True)  # fmt: skip
        cost = row_cost(Path(root) / "rows")
        steps = args.steps or 500
        print("weights bit-identical with and without reporting in every round")
        print(f"one row to TensorBoard: {cost * 1e6:.0f} µs; ×{steps} steps = {cost * steps:.3f} s "
              f"({100 * cost * steps / none['train']:.2f} % of the last pass's training time)")  # fmt: skip


if __name__ == "__main__":
    main()
