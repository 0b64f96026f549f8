"""`bigtransfer export`: a model as a deployable ONNX (float32 or int8) or torch.export directory."""

from __future__ import annotations

import argparse

from ._options import (
    add_model_argument,
    add_out_argument,
    add_output_arguments,
    add_workers_argument,
    emit,
    load_data,
    non_negative_int,
    positive_float,
    positive_int,
)


def run_export(args: argparse.Namespace) -> dict:
    from ..deploy.export import export
    from ..models.modeling import BitForImageClassification
    from ..processing.exact import BitImageProcessor

    if args.int8 != bool(args.calibration):
        raise ValueError("--int8 needs --calibration DATA (real images to calibrate on), and vice versa.")
    model = BitForImageClassification.from_pretrained(args.model)
    processor = BitImageProcessor.from_pretrained(args.model)
    calibration = None
    if args.int8:
        from ..deploy.quantize import Calibration

        calibration = Calibration(load_data(args.calibration, args.classes), processor, size=args.calibration_size,
                                  heldout=args.heldout_size, seed=args.seed, workers=args.workers)  # fmt: skip
    report = export(model, processor, args.out, format=args.format, tolerance=args.tolerance,
                    overwrite=args.overwrite, int8=calibration)  # fmt: skip
    return report.to_dict()


def describe(report: dict) -> list[str]:
    height, width = report["input_size"]
    lines = [
        f"exported to {report['directory']} ({report['format']}, {report['precision']}, {height}×{width} input, "
        f"any batch size) in {report['seconds']} s",
        f"largest logit difference to the eager model: {report['max_abs_logit_difference']:.2g} (float32 graph)",
    ]
    int8 = report.get("int8")
    if int8:
        line = f"int8: calibrated on {int8['calibration_images']} images"
        if int8["heldout_images"]:
            line += f"; on {int8['heldout_images']} held-out images top-1 agrees with float32 for {int8['top1_agreement']:.1%}"
            if "int8_top1" in int8:
                line += f" (top-1 accuracy: float32 {int8['float32_top1']:.1%}, int8 {int8['int8_top1']:.1%})"
        else:
            line += " (no held-out images left to measure agreement on)"
        lines.append(line)
    return lines


def handle(args: argparse.Namespace) -> int:
    emit(run_export(args), args.json, lambda report: print("\n".join(describe(report))))
    return 0


def register(commands) -> None:
    parser = commands.add_parser(
        "export",
        help="export a model to ONNX (float32 or int8) or torch.export for deployment",
        description="Write OUT/: model.onnx (or model.pt2) with weight standardisation folded into the "
        "convolutions and a dynamic batch axis, plus config.json (labels), preprocessor_config.json and "
        "export.json. The export is checked against the eager model on sample images and is written only if "
        "its logits agree within --tolerance. predict, evaluate and pipeline() run OUT with ONNX Runtime.",
        epilog="int8: bigtransfer export --model MODEL --out OUT --int8 --calibration DATA quantizes convolutions and the head "
        "(static, per-channel, u8 activations / s8 weights: fast on CPUs with AVX-512 VNNI or AVX-VNNI), "
        "calibrated on real images and checked against float32 on held-out images of DATA.",
    )
    add_model_argument(parser, "the model to export", positional=True)
    add_out_argument(parser, "output directory (refused if it exists, unless --overwrite)", positional=True)
    parser.add_argument("--format", choices=["onnx", "pt2"], default="onnx",
                        help="onnx (run with ONNX Runtime; default) or pt2 (a torch.export program)")  # fmt: skip
    parser.add_argument("--int8", action="store_true", help="quantize to int8 (ONNX only; needs --calibration)")
    parser.add_argument("--calibration", metavar="DATA",
                        help="images to calibrate int8 on, in any form --data takes (folder, CSV, IDX, datasets dir)")  # fmt: skip
    parser.add_argument("--classes", help="calibrate on these classes of DATA only (comma-separated)")
    parser.add_argument("--calibration-size", type=positive_int, default=128, metavar="N",
                        help="calibration images, a seeded draw from DATA (default 128)")  # fmt: skip
    parser.add_argument("--heldout-size", type=non_negative_int, default=256, metavar="N",
                        help="other images of DATA on which int8 is compared with float32 (default 256)")  # fmt: skip
    parser.add_argument("--seed", type=int, default=0, help="seed of the calibration draw")
    parser.add_argument("--tolerance", type=positive_float, default=1e-4,
                        help="largest logit difference to eager an export may show (default 1e-4)")  # fmt: skip
    parser.add_argument(
        "--overwrite", action="store_true", help="replace OUT if it exists (only once the new one is whole)"
    )
    add_workers_argument(parser)
    add_output_arguments(parser, "print the export report as JSON", progress=False)
    parser.set_defaults(handler=handle)
