"""`bigtransfer export`: a model as a deployable ONNX or OpenVINO (float32 or int8) or torch.export directory, or
as a Triton model repository."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

from ._options import (
    add_data_argument,
    add_model_argument,
    add_out_argument,
    add_output_arguments,
    add_workers_argument,
    emit,
    load_data,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
)

# 24.08 or any later release: their ONNX Runtime (1.18+) reads the IR version 10 that torch's exporter writes
TRITON_IMAGE = "nvcr.io/nvidia/tritonserver:24.08-py3"


def serve_command(repository: str, gpu: bool = False) -> str:
    """The `docker run` that serves the model repository at `repository` (a path as the shell should read it)."""
    return (
        f"docker run --rm {'--gpus all ' if gpu else ''}-p8000:8000 -p8001:8001 -p8002:8002 "
        f"-v {repository}:/models {TRITON_IMAGE} tritonserver --model-repository=/models"
    )


def triton_name(args: argparse.Namespace) -> str:
    """--name, or one made from MODEL; checked before the model is loaded, which may be a download."""
    from ..checkpoints.naming import check_model_name, default_model_name

    name = args.name if args.name is not None else default_model_name(args.model)
    check_model_name(name)
    return name


def run_export(args: argparse.Namespace) -> dict:
    from ..deploy.export import export
    from ..deploy.triton import export_triton
    from ..models.modeling import BitForImageClassification
    from ..processing.exact import BitImageProcessor

    if args.int8 != bool(args.data):
        raise ValueError("--int8 needs --data DATA (real images to calibrate on), and --data needs --int8.")
    name = triton_name(args) if args.format == "triton" else None
    model = BitForImageClassification.from_pretrained(args.model)
    processor = BitImageProcessor.from_pretrained(args.model)
    calibration = None
    if args.int8:
        from ..deploy.quantize import Calibration

        calibration = Calibration(load_data(args.data, args.classes), processor, size=args.calibration_size,
                                  heldout=args.heldout_size, seed=args.seed, workers=args.workers)  # fmt: skip
    if args.format == "triton":
        report = export_triton(model, processor, args.out, name=name, max_batch_size=args.max_batch_size,
                               max_delay_ms=args.max_delay_ms, gpu=args.gpu, tolerance=args.tolerance,
                               overwrite=args.overwrite, int8=calibration)  # fmt: skip
    else:
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
    if report.get("max_abs_feature_difference") is not None:
        lines[-1] += f"; pooled features: {report['max_abs_feature_difference']:.2g}"
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
    triton = report.get("triton")
    if triton:
        repository = shlex.quote(str(Path(report["directory"]).resolve()))
        lines += [
            f"Triton model {triton['model_name']!r}: up to {triton['max_batch_size']} images per batch, gathered for "
            f"up to {triton['max_queue_delay_microseconds']} µs, one {triton['instance_kind']} instance; serve it with",
            "  " + serve_command(repository, gpu=triton["instance_kind"] == "KIND_GPU"),
        ]
    return lines


def handle(args: argparse.Namespace) -> int:
    emit(run_export(args), args.json, lambda report: print("\n".join(describe(report))))
    return 0


DESCRIPTION = """\
Write OUT/: model.onnx (or openvino_model.xml + .bin, or model.pt2) with weight standardisation folded
into the convolutions and a dynamic batch axis, plus config.json (labels), preprocessor_config.json and
export.json. The export is checked against the eager model on sample images and is written only if its
logits agree within --tolerance. predict, evaluate, serve and pipeline() run OUT with ONNX Runtime or
OpenVINO; an OpenVINO export also gives pooled features, so embed runs it too, and --bf16 compiles it in
bfloat16 on CPUs that have it (AMX or AVX512_BF16). `bigtransfer bench` says which is fastest here.

