"""One short GPU check (run on a lent CUDA machine, not in CI): parity, half precision, processor, speed.

    PYTHONPATH=src python benchmarks/gpu_check.py

Compares bigtransfer with transformers and timm on the same weights on CUDA: fp32 logits, bf16
autocast, a .half() model, BitImageProcessorFast on the GPU, and inference time at batch 64.
"""

from __future__ import annotations

import statistics
import time

import numpy as np
import torch


def timed_ms(fn, x, repeats=10) -> float:
    with torch.inference_mode():
        for _ in range(3):
            fn(x)
        torch.cuda.synchronize()
        timings = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn(x)
            torch.cuda.synchronize()
            timings.append(time.perf_counter() - start)
    return 1000 * statistics.median(timings)


def main() -> None:
    import timm
    import transformers

    from bigtransfer import BitBackbone, BitConfig, BitForImageClassification, BitImageProcessor, BitImageProcessorFast
    from bigtransfer.checkpoints.timm import timm_to_bit_state_dict

    device = torch.device("cuda")
    print(torch.__version__, transformers.__version__, timm.__version__, torch.cuda.get_device_name())
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(0)
    timm_model = timm.create_model("resnetv2_50x1_bit", pretrained=False).eval().to(device)
    ours = BitForImageClassification(BitConfig(num_labels=1000)).eval().to(device)
    ours.load_state_dict(timm_to_bit_state_dict(timm_model.state_dict()))
    theirs = transformers.BitForImageClassification(transformers.BitConfig(num_labels=1000)).eval().to(device)
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(8, 3, 224, 224, device=device)
    with torch.inference_mode():
        reference = theirs(x).logits
        fp32 = ours(x).logits
        print(f"fp32 cuda: max|ours - transformers| {(fp32 - reference).abs().max().item():.2e}, "
              f"max|ours - timm| {(fp32 - timm_model(x)).abs().max().item():.2e}")  # fmt: skip
        with torch.autocast("cuda", dtype=torch.bfloat16):
            bf16 = ours(x).logits.float()
            bf16_theirs = theirs(x).logits.float()
        print(f"bf16 autocast: finite {bool(torch.isfinite(bf16).all())}, max|bf16 - fp32| "
              f"{(bf16 - fp32).abs().max().item():.3f} (transformers {(bf16_theirs - reference).abs().max().item():.3f}),"
              f" top-1 agreement {(bf16.argmax(-1) == fp32.argmax(-1)).float().mean().item():.2f}")  # fmt: skip
        half = BitForImageClassification(BitConfig(num_labels=1000)).eval().to(device)
        half.load_state_dict(ours.state_dict())
        half = half.half()
        out16 = half(x.half()).logits.float()
        print(
            f"fp16 model: finite {bool(torch.isfinite(out16).all())}, max|fp16 - fp32| {(out16 - fp32).abs().max().item():.3f}"
        )
        hybrid_kwargs = dict(layer_type="bottleneck", global_padding="same", embedding_dynamic_padding=True,
                             depths=[3, 4, 9], out_features=["stage1", "stage2", "stage3"])  # fmt: skip
        hf_backbone = transformers.BitBackbone(transformers.BitConfig(**hybrid_kwargs)).eval().to(device)
        backbone = BitBackbone(BitConfig(**hybrid_kwargs)).eval().to(device)
        backbone.load_state_dict(hf_backbone.state_dict())
        y = torch.randn(2, 3, 384, 384, device=device)
        diffs = [(a - b).abs().max().item() for a, b in zip(backbone(y).feature_maps, hf_backbone(y).feature_maps)]
        print(f"hybrid backbone fp32 cuda: max diff per map {[f'{d:.1e}' for d in diffs]}")

    import skimage.data
    from PIL import Image

    photos = [Image.fromarray(getattr(skimage.data, n)()) for n in ["chelsea", "coffee", "astronaut", "rocket"]] * 16
    exact = BitImageProcessor()(photos, return_tensors="np")["pixel_values"]
    fast_gpu = BitImageProcessorFast(device="cuda")(photos, return_tensors="pt")["pixel_values"]
    delta = np.abs(fast_gpu.cpu().numpy() - exact)
    print(
        f"fast processor on {fast_gpu.device}: max {delta.max():.4f} (budget {2 / 255 / 0.2613:.4f}), mean {delta.mean():.2e}"
    )

    for batch in (1, 64):
        z = torch.randn(batch, 3, 224, 224, device=device)
        for label, context in (("fp32", None), ("bf16-autocast", torch.bfloat16)):

            def run(model, t, context=context):
                if context is None:
                    return model(t)
                with torch.autocast("cuda", dtype=context):
                    return model(t)

            t_ours = timed_ms(lambda t: run(ours, t).logits, z)
            t_hf = timed_ms(lambda t: run(theirs, t).logits, z)
            t_timm = timed_ms(lambda t: run(timm_model, t), z)
            print(f"speed {label} batch {batch}: bigtransfer {t_ours:.2f} ms, transformers {t_hf:.2f} ms "
                  f"({t_hf / t_ours:.2f}x), timm {t_timm:.2f} ms ({t_timm / t_ours:.2f}x)")  # fmt: skip


if __name__ == "__main__":
    main()
