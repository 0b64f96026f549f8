"""Deployment paths of BiT-R50x1 against transformers and timm, same weights, one process.

    python benchmarks/bench_deploy.py                    # CPU: batch 1 and 8 at 224 px
    python benchmarks/bench_deploy.py --device cuda      # GPU: batch 256 bf16, eager vs compiled

CPU contenders: transformers eager, timm eager, ours eager (contiguous and channels-last), ours
torch.compile'd, ONNX Runtime float32 and int8 (both from `bigtransfer export`; int8 calibrated on
scikit-image's photos). Every round times a block of warm calls of each contender in turn (each
block starts with one untimed call); the table gives the median ms per batch over the rounds and the
ratio to transformers (higher = faster). float32 logits must agree within 1e-3 before timing; for
int8 the difference and top-1 agreement are printed (with random weights on random inputs the
classes are near-ties, so agreement there says little: see `bigtransfer export --int8`'s report).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import conftest  # noqa: F401  (torchvision shim so that transformers and timm import)
from bigtransfer.deploy.bench import alternate


def sample_photos(directory: Path):
    """scikit-image's photos as a dataset: int8 calibration data that needs no download."""
    import numpy as np
    import skimage.data
    from PIL import Image

    from bigtransfer.data.datasets import ImageDataset

    names = ["astronaut", "camera", "cat", "chelsea", "coffee", "hubble_deep_field", "immunohistochemistry", "retina",
             "rocket", "colorwheel", "logo", "coins", "moon", "brick", "grass", "gravel", "stereo_motorcycle"]  # fmt: skip
    paths = []
    for name in names:
        image = getattr(skimage.data, name)()
        Image.fromarray(image[0] if isinstance(image, tuple) else image).save(directory / f"{name}.png")
        paths.append(directory / f"{name}.png")
    return ImageDataset(np.zeros(len(paths), dtype=np.int64), ["photo"], "scikit-image photos", paths=paths)


def reference_models(device: str):
    """transformers, timm and ours with the same random R50x1 weights: Kaiming-normal convolutions and GroupNorm
    affines near 1/0 (timm's own init zeroes every residual branch's last kernel, which leaves int8 calibration a
    degenerate network to calibrate)."""
    import timm
    import transformers

    from bigtransfer import BitConfig, BitForImageClassification
    from bigtransfer.checkpoints.timm import timm_to_bit_state_dict
    from helpers import randomize_norms

    torch.manual_seed(0)
    timm_model = timm.create_model("resnetv2_50x1_bit", pretrained=False).eval()
    for module in timm_model.modules():
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
    randomize_norms(timm_model)
    ours = BitForImageClassification(BitConfig(num_labels=1000)).eval()
    ours.load_state_dict(timm_to_bit_state_dict(timm_model.state_dict()))
    theirs = transformers.BitForImageClassification(transformers.BitConfig(num_labels=1000)).eval()
    theirs.load_state_dict(ours.state_dict())
    return theirs.to(device), timm_model.to(device), ours.to(device)


def photo_batch(photos, batch: int, device: str) -> torch.Tensor:
    """`batch` preprocessed photos (224 px), repeating the set as needed: real inputs, so that the int8
    model is timed on the activations it was calibrated for."""
    from bigtransfer import BitImageProcessor

    images = [photos.load(i % len(photos)) for i in range(batch)]
    return BitImageProcessor()(images, return_tensors="pt")["pixel_values"].to(device)