--format triton writes OUT as a Triton Inference Server model repository (KServe's Triton runtime takes
it too): OUT/NAME/config.pbtxt (dynamic batching), OUT/NAME/labels.txt (for the classification
extension) and OUT/NAME/1/, the checked ONNX export (float32, or int8) with its preprocessor_config.json.
Triton takes preprocessed float32 pixel_values, N×3×H×W: clients resize, crop and normalise as that file
says. An existing OUT gets the model added beside its others (refused if it holds one of that --name,
unless --overwrite), so that one repository serves several models: `bigtransfer serve OUT` serves them all."""

EPILOG = f"""\
int8: bigtransfer export MODEL OUT --int8 --data DATA quantizes convolutions and the head
(static, per-channel weights: fast on CPUs with AVX-512 VNNI, AVX-VNNI or AMX), calibrated on real images
and checked against float32 on held-out images of DATA. --format onnx uses ONNX Runtime's quantizer;
--format openvino uses NNCF (needs the openvino extra: pip install -e '.[openvino]'); `bigtransfer bench MODEL --int8`
says which int8 runs faster on this CPU.

Triton: bigtransfer export --model MODEL --out OUT --format triton, then serve OUT (24.08 or any later release):
  {serve_command("$PWD/OUT")}"""


def register(commands) -> None:
    parser = commands.add_parser(
        "export",
        help="export a model to ONNX or OpenVINO (float32 or int8), torch.export, or a Triton model repository",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_argument(parser, "the model to export", positional=True)
    add_out_argument(parser, "output directory (refused if it exists, unless --overwrite; with --format triton an "
                     "existing repository gets the model added, refused only if it has one of that --name)",
                     positional=True)  # fmt: skip
    parser.add_argument("--format", choices=["onnx", "openvino", "pt2", "triton"], default="onnx",
                        help="onnx (run with ONNX Runtime; default), openvino (OpenVINO IR), pt2 (a torch.export "
                        "program) or triton (a Triton model repository holding the onnx export)")  # fmt: skip
    parser.add_argument("--int8", action="store_true",
                        help="quantize to int8 (onnx, openvino and triton formats; needs --data)")  # fmt: skip
    add_data_argument(parser, "with --int8: the images to calibrate on (--calibration DATA is the same)",
                      required=False, metavar="DATA")  # fmt: skip
    parser.add_argument("--calibration", dest="data", help=argparse.SUPPRESS)
    parser.add_argument("--classes", help="calibrate on these classes of DATA only (comma-separated)")
    parser.add_argument("--calibration-size", type=positive_int, default=128, metavar="N",
                        help="calibration images, a seeded draw from DATA (default 128)")  # fmt: skip
    parser.add_argument("--heldout-size", type=non_negative_int, default=256, metavar="N",
                        help="other images of DATA on which int8 is compared with float32 (default 256)")  # fmt: skip
    parser.add_argument("--seed", type=int, default=0, help="seed of the calibration draw")
    parser.add_argument("--tolerance", type=positive_float, default=1e-4,
                        help="largest logit difference to eager an export may show (default 1e-4)")  # fmt: skip
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace OUT if it exists (--format triton: OUT/NAME, the other "
        "models kept), only once the new one is whole",
    )
    triton = parser.add_argument_group("Triton model repository (--format triton)")
    triton.add_argument("--name", help="the model's name in the repository and in request URLs (letters, digits, "
                        "'_', '-', '.'; default: from MODEL, e.g. bit-tiny-fashion5)")  # fmt: skip
    triton.add_argument("--max-batch-size", type=positive_int, default=32, metavar="N",
                        help="largest batch Triton forms from queued requests (default 32)")  # fmt: skip
    triton.add_argument("--max-delay-ms", type=non_negative_float, default=5.0, metavar="MS",
                        help="how long a request may wait for others to batch with (default 5)")  # fmt: skip
    triton.add_argument("--gpu", action="store_true", help="serve on a GPU (KIND_GPU) rather than the CPU")
    add_workers_argument(parser)
    add_output_arguments(parser, "print the export report as JSON", progress=False)
    parser.set_defaults(handler=handle)
