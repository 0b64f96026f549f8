"""WebDataset tar shards: `bigtransfer shard` writes them, every command reads them (folder, pattern, pipe:,
http://), and training on them keeps the guarantees of the folder readers — the same weights whatever the
workers, after kill -9 and --resume, and from two processes as from one."""

from __future__ import annotations

import functools
import http.server
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from bigtransfer import BitConfig, BitForImageClassification
from bigtransfer.cli import main as cli
from bigtransfer.data import shards as shards_module
from bigtransfer.data.order import LaneOrder, lane_count
from bigtransfer.data.shards import open_shards
from bigtransfer.data.sources import load_dataset
from helpers import TINY, kill_one_row_past_a_checkpoint, max_abs_diff, png_header

SIZES = [(40, 30), (24, 56), (32, 32)]  # (width, height): three sizes, as photo collections have
CLASSES = ("cat", "dog", "owl")


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """3 classes × 8 images of three sizes, PNG and JPEG, with class-dependent colour (learnable)."""
    root = tmp_path_factory.mktemp("photos") / "photos"
    rng = np.random.default_rng(0)
    for label, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True)
        for i in range(8):
            width, height = SIZES[i % 3]
            pixels = np.clip(rng.normal(60 + 60 * label, 30, (height, width, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.{'png' if i % 2 else 'jpg'}")
    return root


@pytest.fixture(scope="module")
def sharded(photos, tmp_path_factory):
    """The photos as shards of 5, nothing reduced (max side 64): byte-identical images."""
    out = tmp_path_factory.mktemp("shards") / "shards"
    assert cli(["shard", str(photos), str(out), "--shard-size", "5", "--max-side", "64", "--quiet"]) == 0
    return out


@pytest.fixture(scope="module")
def upstream(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("upstream") / "upstream"
    BitForImageClassification(BitConfig(**{**TINY, "num_labels": 3})).save_pretrained(path)
    return path


def finetune(upstream, data, out, *extra):
    command = ["finetune", "--model", str(upstream), "--data", str(data), "--out", str(out), "--batch-size", "8",
               "--steps", "6", "--resize", "24", "--crop", "20", "--seed", "3", "--mixup", "0.4", "--quiet", *extra]  # fmt: skip
    assert cli(command) == 0
    return load_file(out / "model" / "model.safetensors")


def tar_names(path) -> list[str]:
    with tarfile.open(path) as tar:
        return tar.getnames()


def same(a, b) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


# -- writing ---------------------------------------------------------------------------------------------------


def test_shard_writes_tars_and_a_manifest_with_counts_classes_and_sizes(sharded, photos):
    manifest = json.loads((sharded / "dataset.json").read_text())
    assert manifest["classes"] == list(CLASSES) and manifest["examples"] == 24 and manifest["class_counts"] == [8] * 3
    assert [s["name"] for s in manifest["shards"]] == [f"shard-{i:06d}.tar" for i in range(5)]
    assert [s["examples"] for s in manifest["shards"]] == [5, 5, 5, 5, 4]
    assert manifest["image_size"]["height"] == 32 and manifest["image_size"]["width"] == 32
    with tarfile.open(sharded / "shard-000000.tar") as tar:
        names = tar.getnames()
        assert all(info.mtime == 0 for info in tar.getmembers())  # no timestamps: the same data, the same bytes
        stored = {name: tar.extractfile(name).read() for name in names}
    keys = sorted({name.split(".")[0] for name in names})
    assert [int(key) for key in keys] != list(range(5))  # a seeded shuffle of the whole set, not the folder's order
    for key in keys:  # key = the folder's index: class-major, files in sorted order
        index = int(key)
        image = next(name for name in stored if name.startswith(key) and not name.endswith(".cls"))
        source = photos / CLASSES[index // 8] / f"{index % 8}.{image.split('.')[1]}"
        assert stored[image] == source.read_bytes()  # small JPEG/PNG files are stored as they are
        assert stored[f"{key}.cls"] == str(index // 8).encode()


def test_large_images_are_reduced_to_max_side_and_the_order_is_seeded(photos, tmp_path, capsys):
    assert cli(["shard", str(photos), str(tmp_path / "a"), "--max-side", "20", "--shard-size", "10", "--quiet"]) == 0
    assert cli(["shard", str(photos), str(tmp_path / "b"), "--max-side", "20", "--shard-size", "10", "--quiet"]) == 0
    assert (tmp_path / "a" / "shard-000000.tar").read_bytes() == (tmp_path / "b" / "shard-000000.tar").read_bytes()
    reduced = open_shards(str(tmp_path / "a"))
    sizes = [reduced.example(i)[0].size for i in range(len(reduced))]
    assert max(max(size) for size in sizes) == 20 and {(20, 15), (9, 20)} <= set(sizes)  # aspect kept
    assert reduced.manifest["max_side"] == 20
    assert cli(["shard", str(photos), str(tmp_path / "a"), "--quiet"]) == 2
    assert "already exists: choose another output path, or pass --overwrite" in capsys.readouterr().err
    assert cli(["shard", str(photos), str(tmp_path / "a"), "--quiet", "--overwrite", "--seed", "1"]) == 0
    assert (tmp_path / "a" / "shard-000000.tar").read_bytes() != (tmp_path / "b" / "shard-000000.tar").read_bytes()


def test_unreadable_images_are_left_out_and_listed(photos, tmp_path, capsys):
    import shutil

    copy = tmp_path / "photos"
    shutil.copytree(photos, copy)
    (copy / "dog" / "broken.jpg").write_bytes(b"not a jpeg")
    whole = (copy / "dog" / "0.jpg").read_bytes()
    (copy / "dog" / "cut.jpg").write_bytes(whole[: len(whole) // 2])  # a sound header, half the data
    assert cli(["shard", str(copy), str(tmp_path / "s"), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["examples"] == 24
    assert sorted(Path(item["image"]).name for item in summary["skipped"]) == ["broken.jpg", "cut.jpg"]


# -- reading ---------------------------------------------------------------------------------------------------


def test_every_spelling_of_the_shards_reads_the_same_examples(sharded):
    whole = load_dataset(str(sharded))
    assert len(whole) == 24 and whole.classes == list(CLASSES) and "5 shards" in whole.source
    pattern = load_dataset(f"{sharded}/shard-{{000001..000002}}.tar")
    assert len(pattern) == 10 and pattern.classes == list(CLASSES)
    assert np.array_equal(np.asarray(pattern.example(0)[0]), np.asarray(whole.example(5)[0]))
    piped = load_dataset(f"pipe:cat {sharded}/shard-000000.tar")  # no dataset.json to be found: counted
    assert len(piped) == 5 and piped.classes == ["0", "1", "2"]
    assert np.array_equal(np.asarray(piped.example(3)[0]), np.asarray(whole.example(3)[0]))
    assert piped.example(3)[1] == whole.example(3)[1]


def test_shards_over_http_with_their_manifest(sharded):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(sharded))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/shard-{{000000..000004}}.tar"
        remote, local = load_dataset(url), load_dataset(str(sharded))
        assert len(remote) == 24 and remote.classes == list(CLASSES)  # classes from the manifest beside them
        assert np.array_equal(np.asarray(remote.example(23)[0]), np.asarray(local.example(23)[0]))
    finally:
        server.shutdown()


def test_a_folder_of_tars_without_a_manifest_is_counted_in_one_pass(sharded, tmp_path):
    import shutil

    shutil.copytree(sharded, tmp_path / "bare")
    (tmp_path / "bare" / "dataset.json").unlink()
    bare = load_dataset(str(tmp_path / "bare"))
    assert len(bare) == 24 and bare.positives_per_class().tolist() == [8] * 3
    assert "read from the shards" in bare.typical_image_size().statistic


def test_the_plan_comes_from_the_manifest_without_opening_a_shard(sharded, upstream, tmp_path, monkeypatch, capsys):
    def no_reading(url):
        raise AssertionError(f"{url} was opened")

    monkeypatch.setattr(shards_module, "read_samples", no_reading)
    command = ["finetune", "--model", str(upstream), "--data", str(sharded), "--out", str(tmp_path / "run"),
               "--dry-run", "--json"]  # fmt: skip
    assert cli(command) == 0
    plan = json.loads(capsys.readouterr().out)["plan"]
    assert (
        plan["images"] == 24
        and plan["image_size"]["height"] == 32
        and "dataset.json" in plan["image_size"]["statistic"]
    )
    assert plan["rule"]["resize"] == 160 and plan["rule"]["steps"] == 500  # small images, < 20k examples


def test_a_shard_that_changed_after_its_manifest_costs_only_the_examples_it_lacks(sharded, tmp_path, caplog):
    import shutil

    shutil.copytree(sharded, tmp_path / "changed")
    manifest = json.loads((tmp_path / "changed" / "dataset.json").read_text())
    manifest["shards"][0]["examples"], manifest["shards"][1]["examples"] = 6, 4
    (tmp_path / "changed" / "dataset.json").write_text(json.dumps(manifest))
    changed, whole = load_dataset(str(tmp_path / "changed")), load_dataset(str(sharded))
    assert np.array_equal(np.asarray(changed.example(4)[0]), np.asarray(whole.example(4)[0]))
    with pytest.raises(ValueError, match="holds 5 samples but dataset.json says 6: the shard changed"):
        changed.example(5)  # the example shard 0 lacks; the next is shard 1's first
    assert np.array_equal(np.asarray(changed.example(6)[0]), np.asarray(whole.example(5)[0]))
    assert "shard-000001.tar holds 5 samples but dataset.json says 4: the last 1 are not read" in caplog.text


def test_options_that_do_not_apply_to_shards_are_refused(sharded, upstream, tmp_path, capsys):
    with pytest.raises(ValueError, match="tar shards: the split/image column/label column options"):
        load_dataset(str(sharded), split="train")
    with pytest.raises(ValueError, match="one class per image: drop --multi-label"):
        load_dataset(str(sharded), multi_label=True)
    command = ["finetune", "--model", str(upstream), "--data", str(sharded), "--val-split", "0.2", "--out",
               str(tmp_path / "run"), "--quiet"]  # fmt: skip
    assert cli(command) == 2
    assert "give shards of evaluation data as --eval-data" in capsys.readouterr().err


# -- the order ------------------------------------------------------------------------------------------------


def test_lanes_visit_every_example_once_per_epoch_and_keep_each_rank_to_its_shards():
    counts = [50] * 11 + [37]
    order = LaneOrder(counts, batch_size=64, seed=5, lanes=lane_count(len(counts), 64))
    assert order.lanes == 8
    steps_per_epoch = sum(counts) // 64  # whole steps inside the first epoch of every lane
    seen = np.concatenate([order.indices(step) for step in range(steps_per_epoch)])
    assert len(np.unique(seen)) == len(seen)  # no example twice within an epoch
    starts = np.cumsum([0, *counts])
    shard_of = np.searchsorted(starts, seen, side="right") - 1
    by_rank = shard_of.reshape(steps_per_epoch, 2, 32)  # 2 processes: positions 0-31 and 32-63
    first, second = set(by_rank[:, 0].ravel()), set(by_rank[:, 1].ravel())
    assert len(first) <= 7 and len(second) <= 7  # each reads about half of the 12 shards in an epoch…
    assert len(first & second) <= 2  # …and they share at most the shards cut between their lanes
    per_step = [len(set(step)) for step in shard_of.reshape(steps_per_epoch, 64)]
    assert max(per_step) <= 2 * order.lanes  # a step reads a few shards, not the whole set
    assert np.array_equal(LaneOrder(counts, 64, 5, 8).indices(7), order.indices(7))  # a pure function of the step
    assert order.position(3)[0] == {"lane": 0, "epoch": 0, **dict(zip(("shard", "offset"), order._locate(0, 24)))}


# -- training ------------------------------------------------------------------------------------------------


def test_finetune_evaluate_and_predict_from_shards_match_the_folder(sharded, photos, upstream, tmp_path, capsys):
    weights = finetune(upstream, sharded, tmp_path / "run", "--eval-data", str(sharded))
    assert all(torch.isfinite(value).all() for value in weights.values())
    report = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert report["eval"]["examples"] == 24 and report["train_examples"] == 24
    checkpoint = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert [lane["lane"] for lane in checkpoint["data_position"]] == [0, 1, 2, 3]  # where each lane stands
    capsys.readouterr()
    model = str(tmp_path / "run" / "model")
    results = []
    for data in (sharded, photos):  # the same bytes in both: the same metrics
        assert cli(["evaluate", "--model", model, "--data", str(data), "--json", "--quiet"]) == 0
        results.append(json.loads(capsys.readouterr().out))
    assert results[0]["top1"] == results[1]["top1"] and results[0]["per_class"] == results[1]["per_class"]


def test_any_number_of_workers_gives_bit_identical_weights_on_shards(sharded, upstream, tmp_path, monkeypatch):
    import bigtransfer.train.batches as batches

    monkeypatch.setattr(batches, "IMAGES_PER_CHUNK", 2)  # several chunks per micro-batch, spread over workers
    serial = finetune(upstream, sharded, tmp_path / "serial", "--workers", "0")
    assert same(serial, finetune(upstream, sharded, tmp_path / "parallel", "--workers", "2"))
    split = finetune(upstream, sharded, tmp_path / "split", "--workers", "1", "--batch-split", "2")
    assert max(max_abs_diff(serial[k], split[k]) for k in serial) < 1e-6  # sums in another grouping


def test_kill_9_then_resume_on_shards_gives_the_same_weights(sharded, upstream, tmp_path):
    """With a loading worker: the killed run's orphaned worker must not keep the folder locked for --resume."""
    options = ["--batch-size", "8", "--steps", "24", "--resize", "72", "--crop", "64", "--seed", "3",
               "--save-every", "3", "--workers", "1", "--quiet"]  # fmt: skip
    base = [sys.executable, "-m", "bigtransfer", "finetune", "--model", str(upstream), "--data", str(sharded)]
    subprocess.run([*base, "--out", str(tmp_path / "straight"), *options], check=True, timeout=300)
    for attempt in range(3):  # a loaded machine may let the run reach its next checkpoint before the kill lands
        out = tmp_path / f"killed-{attempt}"
        checkpoint_step, logged = kill_one_row_past_a_checkpoint([*base, "--out", str(out), *options], out)
        if checkpoint_step < max(logged):
            break
    assert checkpoint_step < max(logged) < 24
    subprocess.run([*base, "--out", str(out), *options, "--resume"], check=True, timeout=300)
    straight = load_file(tmp_path / "straight" / "model" / "model.safetensors")
    assert same(straight, load_file(out / "model" / "model.safetensors"))


def test_two_processes_on_shards_equal_one_process(sharded, upstream, tmp_path):
    single = finetune(upstream, sharded, tmp_path / "single", "--workers", "1")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "bigtransfer", "finetune", "--model", str(upstream), "--data", str(sharded), "--batch-size", "8",
               "--steps", "6", "--resize", "24", "--crop", "20", "--seed", "3", "--mixup", "0.4",
               "--out", str(tmp_path / "ddp"), "--eval-data", str(sharded), "--quiet", "--device", "cpu",
               "--workers", "1"]  # fmt: skip
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert result.returncode == 0, result.stderr[-3000:]
    ddp = load_file(tmp_path / "ddp" / "model" / "model.safetensors")
    assert max(max_abs_diff(single[k], ddp[k]) for k in single) < 1e-5
    assert json.loads((tmp_path / "ddp" / "metrics.json").read_text())["eval"]["examples"] == 24


def test_multi_label_data_shards_and_trains_with_its_label_lists(tmp_path, upstream):
    rng = np.random.default_rng(0)
    rows = []
    for i in range(12):
        Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
        rows.append(f"{i}.png,{['cat', 'cat;dog', 'dog;owl', 'owl'][i % 4]}\n")
    (tmp_path / "train.csv").write_text("path,label\n" + "".join(rows))
    assert cli(["shard", str(tmp_path / "train.csv"), str(tmp_path / "s"), "--multi-label", "--quiet"]) == 0
    shards = load_dataset(str(tmp_path / "s"), multi_label=True)
    csv = load_dataset(tmp_path / "train.csv", multi_label=True)
    assert shards.positives_per_class().tolist() == csv.positives_per_class().tolist() == [6, 6, 6]
    with tarfile.open(tmp_path / "s" / "shard-000000.tar") as tar:
        name = next(n for n in tar.getnames() if n.endswith(".json"))
        labels = json.load(io.BytesIO(tar.extractfile(name).read()))["labels"]
    assert labels == np.flatnonzero(csv.labels[int(name.split(".")[0])]).tolist()
    with pytest.raises(ValueError, match="several classes per image: pass --multi-label"):
        load_dataset(str(tmp_path / "s"))
    finetune(upstream, tmp_path / "s", tmp_path / "run", "--multi-label", "--eval-data", str(tmp_path / "s"))
    report = json.loads((tmp_path / "run" / "metrics.json").read_text())["eval"]
    assert 0 <= report["map"] <= 1 and report["examples"] == 12


def test_training_on_shards_without_a_readable_image_fails_in_one_line(upstream, tmp_path, capsys):
    """Shards written by another tool can hold images that pass a header check but do not decode."""
    import webdataset

    (tmp_path / "bad").mkdir()
    with open(tmp_path / "bad" / "shard-000000.tar", "wb") as file:
        writer = webdataset.TarWriter(file)
        for i in range(12):
            writer.write({"__key__": f"{i:06d}", "png": png_header(tmp_path / "header.png", 24, 24).read_bytes(),
                          "cls": str(i % 3)})  # fmt: skip
        writer.close()
    command = ["finetune", "--model", str(upstream), "--data", str(tmp_path / "bad"), "--out", str(tmp_path / "run"),
               "--batch-size", "8", "--steps", "2", "--resize", "24", "--crop", "20", "--quiet", "--workers", "0"]  # fmt: skip
    assert cli(command) == 2
    error = [line for line in capsys.readouterr().err.splitlines() if line.startswith("bigtransfer")]
    assert len(error) == 1 and "step 1: none of the 8 examples of its batch had a readable image" in error[0]
    assert not (tmp_path / "run" / "model").exists()


def children_of(pid: int) -> set[int]:
    """The live child processes of `pid` (from /proc: psutil is not a dependency)."""
    children = set()
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        children |= {int(child) for child in task.read_text().split()}
    return {child for child in children if alive(child)}


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


SLOW_SHARD = """
import sys, time
import bigtransfer.data.shard_writing as writing
from bigtransfer.cli import main
original = writing.encode_image
def slow(*args, **kwargs):  # a large dataset: each image takes a while
    time.sleep(2)
    return original(*args, **kwargs)
writing.encode_image = slow
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_during_shard_stops_its_workers_and_leaves_no_partial_output(photos, tmp_path, signum, code):
    out = tmp_path / "out"
    command = [sys.executable, "-c", SLOW_SHARD, "shard", str(photos), str(out), "--shard-size", "2", "--workers",
               "2", "--quiet"]  # fmt: skip
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline, workers = time.monotonic() + 60, set()
        while len(workers) < 2 and time.monotonic() < deadline and process.poll() is None:
            workers = children_of(process.pid)
            time.sleep(0.1)
        assert len(workers) == 2, "the loading workers did not start"
        time.sleep(1)  # the workers are busy with their first shards
        process.send_signal(signum)
        _, stderr = process.communicate(timeout=30)
        assert process.returncode == code, stderr
        assert not {worker for worker in workers if alive(worker)}, "loading workers outlived the command"
        assert not list(tmp_path.glob(".out.*")) and not out.exists()
        assert stderr.strip().splitlines()[-1].startswith("bigtransfer shard: "), stderr
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        for worker in workers:
            if alive(worker):
                os.kill(worker, signal.SIGKILL)


def test_pixels_held_in_memory_are_stored_losslessly_in_a_seeded_order(tmp_path):
    from bigtransfer.data.datasets import write_idx

    rng = np.random.default_rng(0)
    write_idx(tmp_path / "x-images-idx3-ubyte", rng.integers(0, 255, (30, 28, 28), dtype=np.uint8))
    write_idx(tmp_path / "x-labels-idx1-ubyte", np.arange(30) % 3)
    digits = load_dataset(tmp_path / "x-images-idx3-ubyte")
    assert (
        cli(["shard", str(tmp_path / "x-images-idx3-ubyte"), str(tmp_path / "s"), "--shard-size", "7", "--quiet"]) == 0
    )
    shards = load_dataset(str(tmp_path / "s"))
    written = [
        int(name.split(".")[0]) for i in range(5) for name in tar_names(tmp_path / "s" / f"shard-{i:06d}.tar")[::2]
    ]
    assert sorted(written) == list(range(30)) and written != list(range(30))
    for position, index in enumerate(written):  # examples are numbered shard after shard, in the written order
        image, label = shards.example(position)
        assert np.array_equal(np.asarray(image), np.asarray(digits.load(index))) and label == digits.labels[index]


# -- streaming a dataset by name ----------------------------------------------------------------------------


@pytest.fixture
def streamed_hub(monkeypatch):
    """`datasets.load_dataset("toy/photos", streaming=True)` answers with an IterableDataset over 3 data files of
    mixed-size images with a ClassLabel — what streaming a Hub dataset gives — without the network."""
    import datasets

    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)) for w, h in SIZES * 7]
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=list(CLASSES)),
                                  "caption": datasets.Value("string")})  # fmt: skip
    table = datasets.Dataset.from_dict(
        {"image": images, "label": [i % 3 for i in range(21)], "caption": ["x"] * 21}, features=features
    )
    calls = []

    def load_dataset(name, split=None, streaming=False, **kwargs):
        calls.append((name, split, streaming))
        assert name == "toy/photos" and streaming, "only streaming is served"
        return table.to_iterable_dataset(num_shards=3)

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return calls


def test_a_dataset_streams_into_shards_in_a_seeded_order(streamed_hub, upstream, tmp_path, capsys):
    calls = streamed_hub
    command = ["shard", "toy/photos", str(tmp_path / "a"), "--streaming", "--shard-size", "8", "--max-side", "32",
               "--shuffle-buffer", "5", "--json"]  # fmt: skip
    assert cli(command) == 0 and calls == [("toy/photos", "train", True)]
    summary = json.loads(capsys.readouterr().out)
    assert summary["examples"] == 21 and summary["shards"] == 3 and summary["classes"] == list(CLASSES)
    assert cli([*command[:2], str(tmp_path / "b"), *command[3:]]) == 0
    assert tar_names(tmp_path / "a" / "shard-000000.tar") == tar_names(tmp_path / "b" / "shard-000000.tar")
    shards = load_dataset(str(tmp_path / "a"))
    assert shards.positives_per_class().tolist() == [7, 7, 7] and shards.manifest["streamed"]["shuffle_buffer"] == 5
    stored = sorted(np.asarray(shards.example(i)[0]).shape[:2] for i in range(21))
    assert stored == sorted([(24, 32), (32, 14), (32, 32)] * 7)  # (height, width): longer sides reduced to 32
    finetune(upstream, tmp_path / "a", tmp_path / "run")


def test_streaming_needs_class_labels_known_up_front(streamed_hub, tmp_path, capsys):
    command = ["shard", "toy/photos", str(tmp_path / "s"), "--streaming", "--label-column", "caption"]
    assert cli(command) == 2
    assert "streaming needs ClassLabel labels" in capsys.readouterr().err
    assert cli(["shard", str(tmp_path), str(tmp_path / "s"), "--streaming"]) == 2
    assert "--streaming reads a dataset by name" in capsys.readouterr().err


def test_a_reading_process_drops_the_shards_its_recent_reads_did_not_need(sharded):
    from bigtransfer.data.shards import RECENT_READS
    from bigtransfer.data.workers import load_examples

    shards = load_dataset(str(sharded))
    load_examples(shards, [0, 6, 7], [0, 1, 2], blank_augment)  # shards 0 and 1 (5 examples each)
    for _ in range(RECENT_READS):
        load_examples(shards, [8, 12], [0, 1], blank_augment)  # shards 1 and 2
    assert sorted(shards._held) == [1, 2]  # shard 0 was last needed RECENT_READS reads ago
    assert shards.example(8)[1] == load_dataset(str(sharded)).example(8)[1]  # a held shard serves as a fresh one


@pytest.mark.parametrize("workers", [0, 2])
def test_batch_split_and_workers_read_each_shard_once_per_visit(sharded, monkeypatch, workers):
    """A worker loading parts of several micro-batches in turn keeps each part's shards instead of re-reading."""
    from bigtransfer.data.workers import ordered_results
    from bigtransfer.train.batches import Layout, TrainingExamples

    def reads(batch_split: int) -> int:
        log = sharded.parent / f"reads-{batch_split}-{workers}.log"
        log.unlink(missing_ok=True)

        def counted(url, original=shards_module.read_samples):
            with log.open("a") as file:  # a file: worker processes count too
                file.write(url + "\n")
            return original(url)

        monkeypatch.setattr(shards_module, "read_samples", counted)
        dataset = load_dataset(str(sharded))
        layout = Layout(8, batch_split=batch_split, chunks=2)
        examples = TrainingExamples(dataset, dataset.training_order(8, 0), blank_augment, 0, layout, 0.0, 0, 9)
        with ordered_results(examples, workers) as loaded:
            for _ in range(len(examples)):
                next(loaded)
        return len(log.read_text().splitlines())

    whole, split = reads(1), reads(2)
    assert whole <= 5 * 3 + 4 * workers and split <= whole + workers  # 72 examples: 3 epochs of 5 shards


def blank_augment(image, *_, **__):
    return np.zeros((2, 2, 3), np.uint8)


def png_bytes(size=(30, 20), seed=0) -> bytes:
    buffer = io.BytesIO()
    width, height = size
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8)).save(
        buffer, "PNG"
    )
    return buffer.getvalue()


@pytest.fixture
def fake_hub_files(monkeypatch):
    """fsspec's hf:// answered from memory, as the Hub would answer a streamed dataset's files (no network)."""
    import fsspec
    from fsspec.implementations.memory import MemoryFileSystem
    from fsspec.registry import _registry

    class HubInMemory(MemoryFileSystem):
        protocol, store, pseudo_dirs = "hf", {}, [""]

        @classmethod
        def _strip_protocol(cls, path):
            return MemoryFileSystem._strip_protocol(path.removeprefix("hf://"))

    monkeypatch.setitem(_registry, "hf", HubInMemory)
    HubInMemory.clear_instance_cache()
    return fsspec.filesystem("hf")


@pytest.fixture
def image_server():
    """A local server that counts its requests and answers every one with a PNG."""
    requests, body = [], png_bytes()

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            requests.append(self.path)
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.end_headers()
            self.wfile.write(body)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", requests
    server.shutdown()


def streamed_rows(monkeypatch, paths: list[str]) -> None:
    """`datasets.load_dataset(name, streaming=True)` answers with rows holding only these paths."""
    import datasets

    features = datasets.Features(
        {"image": datasets.Image(decode=False), "label": datasets.ClassLabel(names=["a", "b"])}
    )
    rows = {"image": [{"bytes": None, "path": path} for path in paths], "label": [i % 2 for i in range(len(paths))]}
    table = datasets.Dataset.from_dict(rows, features=features)
    monkeypatch.setattr(datasets, "load_dataset", lambda name, split=None, streaming=False: table.to_iterable_dataset())


def test_streamed_rows_that_hold_a_hub_path_are_read_through_fsspec(monkeypatch, tmp_path, fake_hub_files):
    """Streaming an imagefolder-style Hub dataset gives {"bytes": None, "path": "hf://…"}: read as datasets does."""
    for i in range(6):
        fake_hub_files.pipe(f"/datasets/toy/remote/{i}.png", png_bytes(seed=i))
    streamed_rows(monkeypatch, [f"hf://datasets/toy/remote/{i}.png" for i in range(6)])
    assert cli(["shard", "toy/remote", str(tmp_path / "s"), "--streaming", "--quiet"]) == 0
    shards = load_dataset(str(tmp_path / "s"))
    assert len(shards) == 6 and shards.manifest["skipped"] == []
    assert sorted(shards.example(i)[0].size for i in range(6)) == [(30, 20)] * 6


def test_streamed_rows_naming_other_places_are_refused_and_hub_files_bounded(monkeypatch, tmp_path, fake_hub_files,
                                                                             image_server):  # fmt: skip
    import bigtransfer.processing.decoding as decoding

    url, requests = image_server
    (tmp_path / "local.png").write_bytes(png_bytes())
    fake_hub_files.pipe("/datasets/toy/remote/ok.png", png_bytes())
    fake_hub_files.pipe("/datasets/toy/remote/huge.png", png_bytes() + b"\0" * 200_000)
    monkeypatch.setenv(decoding.DOWNLOAD_ENV, "100000")
    paths = ["hf://datasets/toy/remote/ok.png", f"{url}/secret.png", str(tmp_path / "local.png"),
             f"zip://x.png::{url}/a.zip", "hf://datasets/toy/remote/huge.png", "hf://datasets/toy/remote/ok.png"]  # fmt: skip
    streamed_rows(monkeypatch, paths)
    assert cli(["shard", "toy/remote", str(tmp_path / "s"), "--streaming", "--quiet"]) == 0
    shards = load_dataset(str(tmp_path / "s"))
    errors = sorted(entry["error"].split(", not ")[-1] for entry in shards.manifest["skipped"])
    assert len(shards) == 2 and requests == []  # the two hf:// copies of ok.png; no request reached the server
    assert errors[:3] == ["a file of the dataset on the Hub (hf://)"] * 3
    assert errors[3] == "it is beyond the limit of 100,000 bytes (BIGTRANSFER_MAX_DOWNLOAD_BYTES)"


def test_a_saved_dataset_is_read_from_its_own_bytes_and_folder_only(tmp_path, image_server, capsys):
    """A saved dataset whose rows hold only a path (crafted: save_to_disk embeds the bytes) names a URL, a file
    outside its folder, one inside it through .., and one inside it: only the last is read."""
    import datasets

    url, requests = image_server
    folder = tmp_path / "saved"
    (folder / "images").mkdir(parents=True)
    (folder / "images" / "inside.png").write_bytes(png_bytes(seed=1))
    (tmp_path / "outside.png").write_bytes(png_bytes(seed=2))
    stored = [{"bytes": png_bytes(seed=3), "path": None}, {"bytes": None, "path": f"{url}/secret.png"},
              {"bytes": None, "path": str(tmp_path / "outside.png")},
              {"bytes": None, "path": str(folder / "images" / ".." / ".." / "outside.png")},
              {"bytes": None, "path": str(folder / "images" / "inside.png")}]  # fmt: skip
    struct = datasets.Features({"image": {"bytes": datasets.Value("binary"), "path": datasets.Value("string")},
                                "label": datasets.ClassLabel(names=["a", "b"])})  # fmt: skip
    datasets.Dataset.from_dict({"image": stored, "label": [0, 1, 0, 1, 1]}, features=struct).save_to_disk(folder)
    info = json.loads((folder / "dataset_info.json").read_text())
    info["features"]["image"] = {"_type": "Image"}  # what the rows are declared to be
    (folder / "dataset_info.json").write_text(json.dumps(info))

    assert cli(["shard", str(folder), str(tmp_path / "s"), "--json", "--workers", "0"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["examples"] == 2 and requests == []
    assert sorted(entry["image"] for entry in summary["skipped"]) == [f"{folder}[{i}]" for i in (1, 2, 3)]
    assert all(f"outside {folder}: only images stored in a dataset" in entry["error"] for entry in summary["skipped"])
    with tarfile.open(tmp_path / "s" / "shard-000000.tar") as tar:
        kept = {tar.extractfile(member).read() for member in tar.getmembers() if member.name.endswith(".png")}
    assert kept == {png_bytes(seed=3), png_bytes(seed=1)}


def test_a_pattern_naming_missing_shards_says_which(sharded):
    with pytest.raises(FileNotFoundError, match=r"2 of the 7 shards .* do not exist, e\.g\. .*shard-000005\.tar"):
        load_dataset(f"{sharded}/shard-{{000000..000006}}.tar")


def test_patterns_are_counted_as_braceexpand_expands_them():
    import braceexpand

    from bigtransfer.data.shard_patterns import _names

    patterns = ["s-{000000..000099}.tar", "x{a,{b,c}{1..2}}", "{a..g..2}{4..1}", r"{1\{2,3}", "{10..1..3}", "{}",
                "python{2.{5..7},3.{2,3}}", "{{1..3},{a,b}}", "{Z..a}", "{-3..3..2}", "{,a}", "{1..3..0}"]  # fmt: skip
    assert [_names(p) for p in patterns] == [len(list(braceexpand.braceexpand(p))) for p in patterns]
