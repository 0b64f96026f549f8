"""Inference speed of BiT-R50x1 in bigtransfer, transformers and timm, same weights, same process.

    python benchmarks/bench_models.py [--sizes 224 448] [--batches 1 8] [--repeats 7]

Prints milliseconds per batch (median of --repeats) and our speed-up over each peer. All three
run the same random weights; their logits are checked to agree before timing.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import conftest  # noqa: F401  (torchvision shim so that transformers and timm import)


def median_ms(model, x, repeats: int) -> float:
    with torch.inference_mode():
        model(x)
        timings = []
        for _ in range(repeats):
            start = time.perf_counter()
            model(x)
            timings.append(time.perf_counter() - start)
    return 1000 * statistics.median(timings)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[224])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    import timm
    import transformers

    from bigtransfer import BitConfig, BitForImageClassification
    from bigtransfer.checkpoints.timm import timm_to_bit_state_dict

    torch.manual_seed(0)
    timm_model = timm.create_model("resnetv2_50x1_bit", pretrained=False).eval().to(args.device)
    ours = BitForImageClassification(BitConfig(num_labels=1000)).eval()
    ours.load_state_dict(timm_to_bit_state_dict(timm_model.state_dict()))
    theirs = transformers.BitForImageClassification(transformers.BitConfig(num_labels=1000)).eval()
    theirs.load_state_dict(ours.state_dict())
    ours, theirs = ours.to(args.device), theirs.to(args.device)
    print(f"torch {torch.__version__}, device {args.device}, {torch.get_num_threads()} threads; ms per batch")
    for size in args.sizes:
        for batch in args.batches:
            x = torch.randn(batch, 3, size, size, device=args.device)
            with torch.inference_mode():
                reference = timm_model(x)
                assert (ours(x).logits - reference).abs().max() < 1e-3
                assert (theirs(x).logits - reference).abs().max() < 1e-3
            times = {name: median_ms(model, x, args.repeats) for name, model in
                     [("bigtransfer", lambda t: ours(t).logits), ("transformers", lambda t: theirs(t).logits),
                      ("timm", timm_model)]}  # fmt: skip
            print(
                f"  {size}px batch {batch:3d}: bigtransfer {times['bigtransfer']:8.1f}  transformers "
                f"{times['transformers']:8.1f} ({times['transformers'] / times['bigtransfer']:4.2f}x)  timm "
                f"{times['timm']:8.1f} ({times['timm'] / times['bigtransfer']:4.2f}x)"
            )


if __name__ == "__main__":
    main()
