"""`bigtransfer shard`: a dataset as WebDataset tar shards with reduced images, for data read at scale."""

from __future__ import annotations

import argparse
from pathlib import Path

from .._util.text import byte_size, plural
from ._options import (
    add_data_argument,
    add_datasets_arguments,
    add_out_argument,
    add_output_arguments,
    add_workers_argument,
    emit,
    load_data,
    positive_int,
)


def register(commands) -> None:
    parser = commands.add_parser(
        "shard",
        help="write a dataset as WebDataset tar shards (reduced images, seeded order) for training at scale",
        description="Write OUT/shard-000000.tar … (one sample per image: <key>.jpg or .png and <key>.cls, or "
        '<key>.json {"labels": […]} for multi-label data) and OUT/dataset.json (classes, counts, image sizes). '
        "Images are written in a seeded random order, so every shard samples every class; a JPEG or PNG already "
        "within --max-side is stored as it is, others are reduced to it and stored as JPEG (quality 95). "
        "DATA and OUT may also be given positionally: `bigtransfer shard DATA OUT`. Train on them with --data OUT, a pattern such as 'OUT/shard-{000000..000099}.tar', or pipe:/https:// "
        "URLs of the shards (dataset.json is read beside them).",
        epilog="A dataset too large for the datasets cache: shard it once on a machine that can read it, then "
        "copy or serve the shards. Reading holds about 10 shards per loading process: keep shards near 100-200 MB.",
    )
    add_data_argument(parser, "the dataset to shard", positional=True)
    add_out_argument(
        parser, "the folder of shards to write (refused if it exists, unless --overwrite)", positional=True
    )
    parser.add_argument("--max-side", type=positive_int, default=512, metavar="PX",
                        help="reduce images whose longer side exceeds PX to PX (default 512: BiT fine-tunes at "
                        "up to 480 px, so nothing larger is ever used)")  # fmt: skip
    parser.add_argument("--shard-size", type=positive_int, default=2000, metavar="N",
                        help="images per shard (default 2000)")  # fmt: skip
    parser.add_argument("--seed", type=int, default=0, help="seed of the order the images are written in")
    parser.add_argument("--classes", help="write only these classes (comma-separated names or indices)")
    parser.add_argument("--multi-label", action="store_true", help="several classes per image (as for finetune)")
    hf = add_datasets_arguments(parser, "DATA", "train")
    hf.add_argument("--streaming", action="store_true",
                    help="stream DATA (a dataset name) instead of reading it through the datasets cache: each row "
                    "is read once and nothing is kept, for datasets larger than the disk; its labels must be a "
                    "ClassLabel")  # fmt: skip
    hf.add_argument("--shuffle-buffer", type=positive_int, default=10_000, metavar="N",
                    help="with --streaming: rows in the seeded shuffle buffer (default 10,000); "
                    "without it the whole dataset is shuffled")  # fmt: skip
    parser.add_argument("--overwrite", action="store_true", help="replace OUT if it exists (once the new one is whole)")
    add_workers_argument(parser)
    add_output_arguments(parser, "print dataset.json's summary as JSON")
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    from ..train.interrupts import stopped_at_once

    with stopped_at_once(f"stopped: nothing was written to {args.out} (its partial folder was removed)"):
        return _shard(args)


def _shard(args: argparse.Namespace) -> int:
    from ..data.datasets import ImageDataset
    from ..data.shard_writing import stream_shards, write_shards

    if args.streaming:
        if Path(args.data).exists() or args.classes:
            raise ValueError("--streaming reads a dataset by name, all of its classes; drop it for data on disk.")
        manifest = stream_shards(args.data, args.out, split=args.split, image_column=args.image_column,
                                 label_column=args.label_column, multi_label=args.multi_label, max_side=args.max_side,
                                 shard_size=args.shard_size, seed=args.seed, buffer_size=args.shuffle_buffer,
                                 overwrite=args.overwrite, progress=not args.quiet)  # fmt: skip
        return _report(args, manifest)
    dataset = load_data(args.data, args.classes, split=args.split, image_column=args.image_column,
                        label_column=args.label_column, multi_label=args.multi_label)  # fmt: skip
    if not isinstance(dataset, ImageDataset):
        raise ValueError(f"{args.data} is already sharded: train on it with --data {args.data}.")
    manifest = write_shards(dataset, args.out, max_side=args.max_side, shard_size=args.shard_size, seed=args.seed,
                            workers=args.workers, overwrite=args.overwrite, progress=not args.quiet)  # fmt: skip
    return _report(args, manifest)


def _report(args: argparse.Namespace, manifest: dict) -> int:
    summary = {key: manifest[key] for key in ("examples", "classes", "multi_label", "image_size", "skipped")}
    summary["shards"] = len(manifest["shards"])
    summary["bytes"] = sum(shard["bytes"] for shard in manifest["shards"])
    emit({"out": args.out, **summary}, args.json, _print_summary)
    return 0


def _print_summary(summary: dict) -> None:
    size = summary["image_size"]
    print(f"wrote {plural(summary['examples'], 'image')} of {plural(len(summary['classes']), 'class')} as "
          f"{plural(summary['shards'], 'shard')} ({byte_size(summary['bytes'])}) to {summary['out']}; median image {size['height']}×{size['width']}")  # fmt: skip
    for skipped in summary["skipped"]:
        print(f"skipped {skipped['image']}: {skipped['error']}")
