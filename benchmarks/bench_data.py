"""Data loading at scale (issue 22): start-up and memory of the folder reader against tar shards, loader
throughput from shards, a folder and a saved `datasets` directory of the same photos, and how a multi-node
run reads its shards.

    python benchmarks/bench_data.py            # 200,000 tiny files for the index; 800 photos for throughput
    python benchmarks/bench_data.py --quick    # 20,000 files, 200 photos, fewer rounds: to try the script

1. Index cost. A folder of tiny JPEGs (one ~1 KB photo, 100 class folders: the file count is the point) and
   the same images as shards of 2,000 (`write_shards`). Each reader is timed in a fresh process (imports done
   before the clock starts; page cache warm: the files were just written), folder and shards alternating;
   memory held is tracemalloc's count of what `load_dataset` leaves allocated (numpy's arrays included), and
   again after the first step's `training_order`. A dataset.json listing 7,000 shards of 2,000 (ImageNet-21k's
   14 M images; the tars themselves absent, the reader opens none at start-up) is timed the same way.
2. Loader throughput. Camera-size photos (crops of scikit-image's photos, longer side 800-1200 px, JPEG q90)
   read as training reads them: `TrainingExamples` through `ordered_results`, HyperRule resize 480 → crop 448,
   batch 64, no MixUp. Sources alternate within each round (the order rotates between rounds); images/s counts
   the steps after the first two (worker start-up); median over rounds.
3. A multi-node run on paper, computed with the real lane order and batch layout: which shards each rank and
   each of its loading workers reads.
"""

from __future__ import annotations

import argparse
import functools
import gc
import io
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import tracemalloc
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from bigtransfer.data.order import MAX_LANES, LaneOrder, ShuffledOrder, lane_count
from bigtransfer.data.shard_writing import write_shards
from bigtransfer.data.shards import HELD_SHARDS, MANIFEST, read_samples
from bigtransfer.data.sources import load_dataset
from bigtransfer.data.workers import ordered_results
from bigtransfer.train.augment import hyperrule_augment
from bigtransfer.train.batches import Layout, TrainingExamples, chunks_per_micro_batch

FULL = dict(files=200_000, file_classes=100, index_rounds=3, photos=800, photo_classes=10, rounds=4, steps=12)
QUICK = dict(files=20_000, file_classes=100, index_rounds=2, photos=200, photo_classes=10, rounds=2, steps=6)
SHARD_SIZE = 2000  # images per shard of the index test, as `bigtransfer shard` writes by default
SKIP_STEPS = 2  # steps left out of a throughput measurement: worker start-up, first shards read
BATCH = 64  # two loading chunks of 32: one per worker at --workers 2
RESIZE, CROP = 480, 448  # the BiT-HyperRule for images larger than 96×96
AT_SCALE = dict(images=14_000_000, shards=7000, classes=21_843)  # ImageNet-21k, in shards of 2,000
MULTI_NODE = dict(batch=4096, nodes=4, ranks_per_node=8, workers_per_rank=8, steps=40)
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "hubble_deep_field", "retina",
          "stereo_motorcycle", "colorwheel")  # fmt: skip


def cpu_description() -> str:
    """The CPU's model name and its vector/matrix extensions (what decoding and resizing may use)."""
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = re.search(r"^model name\s*:\s*(.+)$", text, re.M)
    flags = sorted(set(re.findall(r"\b(avx512\w*|amx\w*|avx2|avx_vnni)\b", text)))
    return f"{model.group(1) if model else 'unknown CPU'}, {os.cpu_count()} cores, flags: {' '.join(flags) or 'none'}"


# -- 1. index cost -----------------------------------------------------------------------------------------------


