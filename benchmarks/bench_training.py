"""Fine-tuning throughput: `bigtransfer finetune` against the model-only step and a plain DataLoader pipeline.

    python benchmarks/bench_training.py                       # CPU: a decode-bound folder of large JPEGs
    PYTHONPATH=src python benchmarks/bench_training.py --preset gpu   # one GPU: R50x1, HyperRule 512 → 480

Every number comes from this run, on this machine. `bigtransfer finetune` runs as users run it (a
subprocess of the command line) with each --workers setting, in alternating rounds; its images/s
is the median of the per-step rates in metrics.jsonl, leaving out the first steps (worker start-up,
cuDNN tuning). Beside it, in this process: the same model and augmentation fed by a
torch DataLoader with workers (what timm or the transformers Trainer give), and the model-only step
on ready-made tensors (the ceiling). The GPU preset also times `--compile` at 224 px.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch

from bigtransfer import BitConfig, BitForImageClassification
from bigtransfer.data.sources import load_dataset
from bigtransfer.data.workers import available_cores, default_workers
from bigtransfer.train.augment import hyperrule_augment

PRESETS = {
    # decode-bound on 2 cores: camera-size JPEGs, a small model at 128 px
    "cpu": dict(images=96, size=(1600, 1200), resize=160, crop=128, batch=16, steps=30, skip=10, bf16=False,
                model="small", workers=[0, 2]),
    # the measurement: 3,000 photo-size JPEGs, R50x1, HyperRule 512 → 480, batch 128, bf16
    "gpu": dict(images=3000, size=(500, 375), resize=512, crop=480, batch=128, steps=18, skip=5, bf16=True,
                model="r50", workers=[0, None], serial_rounds=1),  # the serial path is slow: timed once
}  # fmt: skip
SMOKE = dict(images=48, size=(160, 120), resize=72, crop=64, batch=8, steps=6, skip=2, model="small", compile_crop=56)


def write_jpeg(job: tuple[Path, int, int, tuple[int, int]]) -> None:
    from PIL import Image

    root, label, index, (width, height) = job
    rng = np.random.default_rng([label, index])
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([np.sin(xx / (7 + label) + rng.uniform(0, 6)), np.cos(yy / (5 + label)), np.sin((xx + yy) / 11)])
    pixels = ((np.moveaxis(base, 0, -1) * 0.5 + 0.5) * 200 + rng.normal(0, 12, (height, width, 3))).clip(0, 255)
    (root / f"class{label}").mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels.astype(np.uint8)).save(root / f"class{label}" / f"{index:05d}.jpg", quality=90)


def make_folder(root: Path, images: int, size: tuple[int, int], classes: int = 10) -> Path:
    if root.exists():
        return root
    jobs = [(root, i % classes, i, size) for i in range(images)]
    with ProcessPoolExecutor(available_cores()) as pool:
        list(pool.map(write_jpeg, jobs, chunksize=16))
    return root


def make_upstream(path: Path, model: str) -> Path:
    torch.manual_seed(0)
    small = BitConfig(hidden_sizes=[32, 64, 128, 256], depths=[1, 1, 1, 1], embedding_size=32, num_groups=8)
    config = BitConfig(num_labels=1000) if model == "r50" else small
    BitForImageClassification(config).save_pretrained(path)
    return path


def run_finetune(upstream: Path, data: Path, out: Path, preset: dict, workers: int | None, extra=()) -> dict:
    command = [sys.executable, "-m", "bigtransfer", "finetune", "--model", str(upstream), "--data", str(data),
               "--out", str(out), "--batch-size", str(preset["batch"]), "--steps", str(preset["steps"]),
               "--resize", str(preset["resize"]), "--crop", str(preset["crop"]), "--quiet", "--json",
               *(["--bf16"] if preset["bf16"] else []), *(["--workers", str(workers)] if workers is not None else []),
               *extra]  # fmt: skip
    shutil.rmtree(out, ignore_errors=True)  # the benchmark's own run folder from an earlier invocation
    began = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode:
        raise RuntimeError(f"finetune failed:\n{result.stderr[-3000:]}")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steady = [row for row in rows if "images_per_s" in row][preset["skip"] :]
    summary = json.loads(result.stdout)
    # throughput over the timed steps: all their images over all their time (not a median of step rates,
    # which alternate when whole batches come from alternating workers)
    return {"img_s": len(steady) * preset["batch"] / sum(preset["batch"] / r["images_per_s"] for r in steady),
            "data_wait_s": statistics.median(r["data_wait_s"] for r in steady), "wall_s": time.perf_counter() - began,
            "workers": summary.get("workers"), "peak_gib": summary.get("cuda_peak_memory_gib")}  # fmt: skip


def training_step(model, optimizer, pixels, labels, bf16: bool) -> None:
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast(pixels.device.type, dtype=torch.bfloat16, enabled=bf16):
        logits = model(pixels).logits.float()
    torch.nn.functional.cross_entropy(logits, labels).backward()
    optimizer.step()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


class Augmented(torch.utils.data.Dataset):
    def __init__(self, data: Path, resize: int, crop: int):
        self.dataset = load_dataset(data)
        self.augment = functools.partial(hyperrule_augment, resize=resize, crop=crop, flip=True)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        pixels = self.augment(self.dataset.load(index), rng=np.random.default_rng(index))
        values = (torch.from_numpy(pixels.copy()).permute(2, 0, 1).float() / 255 - 0.5) / 0.5
        return values, int(self.dataset.labels[index])


def dataloader_rate(model, data: Path, preset: dict, workers: int, device: torch.device, channels_last: bool) -> float:
    """Images/s of the same model fed by a DataLoader (shuffle, workers, pinned memory), steady state."""
    loader = torch.utils.data.DataLoader(
        Augmented(data, preset["resize"], preset["crop"]), batch_size=preset["batch"], shuffle=True,
        num_workers=workers, pin_memory=device.type == "cuda", drop_last=True, persistent_workers=workers > 0,
        prefetch_factor=4 if workers else None,
    )  # fmt: skip
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    times, last = [], time.perf_counter()
    while len(times) < preset["steps"]:
        for pixels, labels in loader:
            pixels = pixels.to(device, non_blocking=True).contiguous(memory_format=memory_format)
            training_step(model, optimizer, pixels, labels.to(device, non_blocking=True), preset["bf16"])
            sync(device)
            now = time.perf_counter()
            times.append(now - last)
            last = now
            if len(times) >= preset["steps"]:
                break
    timed = times[preset["skip"] :]
    return preset["batch"] * len(timed) / sum(timed)


def model_only_rate(model, preset: dict, device: torch.device, channels_last: bool, repeats: int = 8) -> float:
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    pixels = torch.randn(preset["batch"], 3, preset["crop"], preset["crop"], device=device)
    pixels = pixels.contiguous(memory_format=memory_format)
    labels = torch.randint(0, 10, (preset["batch"],), device=device)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    for _ in range(3):
        training_step(model, optimizer, pixels, labels, preset["bf16"])
    sync(device)
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        training_step(model, optimizer, pixels, labels, preset["bf16"])
        sync(device)
        times.append(time.perf_counter() - began)
    return preset["batch"] / statistics.median(times)


def fresh_model(upstream: Path, device: torch.device, channels_last: bool):
    model = BitForImageClassification.from_pretrained(upstream, num_labels=10, ignore_mismatched_sizes=True)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    return model.train().to(device, memory_format=memory_format)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds of the finetune runs")
    parser.add_argument("--dataloader-workers", type=int, default=None, help="default: as many as finetune's default")
    parser.add_argument("--work", type=Path, default=None, help="folder for images and runs (default: a temp dir)")
    parser.add_argument("--compile", action="store_true", help="also time --compile at 224 px (GPU preset)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--smoke", action="store_true", help="toy sizes on the CPU, to try the script itself")
    args = parser.parse_args()
    preset = {**PRESETS[args.preset], **(SMOKE if args.smoke else {})}
    device = torch.device("cuda" if args.preset == "gpu" and not args.smoke else "cpu")
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-training-"))
    results: dict = {"preset": args.preset, "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
                     "cores": available_cores(), "torch": torch.__version__}  # fmt: skip
    began = time.perf_counter()
    data = make_folder(work / "images", preset["images"], preset["size"])
    upstream = make_upstream(work / "upstream", preset["model"])
    print(f"{preset['images']} JPEGs of {preset['size']} in {time.perf_counter() - began:.0f} s", flush=True)

    channels_last = device.type == "cuda"
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        layouts = {}
        for layout in (True, False):
            layouts[layout] = model_only_rate(fresh_model(upstream, device, layout), preset, device, layout)
        results["model_only_img_s_by_channels_last"] = {str(k): round(v, 1) for k, v in layouts.items()}
        channels_last = max(layouts, key=layouts.get)
    save(results, args.json)
    model = fresh_model(upstream, device, channels_last)
    results["model_only_img_s"] = round(model_only_rate(model, preset, device, channels_last), 1)
    loader_workers = args.dataloader_workers or default_workers()
    results["dataloader_img_s"] = round(dataloader_rate(model, data, preset, loader_workers, device, channels_last), 1)
    results["dataloader_workers"] = loader_workers
    print(json.dumps(results), flush=True)
    save(results, args.json)
    del model
    rounds: dict[str, list[dict]] = {}
    layout_flag = ["--channels-last" if channels_last else "--no-channels-last"]
    for round_index in range(args.rounds):
        for workers in preset["workers"]:
            if workers == 0 and round_index >= preset.get("serial_rounds", args.rounds):
                continue
            out = work / f"run-{workers}-{round_index}"
            outcome = run_finetune(upstream, data, out, preset, workers, layout_flag)
            rounds.setdefault(f"workers={outcome['workers']}", []).append(outcome)
            print(f"finetune --workers {workers}: {outcome}", flush=True)
            results["finetune_runs"] = rounds
            save(results, args.json)
    for name, outcomes in rounds.items():
        rate = statistics.median(o["img_s"] for o in outcomes)
        results[f"finetune_{name}"] = {"img_s": round(rate, 1), "rounds": [round(o["img_s"], 1) for o in outcomes],
                                       "data_wait_s": statistics.median(o["data_wait_s"] for o in outcomes),
                                       "vs_model_only": round(rate / results["model_only_img_s"], 2),
                                       "vs_dataloader": round(rate / results["dataloader_img_s"], 2)}  # fmt: skip
    serial = results.get("finetune_workers=0", {}).get("img_s")
    for name in rounds:
        if serial and name != "workers=0":
            results[f"finetune_{name}"]["vs_workers_0"] = round(results[f"finetune_{name}"]["img_s"] / serial, 2)
    if args.compile:
        results["compile"] = compile_comparison(upstream, work, preset)
    results["seconds"] = round(time.perf_counter() - began, 1)
    print(json.dumps(results, indent=1))
    save(results, args.json)


def save(results: dict, path: Path | None) -> None:
    """Results so far, so that a run cut short still reports what it measured."""
    if path is not None:
        path.write_text(json.dumps(results, indent=1) + "\n")


def compile_comparison(upstream: Path, work: Path, preset: dict) -> dict:
    """Eager vs --compile training at 224 px (the preset's batch and precision) on small JPEGs, so that
    loading is not the limit; the first steps (compilation) are left out of the rate."""
    crop = preset.get("compile_crop", 224)
    small = make_folder(work / "small-images", 1280 if crop == 224 else 64, (256, 192))
    setting = {**preset, "resize": crop * 8 // 7, "crop": crop, "steps": 30, "skip": 10}
    outcomes = {}
    for name, extra in (("eager", []), ("compiled", ["--compile"])):
        outcomes[name] = run_finetune(
            upstream, small, work / f"run-224-{name}", setting, None, ["--channels-last", *extra]
        )
        print(f"{crop} px {name}: {outcomes[name]}", flush=True)
    speedup = outcomes["compiled"]["img_s"] / outcomes["eager"]["img_s"]
    memory = (outcomes["compiled"]["peak_gib"] or 0) / max(outcomes["eager"]["peak_gib"] or 1e-9, 1e-9)
    return {**outcomes, "speedup": round(speedup, 2), "peak_memory_ratio": round(memory, 2)}


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
