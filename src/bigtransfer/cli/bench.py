"""`bigtransfer bench`: the speed of a model on each runtime of this machine, to choose one by."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from ._options import add_model_argument, add_output_arguments, emit, load_data, positive_int


def comma_list(kind: type) -> Callable[[str], list]:
    def parse(text: str) -> list:
        try:
            values = [kind(part) for part in text.split(",") if part.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r}: give comma-separated values, e.g. 1,8") from None
        if not values or (kind is int and min(values) < 1):
            raise argparse.ArgumentTypeError(f"{text!r}: give one or more values, each at least 1")
        return values

    return parse


def run_bench(args: argparse.Namespace) -> dict:
    from ..deploy.bench import bench

    data = load_data(args.data, args.classes) if args.data else None
    return bench(args.model, batch_sizes=args.batch_size, runtimes=args.runtimes, int8=args.int8, bf16=args.bf16,
                 data=data, rounds=args.rounds, calls=args.calls, calibration_size=args.calibration_size)  # fmt: skip


def print_table(report: dict) -> None:
    cpu, height, width = report["cpu"], *report["input_size"]
    print(f"{report['model']}, {height}×{width} input, {report['images']}")
    print(f"CPU: {cpu['name']}, {cpu['threads']} threads; flags: {' '.join(cpu['flags']) or 'none of note'}")
    print(", ".join(f"{name} {version}" for name, version in report["versions"].items()))
    print(f"{report['rounds']} rounds × {report['calls']} warm calls, alternated; median (range) ms per batch; "
          "× = speed-up over torch float32")  # fmt: skip
    reference = "speedup_over_reference" in (report["results"] or [{}])[0]
    header = f"{'runtime':<13}{'precision':<10}{'batch':>5}  {'ms per batch':<24}{'images/s':>9}{'×':>7}"
    print(header + (f"{'× transformers':>16}" if reference else "") + f"{'max |Δ logit|':>15}{'top-1 =':>9}")
    for row in report["results"]:
        low, high = row["ms_range"]
        timing = f"{row['ms_per_batch']:.1f} ({low:.1f}–{high:.1f})"
        line = (f"{row['runtime']:<13}{row['precision']:<10}{row['batch_size']:>5}  {timing:<24}"
                f"{row['images_per_s']:>9.1f}{row['speedup']:>6.2f}×")  # fmt: skip
        if reference:
            line += f"{row['speedup_over_reference']:>15.2f}×"
        print(line + f"{row['max_abs_logit_difference']:>15.2g}{row['top1_agreement']:>9.0%}")
    for skipped in report["skipped"]:
        print(f"not timed: {skipped['path']} ({skipped['reason']})")


def handle(args: argparse.Namespace) -> int:
    emit(run_bench(args), args.json, print_table)
    return 0


DESCRIPTION = """\
Which runtime runs MODEL fastest here: eager PyTorch (always timed: the baseline), ONNX Runtime and
OpenVINO, each exported from MODEL into a scratch folder (float32; with --int8 also int8, with --bf16
also bfloat16 where the CPU has it). All paths run in this one process on the same images, in rounds
of one block of warm calls each, alternated, so that the machine's drift touches them alike; the table
gives the median and range over the rounds, images/s, the speed-up over eager PyTorch, the largest
logit difference to it and how often the top-1 class agrees. The CPU's name and its vector extensions
are printed beside the figures (AVX-512 VNNI and AMX decide int8 and bf16 speed)."""

EPILOG = """\
examples:
  bigtransfer bench bit-tiny-fashion5
  bigtransfer bench BiT-M-R50x1 --batch-size 1,8 --int8 --bf16 --data photos/ --json
  bigtransfer bench MODEL --runtimes torch,openvino,transformers   # also time transformers' BiT"""


def register(commands) -> None:
    parser = commands.add_parser(
        "bench",
        help="time a model on eager PyTorch, ONNX Runtime and OpenVINO (float32, int8, bf16) on this machine",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_argument(parser, "the model to time", positional=True)
    parser.add_argument("--batch-size", type=comma_list(int), default=[1, 8], metavar="N[,N…]",
                        help="batch sizes to time (default 1,8)")  # fmt: skip
    parser.add_argument("--runtimes", type=comma_list(str), default=["torch", "onnx", "openvino"],
                        metavar="NAME[,NAME…]", help="torch, onnx, openvino (default: all three; one not installed is "
                        "listed as not timed, with how to install it), and transformers to time transformers' BiT "
                        "with the same weights. Eager PyTorch float32 is always timed: it is the baseline")  # fmt: skip
    parser.add_argument("--int8", action="store_true", help="also time int8 exports (ONNX Runtime and OpenVINO)")
    parser.add_argument("--bf16", action="store_true",
                        help="also time bfloat16 (OpenVINO, and PyTorch autocast) where the CPU has it")  # fmt: skip
    parser.add_argument("--data", metavar="DATA", help="images to time on and to calibrate int8 with, in any form "
                        "--data takes (default: synthetic pictures; speed does not depend on them). bench compares "
                        "top-1 with eager on the timed batch only: measure accuracy with export --int8 and evaluate")  # fmt: skip
    parser.add_argument("--classes", help="use these classes of DATA only (comma-separated)")
    parser.add_argument("--calibration-size", type=positive_int, default=64, metavar="N",
                        help="images of DATA to calibrate int8 with (default 64)")  # fmt: skip
    parser.add_argument("--rounds", type=positive_int, default=5, help="timed rounds (default 5)")
    parser.add_argument("--calls", type=positive_int, default=3, help="warm calls per timed block (default 3)")
    add_output_arguments(parser, "print the measurements as JSON", progress=False)
    parser.set_defaults(handler=handle)