def tiny_jpeg() -> bytes:
    """A real photo (scikit-image's cat) reduced to 32 px: about a kilobyte."""
    from skimage import data

    image = Image.fromarray(data.chelsea())
    image.thumbnail((32, 32), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def make_file_folder(root: Path, files: int, classes: int) -> Path:
    """`files` copies of one tiny JPEG, spread over `classes` class folders."""
    payload = tiny_jpeg()
    for label in range(classes):
        (root / f"class{label:03d}").mkdir(parents=True)
    for index in range(files):
        (root / f"class{index % classes:03d}" / f"{index:07d}.jpg").write_bytes(payload)
    return root


def rss_bytes() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure_reader(path: str) -> dict:
    """In a fresh process: seconds of `load_dataset(path)`, and the memory it holds (per example)."""
    import webdataset  # noqa: F401  (imported before the clock starts, as the library's own imports are)

    rss_before = rss_bytes()
    began = time.perf_counter()
    dataset = load_dataset(path)
    seconds = time.perf_counter() - began
    rss_delta = rss_bytes() - rss_before
    del dataset
    ShuffledOrder(2, 2, 0).indices(0), LaneOrder([2], 2, 0, 1).indices(0)  # their lazy imports, before tracing
    gc.collect()
    tracemalloc.start()
    dataset = load_dataset(path)
    held, peak = tracemalloc.get_traced_memory()
    order = dataset.training_order(BATCH, 0)  # kept alive: a folder's order holds a permutation of every example,
    order.indices(0)  # a sharded one its epoch's shard permutation and the current shards' own
    with_order = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return {"examples": len(dataset), "seconds": seconds, "held_bytes": held, "peak_bytes": peak,
            "with_order_bytes": with_order, "rss_delta_bytes": rss_delta}  # fmt: skip


def reader_in_subprocess(path: Path) -> dict:
    done = subprocess.run([sys.executable, __file__, "--measure-reader", str(path)], capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"measuring {path} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def manifest_at_scale(template: Path, out: Path, shards: int, per_shard: int, classes: int) -> Path:
    """A dataset.json in write_shards' schema listing `shards` shards (not written: start-up reads none)."""
    manifest = json.loads((template / MANIFEST).read_text())
    size = manifest["shards"][0]["bytes"] * per_shard // manifest["shards"][0]["examples"]
    manifest.update(
        classes=[f"n{i:08d}" for i in range(classes)], examples=shards * per_shard,
        class_counts=[shards * per_shard // classes] * classes,
        shards=[{"name": f"shard-{i:06d}.tar", "examples": per_shard, "bytes": size} for i in range(shards)],
    )  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return out


def index_cost(work: Path, setting: dict) -> dict:
    began = time.perf_counter()
    folder = make_file_folder(work / "files", setting["files"], setting["file_classes"])
    made = time.perf_counter() - began
    began = time.perf_counter()
    write_shards(load_dataset(folder), work / "file-shards", shard_size=SHARD_SIZE, workers=2, progress=False)
    written = time.perf_counter() - began
    print(f"{setting['files']} files in {made:.0f} s; as {setting['files'] // SHARD_SIZE} shards by write_shards "
          f"in {written:.0f} s", flush=True)  # fmt: skip
    at_scale = manifest_at_scale(work / "file-shards", work / "manifest-7000", AT_SCALE["shards"],
                                 SHARD_SIZE, AT_SCALE["classes"])  # fmt: skip
    readers = {"folder": folder, "shards": work / "file-shards", "shards_7000_manifest": at_scale}
    rounds: dict[str, list[dict]] = {name: [] for name in readers}
    for _ in range(setting["index_rounds"]):
        for name, path in readers.items():
            rounds[name].append(reader_in_subprocess(path))
    results = {"files": setting["files"], "make_files_s": round(made, 1), "write_shards_s": round(written, 1)}
    for name, measured in rounds.items():
        examples = measured[0]["examples"]
        results[name] = {
            "examples": examples, "seconds": [round(m["seconds"], 3) for m in measured],
            "seconds_median": round(statistics.median(m["seconds"] for m in measured), 3),
            "held_bytes_per_example": round(measured[0]["held_bytes"] / examples, 1),
            "with_order_bytes_per_example": round(measured[0]["with_order_bytes"] / examples, 1),
            "held_mb": round(measured[0]["held_bytes"] / 1e6, 2), "peak_mb": round(measured[0]["peak_bytes"] / 1e6, 2),
            "rss_delta_mb": [round(m["rss_delta_bytes"] / 1e6, 1) for m in measured],
        }  # fmt: skip
    results["extrapolated_to_14M"] = extrapolate(results)
    return results


def extrapolate(results: dict) -> dict:
    """The folder reader at 14 M files, linearly from its per-file cost here; shards measured directly."""
    folder, scale = results["folder"], AT_SCALE["images"] / results["folder"]["examples"]
    measured = results["shards_7000_manifest"]
    return {
        "folder_seconds": round(folder["seconds_median"] * scale), "folder_held_gb": round(
            folder["held_bytes_per_example"] * AT_SCALE["images"] / 1e9, 2),
        "folder_with_order_gb": round(folder["with_order_bytes_per_example"] * AT_SCALE["images"] / 1e9, 2),
        "shards_seconds_measured": measured["seconds_median"], "shards_held_mb_measured": measured["held_mb"],
        "note": "folder: linear in files, warm page cache, per process (each loading worker touches its forked copy "
                "of the path list, so copy-on-write pages are copied into workers over time); shards: a 7,000-shard "
                "dataset.json read in a fresh process",
    }  # fmt: skip


# -- 2. loader throughput ----------------------------------------------------------------------------------------


def write_photo(job: tuple[Path, int, int]) -> None:
    """A crop of a scikit-image photo scaled to a longer side of 800-1200 px, with a little sensor-like noise
    (upscaled crops alone are smoother than camera files, and decode and compress unlike them), JPEG q90."""
    from skimage import data

    root, label, index = job
    rng = np.random.default_rng([label, index])
    photo = getattr(data, PHOTOS[int(rng.integers(len(PHOTOS)))])()
    photo = photo[0] if isinstance(photo, tuple) else photo  # the stereo pair: its left image
    height, width = photo.shape[:2]
    fraction = rng.uniform(0.5, 1.0)
    h, w = int(height * fraction), int(width * fraction * rng.uniform(0.8, 1.25))
    w = min(w, width)
    top, left = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
    crop = Image.fromarray(photo[top : top + h, left : left + w, :3])
    side = int(rng.integers(800, 1201))
    scale = side / max(crop.size)
    image = crop.resize((round(crop.width * scale), round(crop.height * scale)), Image.Resampling.LANCZOS)
    pixels = np.asarray(image, dtype=np.float32) + rng.normal(0, 3, (image.height, image.width, 3))
    (root / f"class{label}").mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(root / f"class{label}" / f"{index:05d}.jpg", quality=90)


def make_photo_folder(root: Path, images: int, classes: int) -> Path:
    with ProcessPoolExecutor(2) as pool:
        list(pool.map(write_photo, [(root, i % classes, i) for i in range(images)], chunksize=8))
    return root


def extract_shards(shards: Path, root: Path) -> Path:
    """The shards' (reduced) images as a folder: separates "smaller images" from "read from a tar"."""
    classes = json.loads((shards / MANIFEST).read_text())["classes"]
    for tar_path in sorted(shards.glob("*.tar")):
        with tarfile.open(tar_path) as tar:
            members = {member.name: tar.extractfile(member).read() for member in tar.getmembers()}
        for name, data in members.items():
            if name.endswith(".jpg"):
                label = int(members[name[: -len("jpg")] + "cls"])
                (root / classes[label]).mkdir(parents=True, exist_ok=True)
                (root / classes[label] / name).write_bytes(data)
    return root


def save_hf_dataset(folder: Path, out: Path) -> Path:
    """The folder's files as a `datasets` Dataset with an Image feature (bytes embedded), saved to disk."""
    import datasets

    dataset = load_dataset(folder)
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=dataset.classes)})
    rows = {"image": [{"bytes": Path(p).read_bytes(), "path": None} for p in dataset.paths],
            "label": dataset.labels.tolist()}  # fmt: skip
    datasets.Dataset.from_dict(rows, features=features).save_to_disk(str(out))
    return out


