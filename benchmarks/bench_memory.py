"""Gradient checkpointing: peak memory and step time of one training step, with and without it.

    python benchmarks/bench_memory.py                  # CPU: R50x1 at 224 px, batch 32, peak RSS
    python benchmarks/bench_memory.py --preset gpu     # CUDA: R152x4 at 480 px, batch 8, bf16, peak allocated

Each measurement runs in a fresh process (peak RSS only grows), alternating plain and checkpointed,
`--repeats` times each; the script prints the medians and the saving. Weights are random (Kaiming):
memory and time do not depend on their values.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

PRESETS = {
    "cpu": dict(arch=dict(depths=[3, 4, 6, 3], width_factor=1), size=224, batch=32, device="cpu", bf16=False),
    "gpu": dict(arch=dict(depths=[3, 8, 36, 3], width_factor=4), size=480, batch=8, device="cuda", bf16=True),
}

STEP = """
import json, resource, sys, time, torch
from bigtransfer import BitConfig, BitForImageClassification
settings, checkpointing = json.loads(sys.argv[1]), sys.argv[2] == "1"
device = torch.device(settings["device"])
torch.manual_seed(0)
model = BitForImageClassification(BitConfig(**settings["arch"], layer_type="preactivation", num_labels=1000)).to(device)
if checkpointing:
    model.gradient_checkpointing_enable()
pixels = torch.randn(settings["batch"], 3, settings["size"], settings["size"], device=device)
labels = torch.randint(0, 1000, (settings["batch"],), device=device)
model.train()
times = []
for _ in range(3):  # the first step warms up allocators and kernels
    began = time.perf_counter()
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=settings["bf16"]):
        loss = model(pixels, labels=labels).loss
    loss.backward()
    model.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
    times.append(time.perf_counter() - began)
peak = (torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20)
print(json.dumps({"peak_gib": peak, "step_s": min(times[1:])}))
"""


def measure(settings: dict, checkpointing: bool) -> dict:
    done = subprocess.run([sys.executable, "-c", STEP, json.dumps(settings), "1" if checkpointing else "0"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    settings = PRESETS[args.preset]
    runs = {False: [], True: []}
    for _ in range(args.repeats):
        for checkpointing in (False, True):
            runs[checkpointing].append(measure(settings, checkpointing))
    result = {}
    for checkpointing, label in ((False, "plain"), (True, "checkpointed")):
        result[label] = {key: statistics.median(r[key] for r in runs[checkpointing]) for key in ("peak_gib", "step_s")}
    memory = "peak RSS" if settings["device"] == "cpu" else "CUDA peak allocated"
    print(f"{args.preset}: batch {settings['batch']} at {settings['size']} px, {memory}, median of {args.repeats}")
    for label, row in result.items():
        print(f"  {label:13s} {row['peak_gib']:.2f} GiB   {row['step_s']:.2f} s/step")
    saving = 1 - result["checkpointed"]["peak_gib"] / result["plain"]["peak_gib"]
    slowdown = result["checkpointed"]["step_s"] / result["plain"]["step_s"]
    print(f"  checkpointing: {saving:.0%} less memory, step time ×{slowdown:.2f}")


if __name__ == "__main__":
    main()