def cpu_contenders(photos, scratch: Path, skip: list[str]) -> dict:
    import copy

    from bigtransfer import BitImageProcessor
    from bigtransfer.deploy.export import export
    from bigtransfer.deploy.quantize import Calibration
    from bigtransfer.runtime.exported import ExportedClassifier

    theirs, timm_model, ours = reference_models("cpu")
    channels_last = copy.deepcopy(ours).to(memory_format=torch.channels_last)
    processor = BitImageProcessor()
    export(ours, processor, scratch / "float32")
    report = export(ours, processor, scratch / "int8", int8=Calibration(photos, processor, size=12, heldout=5))
    print(f"int8: {report.int8}", file=sys.stderr)
    float32, int8 = ExportedClassifier(scratch / "float32"), ExportedClassifier(scratch / "int8")
    compiled = torch.compile(copy.deepcopy(ours))
    contenders = {
        "transformers": lambda x: theirs(x).logits,
        "timm": timm_model,
        "ours eager": lambda x: ours(x).logits,
        "ours channels-last": lambda x: channels_last(x.contiguous(memory_format=torch.channels_last)).logits,
        "ours compiled": lambda x: compiled(x).logits,
        "ONNX float32": lambda x: float32(x).logits,
        "ONNX int8": lambda x: int8(x).logits,
    }
    return {name: function for name, function in contenders.items() if name not in skip}


def gpu_contenders(device: str, skip: list[str]) -> dict:
    """bf16 autocast, channels-last: transformers, ours eager and ours compiled (`--preset gpu --device cpu`
    runs the same code on the CPU as a quick check of the script)."""
    import copy

    theirs, _, ours = reference_models(device)
    ours = ours.to(memory_format=torch.channels_last)
    compiled = torch.compile(copy.deepcopy(ours))

    def bf16(model):
        def run(x):
            with torch.autocast(x.device.type, dtype=torch.bfloat16):
                return model(x.contiguous(memory_format=torch.channels_last)).logits

        return run

    contenders = {"transformers": bf16(theirs), "ours eager": bf16(ours), "ours compiled": bf16(compiled)}
    return {name: function for name, function in contenders.items() if name not in skip}


def check_agreement(contenders: dict, x: torch.Tensor, float32: bool) -> None:
    with torch.inference_mode():
        reference = contenders["transformers"](x).float()
        for name, function in contenders.items():
            logits = function(x).float()
            agreement = (logits.argmax(-1) == reference.argmax(-1)).float().mean().item()
            if float32 and "int8" not in name:
                assert (logits - reference).abs().max() < 1e-3, f"{name} disagrees with transformers"
            print(f"  {name:20s} max |Δ logits| {(logits - reference).abs().max().item():.2e}, top-1 agreement "
                  f"{agreement:.0%}", file=sys.stderr)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--preset", choices=["cpu", "gpu"], default=None, help="contenders (default: by --device)")
    parser.add_argument("--batches", type=int, nargs="+", default=None, help="default: 1 8 on CPU, 256 on CUDA")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=3, help="warm calls per timed block")
    parser.add_argument("--skip", nargs="*", default=[], help="contenders to leave out, e.g. 'ours compiled'")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    gpu = (args.preset or ("gpu" if args.device.startswith("cuda") else "cpu")) == "gpu"
    batches = args.batches or ([256] if gpu else [1, 8])
    with tempfile.TemporaryDirectory() as scratch:
        photos = sample_photos(Path(scratch))
        contenders = gpu_contenders(args.device, args.skip) if gpu else cpu_contenders(photos, Path(scratch), args.skip)
        print(f"torch {torch.__version__}, {args.device}, {torch.get_num_threads()} threads, 224 px photos, "
              f"{args.rounds} rounds × {args.calls} calls; ms per batch (× = speed relative to transformers)")  # fmt: skip
        results = {}
        for batch in batches:
            x = photo_batch(photos, batch, args.device)
            check_agreement(contenders, x, float32=not gpu)
            results[batch] = {
                name: statistics.median(times)
                for name, times in alternate(contenders, x, args.rounds, args.calls).items()
            }
            base = results[batch]["transformers"]
            cells = [f"{name} {ms:.1f} ({base / ms:.2f}×)" for name, ms in results[batch].items()]
            print(f"batch {batch:3d}: " + " | ".join(cells), flush=True)
    if args.json:
        print(json.dumps({str(batch): times for batch, times in results.items()}, indent=2))


if __name__ == "__main__":
    main()