def shard_read_cost(images: Path, out: Path, repeats: int = 3) -> dict:
    """Seconds to read one shard of SHARD_SIZE reduced images (the extracted files, cycled) with the library's
    reader, page cache warm: what a process pays each time one of its lanes reaches a new shard."""
    import webdataset

    files = sorted(images.rglob("*.jpg"))
    with open(out, "wb") as stream:
        writer = webdataset.TarWriter(stream, mtime=0)
        for index in range(SHARD_SIZE):
            writer.write({"__key__": f"{index:09d}", "jpg": files[index % len(files)].read_bytes(), "cls": "0"})
        writer.close()
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        samples = sum(1 for _ in read_samples(str(out)))
        times.append(time.perf_counter() - began)
    assert samples == SHARD_SIZE
    return {"shard_mb": round(out.stat().st_size / 1e6, 1), "seconds": round(statistics.median(times), 3)}


def loader_rate(dataset, workers: int, steps: int, seed: int) -> float:
    """Images/s of the training input pipeline over steps SKIP_STEPS…steps-1: exactly what `train` iterates."""
    order = dataset.training_order(BATCH, seed)
    layout = Layout(BATCH, chunks=chunks_per_micro_batch(BATCH, workers))
    augment = functools.partial(hyperrule_augment, resize=RESIZE, crop=CROP, flip=True)
    examples = TrainingExamples(dataset, order, augment, seed, layout, 0.0, 0, steps)
    images, began = 0, None
    with ordered_results(examples, workers) as loaded:
        for item, chunk in enumerate(loaded):
            if chunk.failures:
                raise RuntimeError(f"unreadable images: {chunk.failures[:3]}")
            if began is not None:
                images += len(chunk.ids)
            if item == SKIP_STEPS * layout.chunks - 1:
                began = time.perf_counter()
    return images / (time.perf_counter() - began)


