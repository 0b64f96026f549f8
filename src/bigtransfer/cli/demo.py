"""`bigtransfer demo`: a short offline tour of the model API."""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time
from pathlib import Path

from .._util.package import install_hint
from ._options import emit


def _demo_image(path: str | None):
    if path:
        return path, path
    try:
        import skimage.data
    except ImportError:
        raise ImportError(
            f"The demo photo comes from scikit-image: {install_hint('demo')}, or pass --image PATH."
        ) from None
    from PIL import Image

    return Image.fromarray(skimage.data.chelsea()), "scikit-image chelsea (a cat)"


def run_demo(args: argparse.Namespace) -> dict:
    """Build a BiT-R50x1, save it, reload it, check both agree, and classify a photo."""
    with contextlib.ExitStack() as cleanup:  # without --out the saved model is removed at the end (≈100 MB)
        out = Path(args.out or cleanup.enter_context(tempfile.TemporaryDirectory(prefix="bigtransfer-demo-")))
        result = _save_reload_classify(args, out)
    return result | {"saved_to": str(out) if args.out else "a temporary directory, removed (keep it with --out DIR)"}


def _save_reload_classify(args: argparse.Namespace, out: Path) -> dict:
    import torch

    from ..models.config import BitConfig
    from ..models.modeling import BitForImageClassification
    from ..processing.exact import BitImageProcessor

    torch.manual_seed(args.seed)
    config = BitConfig(num_labels=args.num_labels)
    model = BitForImageClassification(config).eval()
    model.save_pretrained(out)
    reloaded = BitForImageClassification.from_pretrained(out)
    processor = BitImageProcessor()
    processor.save_pretrained(out)
    image, image_name = _demo_image(args.image)
    pixel_values = BitImageProcessor.from_pretrained(out)(image, return_tensors="pt")["pixel_values"]
    start = time.perf_counter()
    with torch.inference_mode():
        logits = reloaded(pixel_values).logits
        same = torch.equal(logits, model(pixel_values).logits)
    elapsed = time.perf_counter() - start
    probabilities = logits.softmax(-1)[0]
    top = probabilities.topk(min(args.top_k, probabilities.numel()))
    return {
        "model": f"BiT-R50x1 (random weights, seed {args.seed}: no pretrained checkpoint is needed offline)",
        "parameters": reloaded.num_parameters(),
        "reloaded_logits_identical": same,
        "image": image_name,
        "input_shape": list(pixel_values.shape),
        "seconds": round(elapsed, 3),
        "top_k": [
            {"label": config.id2label[int(i)], "score": round(float(p), 6)} for p, i in zip(top.values, top.indices)
        ],
    }


def _print_demo(result: dict) -> None:
    print(f"{result['model']}: {result['parameters']:,} parameters, saved to {result['saved_to']}")
    print(f"reloaded from disk, logits identical to the saved model: {result['reloaded_logits_identical']}")
    print(f"{result['image']} → pixel_values {result['input_shape']}, forward in {result['seconds']} s")
    for rank, entry in enumerate(result["top_k"], 1):
        print(f"  {rank}. {entry['label']:<12} {entry['score']:.4f}")


def handle(args: argparse.Namespace) -> int:
    if args.out and (Path(args.out) / "model.safetensors").exists():
        raise FileExistsError(f"{args.out} already holds a model: choose another --out (nothing was overwritten).")
    result = run_demo(args)
    emit(result, args.json, _print_demo)
    return 0


def register(commands) -> None:
    demo = commands.add_parser(
        "demo",
        help="offline tour: build a BiT-R50x1, save, reload and classify a photo",
        description="Build a BiT-R50x1 (random weights), save it with its preprocessor config, reload both, "
        "verify the reload gives identical logits and print the top-k classes of a photo.",
    )
    demo.add_argument("--out", help="directory to save the model into (default: a temporary one, removed afterwards)")
    demo.add_argument("--image", help="photo to classify (default: scikit-image's cat)")
    demo.add_argument("--num-labels", type=int, default=1000, help="head size (default 1000)")
    demo.add_argument("--top-k", type=int, default=5, help="how many classes to print (default 5)")
    demo.add_argument("--seed", type=int, default=0, help="seed for the random weights (default 0)")
    demo.add_argument("--json", action="store_true", help="print the result as JSON")
    demo.set_defaults(handler=handle)