def throughput(work: Path, setting: dict) -> dict:
    began = time.perf_counter()
    originals = make_photo_folder(work / "photos", setting["photos"], setting["photo_classes"])
    shard_size = max(1, setting["photos"] // 16)  # more shards than a worker holds: tars are re-read each run
    write_shards(load_dataset(originals), work / "photo-shards", max_side=512, shard_size=shard_size, progress=False)
    sources = {
        "folder": originals, "datasets": save_hf_dataset(originals, work / "photos-hf"),
        "shards": work / "photo-shards", "folder_512": extract_shards(work / "photo-shards", work / "photos-512"),
    }  # fmt: skip
    sizes = {
        name: sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file()) for name, path in sources.items()
    }
    print(f"{setting['photos']} photos, their shards ({shard_size} per shard), `datasets` copy and reduced folder "
          f"in {time.perf_counter() - began:.0f} s; bytes: {sizes}", flush=True)  # fmt: skip
    datasets = {name: load_dataset(path) for name, path in sources.items()}
    rates: dict[str, list[float]] = {}
    names = list(sources)
    for round_index in range(setting["rounds"]):
        rotated = names[round_index % len(names) :] + names[: round_index % len(names)]
        for workers in (2, 0):
            for name in rotated:
                rate = loader_rate(datasets[name], workers, setting["steps"], seed=round_index)
                rates.setdefault(f"{name}_workers{workers}", []).append(round(rate, 1))
        print(
            f"round {round_index + 1} (load {os.getloadavg()[0]:.1f}): "
            + ", ".join(f"{k} {v[-1]}" for k, v in rates.items()),
            flush=True,
        )
    results = {"photos": setting["photos"], "shard_size": shard_size, "bytes": sizes,
               "shard_bytes_per_image": round(sizes["shards"] / setting["photos"]),
               "shard_read": shard_read_cost(sources["folder_512"], work / "one-shard.tar"),
               "rounds": rates, "median": {k: statistics.median(v) for k, v in rates.items()}}  # fmt: skip
    for workers in (2, 0):
        folder = results["median"][f"folder_workers{workers}"]
        results[f"ratios_workers{workers}"] = {
            f"{name}/folder": round(results["median"][f"{name}_workers{workers}"] / folder, 2) for name in names[1:]
        }
        results[f"round_ratios_workers{workers}"] = round_ratios(rates, names, workers)
    return results


def round_ratios(rates: dict[str, list[float]], names: list[str], workers: int) -> dict[str, list[float]]:
    """Each source against the folder within each round: the sources of a round share the machine's load."""
    folder = rates[f"folder_workers{workers}"]
    return {
        f"{name}/folder": [round(rate / base, 2) for rate, base in zip(rates[f"{name}_workers{workers}"], folder)]
        for name in names[1:]
    }


# -- 3. a multi-node run on paper --------------------------------------------------------------------------------


class ShardRecorder:
    """A stand-in dataset of `counts[s]` examples per shard that records which shard each load touches."""

    def __init__(self, counts: list[int]):
        self.ends = np.cumsum(counts)
        self.touched: list[int] = []

    def example(self, index: int):
        self.touched.append(int(np.searchsorted(self.ends, index, side="right")))
        return None, 0

    def name_of(self, index: int) -> str:
        return str(index)


class CachedOrder:
    """The lane order with each step's indices computed once for all the ranks simulated."""

    def __init__(self, order: LaneOrder):
        self.order, self.lanes = order, order.lanes
        self.indices = functools.lru_cache(maxsize=None)(order.indices)


def multi_node(measured: dict | None) -> dict:
    """Which shards each rank and loading worker of a 4-node × 8-GPU run reads, through the training code path
    (TrainingExamples items handed round-robin to workers, as the DataLoader does). `measured`: the throughput
    part's results, for the size of a shard and the time to read one."""
    setting, counts = MULTI_NODE, [SHARD_SIZE] * AT_SCALE["shards"]
    world, batch, workers = setting["nodes"] * setting["ranks_per_node"], setting["batch"], setting["workers_per_rank"]
    lanes = lane_count(len(counts), batch)
    order = CachedOrder(LaneOrder(counts, batch, 0, lanes))
    per_lane = batch // lanes
    ranks = {}
    readers_of: dict[int, set[tuple[int, int]]] = {}
    for rank in range(world):
        layout = Layout(batch, world, rank, chunks=chunks_per_micro_batch(batch // world, workers))
        recorder = ShardRecorder(counts)
        examples = TrainingExamples(recorder, order, lambda image, rng: np.zeros((1, 1, 3), np.uint8), 0, layout,
                                    0.0, 0, setting["steps"])  # fmt: skip
        by_worker: dict[int, set[int]] = {}
        for item in range(len(examples)):
            recorder.touched.clear()
            examples[item]
            by_worker.setdefault(item % workers, set()).update(recorder.touched)
        for worker, shards in by_worker.items():
            for shard in shards:
                readers_of.setdefault(shard, set()).add((rank, worker))
        first = layout.positions(0)
        ranks[rank] = {"positions": [first.start, first.stop], "lanes": sorted({p // per_lane for p in first}),
                       "shards": sorted(set().union(*by_worker.values()))}  # fmt: skip
    shards_read = len(readers_of)
    reads = sum(len(readers) for readers in readers_of.values())
    lane_shards: dict[int, set[int]] = {}
    for info in ranks.values():
        for lane in info["lanes"]:
            lane_shards.setdefault(lane, set()).update(info["shards"])
    same = all(
        set(info["shards"]) == lane_shards[info["lanes"][0]] for info in ranks.values() if len(info["lanes"]) == 1
    )
    resume_step = 12_345
    shard_bytes = measured["shard_bytes_per_image"] * SHARD_SIZE if measured else 60_000 * SHARD_SIZE
    held_per_worker = HELD_SHARDS * shard_bytes
    return {
        "setup": f"{AT_SCALE['shards']} shards of {SHARD_SIZE}, batch {batch}, torchrun --nnodes {setting['nodes']} "
                 f"--nproc_per_node {setting['ranks_per_node']} ({world} ranks), {workers} loading workers per rank",
        "lanes": lanes, "per_lane_per_step": per_lane, "per_rank_per_step": batch // world,
        "steps_per_epoch": (sum(counts) // lanes) // per_lane, "steps_per_shard_in_a_lane": SHARD_SIZE / per_lane,
        "rank_lane": {rank: info["lanes"] for rank, info in ranks.items()},
        "rank_positions": {rank: info["positions"] for rank, info in ranks.items()},
        "simulated_steps": setting["steps"], "lane_shards": {lane: sorted(s) for lane, s in lane_shards.items()},
        "ranks_of_a_lane_read_the_same_shards": same,
        "ranks_sharing_a_lane": world // lanes if world >= lanes else 1,
        "distinct_shards_read": shards_read, "tar_reads_by_processes": reads,
        "reads_per_shard": round(reads / shards_read, 1),
        "most_readers_of_a_shard": max(len(readers) for readers in readers_of.values()),
        "images_decoded_per_read": round(SHARD_SIZE * shards_read / reads, 1),
        "shard_gb": round(shard_bytes / 1e9, 3), "shard_read_s": measured["shard_read"]["seconds"] if measured else None,
        "decode_augment_s_per_image": round(1 / measured["median"]["folder_512_workers0"], 4) if measured else None,
        "held_per_worker_gb": round(held_per_worker / 1e9, 2),
        "held_per_node_gb": round(setting["ranks_per_node"] * workers * held_per_worker / 1e9, 1),
        "resume_example": {"step": resume_step, "data_position": order.order.position(resume_step)},
    }  # fmt: skip


def explain_multi_node(plan: dict) -> str:
    sharing = plan["ranks_sharing_a_lane"]
    lane_shards = sorted(plan["lane_shards"].items())[:3]
    lines = [
        f"{plan['setup']}:",
        f"  lane_count(7000, {MULTI_NODE['batch']}) = {plan['lanes']} lanes (MAX_LANES = {MAX_LANES}); a step takes "
        f"{plan['per_lane_per_step']} examples from every lane; a rank's {plan['per_rank_per_step']} positions are one "
        f"contiguous block, so rank r reads lane r // {sharing} only ({sharing} ranks per lane).",
        f"  A lane moves to its next shard every {plan['steps_per_shard_in_a_lane']:.1f} steps; an epoch is "
        f"{plan['steps_per_epoch']} steps. In {plan['simulated_steps']} simulated steps: lane → shards "
        + "; ".join(f"{lane}: {shards}" for lane, shards in lane_shards)
        + "; …",
        f"  Each rank's loading workers take its chunks round-robin, so every worker of the {sharing} ranks of a lane "
        f"reads each of the lane's shards whole: {plan['distinct_shards_read']} shards were read "
        f"{plan['tar_reads_by_processes']} times ({plan['reads_per_shard']} processes per shard on average, at most "
        f"{plan['most_readers_of_a_shard']}); a process decodes {plan['images_decoded_per_read']} of the "
        f"{SHARD_SIZE} images of each shard it reads. The reader is per process: nothing is shared between ranks or "
        "workers (from the page cache locally; over pipe:/http each read is a download).",
    ]
    if plan["shard_read_s"]:
        per_image = plan["shard_read_s"] / plan["images_decoded_per_read"]
        lines.append(
            f"  Here a {plan['shard_gb']} GB shard of 512-px images reads in {plan['shard_read_s']} s (page cache "
            f"warm): {per_image * 1e3:.1f} ms per image a process decodes, against "
            f"{plan['decode_augment_s_per_image'] * 1e3:.1f} ms to decode and augment one."
        )
    lines += [
        f"  Each worker keeps up to HELD_SHARDS = {HELD_SHARDS} shards' bytes: {plan['held_per_worker_gb']} GB at the "
        f"shard size measured here, {plan['held_per_node_gb']} GB per node of "
        f"{MULTI_NODE['ranks_per_node']} ranks × {MULTI_NODE['workers_per_rank']} workers, though one lane needs "
        "at most two shards at a time.",
        f"  Resume: the checkpoint restores the step; the order is a pure function of (seed, step), and "
        f"`data_position` records where each lane stands for a reader, e.g. at step "
        f"{plan['resume_example']['step']}: {plan['resume_example']['data_position'][:2]} …",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="20,000 files and 200 photos: to try the script")
    parser.add_argument("--work", type=Path, default=None, help="folder for the data (default: a temp dir, removed)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--skip", nargs="*", default=[], choices=["index", "throughput"], help="parts to leave out")
    parser.add_argument("--measure-reader", default=None, help=argparse.SUPPRESS)  # the subprocess of part 1
    args = parser.parse_args()
    if args.measure_reader:
        print(json.dumps(measure_reader(args.measure_reader)))
        return
    setting = QUICK if args.quick else FULL
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-data-"))
    results: dict = {"cpu": cpu_description(), "setting": setting, "load_average_at_start": os.getloadavg()[0]}
    print(results["cpu"], flush=True)
    began = time.perf_counter()
    try:
        if "index" not in args.skip:
            results["index"] = index_cost(work / "index", setting)
            print(json.dumps(results["index"], indent=1), flush=True)
        if "throughput" not in args.skip:
            results["throughput"] = throughput(work / "throughput", setting)
            print(json.dumps(results["throughput"], indent=1), flush=True)
        results["multi_node"] = multi_node(results.get("throughput"))
        print(explain_multi_node(results["multi_node"]), flush=True)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    results["seconds"] = round(time.perf_counter() - began, 1)
    results["load_average_at_end"] = os.getloadavg()[0]  # another process on these cores makes the figures noisy
    print(
        f"total {results['seconds']} s; load average at start {results['load_average_at_start']:.1f}, at end "
        f"{results['load_average_at_end']:.1f}"
    )
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
