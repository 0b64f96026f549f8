"""Untrusted input and faults: hostile images and servers are bounded in memory and time and reported like any
unreadable file; a stopped, diverged, doubled or damaged run loses nothing that was saved."""

import gzip
import http.server
import io
import json
import os
import pickle
import re
import signal
import struct
import subprocess
import sys
import tarfile
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bigtransfer import BitConfig, BitForImageClassification, BitImageProcessor, pipeline
from bigtransfer.cli import main as cli
from bigtransfer.processing.decoding import fetch_image
from bigtransfer.train import FineTuning, RunOptions, Speed, finetune
from helpers import png_header

SMALL = dict(hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 1, 1], num_groups=4, embedding_size=16, num_labels=3)


def run_measured(code: str, **env: str) -> tuple[list[str], int]:
    """Run `code` in a fresh interpreter (with `env` added to the environment): the words it printed, and its own
    peak memory in KiB (/proc's VmHWM belongs to the new process image; ru_maxrss would carry the test process's
    peak over fork and exec)."""
    script = code + "\nimport re\nprint(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1))"
    environment = {**os.environ, **env}
    words = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                           env=environment, timeout=300).stdout.split()  # fmt: skip
    return words[:-1], int(words[-1])


@pytest.fixture
def upstream(tmp_path):
    torch.manual_seed(0)
    BitForImageClassification(BitConfig(**SMALL)).save_pretrained(tmp_path / "upstream")
    BitImageProcessor(size={"height": 20, "width": 20}, do_center_crop=False, resample=2, image_mean=0.5,
                      image_std=0.5).save_pretrained(tmp_path / "upstream")  # fmt: skip
    return tmp_path / "upstream"


@pytest.fixture
def folder(tmp_path):
    rng = np.random.default_rng(0)
    for label, name in enumerate(("a", "b", "c")):
        (tmp_path / "images" / name).mkdir(parents=True)
        for i in range(5):
            pixels = np.clip(rng.normal(60 + 70 * label, 30, (24, 24, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(tmp_path / "images" / name / f"{i}.png")
    return tmp_path / "images"


def hostile(folder: Path) -> None:
    png_header(folder / "a" / "bomb.png", 40_000, 40_000)
    Image.new("L", (20_000, 1), 128).save(folder / "b" / "strip.png")


def tune(upstream, folder, out, **options):
    recipe = FineTuning(**{"batch_size": 8, "steps": 6, "resize": 24, "crop": 20, **options.pop("recipe", {})})
    speed = Speed(workers=options.pop("workers", 0))
    return finetune(str(upstream), str(folder), recipe=recipe, run=RunOptions(out=out, progress=False, seed=3,
                                                                             speed=speed, **options))  # fmt: skip


# -- 1, 2: extreme shapes and decompression bombs are unreadable images, everywhere ----------------------------------


def test_a_bomb_and_a_1x20000_strip_in_a_training_folder_are_skipped_and_listed(upstream, folder, tmp_path):
    hostile(folder)
    metrics = tune(upstream, folder, tmp_path / "run", workers=2)
    assert metrics["steps"] == 6
    assert sorted(Path(name).name for name in metrics["skipped_images"]) == ["bomb.png", "strip.png"]


def test_predict_and_pipeline_refuse_them_in_bounded_memory(upstream, folder, tmp_path, capsys):
    hostile(folder)
    assert cli(["predict", str(folder), "--model", str(upstream), "--json", "--quiet"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert len(report["results"]) == 15 and {Path(e["file"]).name for e in report["errors"]} == {
        "bomb.png",
        "strip.png",
    }
    for name in ("a/bomb.png", "b/strip.png"):
        with pytest.raises(ValueError, match="decompression bomb|aspect ratio 20000:1"):
            pipeline("image-classification", model=str(upstream))(str(folder / name))
    code = (f"from bigtransfer import pipeline\np = pipeline('image-classification', model={str(upstream)!r})\n"
            f"for f in ({str(folder / 'a/bomb.png')!r}, {str(folder / 'b/strip.png')!r}):\n"
            f"    try: p(f)\n    except ValueError: pass")  # fmt: skip
    _, peak_kib = run_measured(code)
    assert peak_kib < 1_500_000  # the strip alone, resized, took 3.5 GB before


def test_arrays_of_an_extreme_shape_are_refused_before_resizing():
    with pytest.raises(ValueError, match="aspect ratio 20000:2"):
        BitImageProcessor()(np.zeros((2, 20_000, 3), dtype=np.uint8))


# -- issue 31, 3: only the accepted formats are opened, wherever an image comes from --------------------------------

POSTSCRIPT = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n"  # Pillow reads it by running gs
REFUSED_AS_EPS = r"it is EPS \(by its first bytes\), and only JPEG, PNG, WEBP, GIF, BMP, TIFF, PPM are read"


@pytest.fixture
def ghostscript_spy(tmp_path, monkeypatch):
    """A `gs` first on PATH that only leaves a mark (Pillow's EPS plugin looks for it afresh): the mark's path."""
    from PIL import EpsImagePlugin

    (tmp_path / "bin").mkdir()
    mark = tmp_path / "gs-ran"
    (tmp_path / "bin" / "gs").write_text(f'#!/bin/sh\necho "$@" >> {mark}\n')
    (tmp_path / "bin" / "gs").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(EpsImagePlugin, "gs_binary", None)
    return mark


def test_postscript_named_jpg_is_refused_as_a_file_without_running_ghostscript(tmp_path, ghostscript_spy):
    from bigtransfer import BitImageProcessorFast
    from bigtransfer.processing.decoding import decode_image

    (tmp_path / "photo.jpg").write_bytes(POSTSCRIPT)
    for read in (decode_image, BitImageProcessor(), BitImageProcessorFast(draft=True)):
        with pytest.raises(ValueError, match=REFUSED_AS_EPS):
            read(str(tmp_path / "photo.jpg"))
    assert not ghostscript_spy.exists()


def test_postscript_uploaded_to_serve_is_a_400_naming_the_format_without_running_ghostscript(upstream, ghostscript_spy):
    from bigtransfer.serve.model import ServedModel
    from helpers import client_for

    with client_for(ServedModel(upstream, "cpu")) as client:
        answer = client.post("/predict", content=POSTSCRIPT)
        form = client.post("/predict", files={"image": ("cat.jpg", POSTSCRIPT, "image/jpeg")})
    for refused in (answer, form):
        assert refused.status_code == 400 and re.search(REFUSED_AS_EPS, refused.json()["error"])
    assert not ghostscript_spy.exists()


def test_postscript_in_a_shard_or_a_datasets_row_is_refused_without_running_ghostscript(tmp_path, ghostscript_spy):
    import tarfile

    import datasets

    from bigtransfer.data.datasets import from_hf_dataset
    from bigtransfer.data.shards import open_shards

    (tmp_path / "shards").mkdir()
    with tarfile.open(tmp_path / "shards" / "shard-000000.tar", "w") as tar:
        for name, data in (("0.jpg", POSTSCRIPT), ("0.cls", b"0"), ("1.png", png_header(tmp_path / "p.png", 4, 4)
                                                                            .read_bytes()), ("1.cls", b"1")):  # fmt: skip
            member = tarfile.TarInfo(name)
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))
    with pytest.raises(ValueError, match=REFUSED_AS_EPS):
        open_shards(str(tmp_path / "shards")).example(0)
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b"])})
    rows = datasets.Dataset.from_dict({"image": [{"bytes": POSTSCRIPT, "path": "photo.jpg"}], "label": [0]},
                                      features=features)  # fmt: skip
    with pytest.raises(ValueError, match=REFUSED_AS_EPS):
        from_hf_dataset(rows, "rows").load(0)
    assert not ghostscript_spy.exists()


def test_no_image_is_opened_but_through_the_checked_opener():
    """Image.open anywhere else would read every format Pillow knows, Ghostscript's included."""
    import ast

    import bigtransfer

    opened = []
    for module in Path(bigtransfer.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(module.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "open":
                owner = node.func.value
                if ast.unparse(owner) in ("Image", "PIL.Image"):
                    opened.append((module.name, [keyword.arg for keyword in node.keywords]))
    assert opened == [("decoding.py", ["formats"])]  # open_checked's


# -- issue 31, 5: serve decodes no more than its model needs, and says beforehand what decoding will take ------------


@pytest.fixture
def served(upstream):
    from bigtransfer.serve.model import ServedModel

    return ServedModel(upstream, "cpu")  # resizes to 20×20


def test_serve_decodes_a_large_jpeg_at_the_scale_its_model_needs_and_counts_it_so(served, tmp_path, monkeypatch):
    import skimage.data

    import bigtransfer.serve.model as model
    from bigtransfer.processing.decoding import decode_stored_image

    photo = Image.fromarray(skimage.data.chelsea()).resize((1600, 1200), Image.Resampling.BICUBIC)
    jpeg, png = io.BytesIO(), io.BytesIO()
    photo.save(jpeg, "JPEG", quality=90)
    photo.save(png, "PNG", compress_level=1)
    assert served.decoding_bytes(jpeg.getvalue()) == 200 * 150 * 4  # 1/8 scale: still ≥ 2× the 20-px target
    assert served.decoding_bytes(png.getvalue()) == 1600 * 1200 * 4  # Pillow keeps RGB in 4 bytes a pixel
    full = served.transform.decoded_geometry(decode_stored_image({"bytes": jpeg.getvalue()}, "photo"))
    normalised = lambda pixels: served.transform.normalise_pixels(torch.from_numpy(pixels[None].copy()))  # noqa: E731
    drafted = normalised(served.pixels(jpeg.getvalue()))
    assert (drafted - normalised(full)).abs().mean() < 2e-2  # the fast processor's draft tolerance
    monkeypatch.setenv(model.SERVE_PIXELS_ENV, "100000")  # decoded pixels count, not declared ones
    assert served.pixels(jpeg.getvalue()).shape == (20, 20, 3)
    with pytest.raises(ValueError, match="1600×1200 pixels is beyond the limit of 100,000 .*SERVE_MAX_IMAGE_PIXELS"):
        served.decoding_bytes(png.getvalue())


def test_serve_refuses_an_upload_beyond_its_own_pixel_limit_that_the_library_reads(served, tmp_path):
    from bigtransfer.processing.decoding import open_checked
    from helpers import client_for

    bomb = png_header(tmp_path / "big.png", 4200, 4200)  # 17.6 megapixels: within the library's 89.5
    open_checked(bomb, "big.png").close()
    with client_for(served) as client:
        answer = client.post("/predict", content=bomb.read_bytes())
    assert answer.status_code == 400
    assert "4200×4200 pixels is beyond the limit of 16,777,216" in answer.json()["error"]
    assert "raise BIGTRANSFER_SERVE_MAX_IMAGE_PIXELS" in answer.json()["error"]


def jpeg_with_damaged_exif(path: Path) -> Path:
    """A 600×700 JPEG shown turned (orientation 6) whose EXIF "Make" (ASCII) is relabelled "YResolution" (a
    rational): exif_transpose, writing the EXIF back, raised TypeError with no file name."""
    exif = Image.Exif()
    exif[0x0112], exif[0x010F] = 6, "Camera"
    damaged = exif.tobytes().replace(b"\x01\x0f\x00\x02", b"\x01\x1b\x00\x02")
    encoded = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (600, 700, 3), dtype=np.uint8)).save(encoded, "JPEG")
    jpeg = encoded.getvalue()
    path.write_bytes(jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(damaged) + 2) + damaged + jpeg[2:])
    return path


@pytest.mark.parametrize("draft", [False, True])
def test_a_jpeg_with_damaged_exif_is_one_line_naming_it_at_any_decoding_scale(tmp_path, draft):
    from bigtransfer import BitImageProcessorFast

    damaged = jpeg_with_damaged_exif(tmp_path / "damaged.jpg")
    with pytest.raises(ValueError, match=r"^Cannot read .*damaged\.jpg as an image \(.*\); the file is corrupt"):
        BitImageProcessorFast(size={"shortest_edge": 32}, crop_size=32, draft=draft)(str(damaged))


def test_serve_names_an_upload_with_damaged_exif(served, tmp_path):
    with pytest.raises(ValueError, match=r"^Cannot read upload\.jpg as an image"):
        served.pixels(jpeg_with_damaged_exif(tmp_path / "damaged.jpg").read_bytes(), "upload.jpg")


def served_peak_kib(model: Path, image: Path) -> tuple[str, int]:
    """`ServedModel.pixels` of one image in a fresh interpreter: "decoded" or the error, and how far it raised
    the process's peak memory (KiB)."""
    code = (f"import re\nfrom pathlib import Path\nfrom bigtransfer.serve.model import ServedModel\n"
            f"hwm = lambda: int(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1))\n"
            f"served = ServedModel({str(model)!r}, 'cpu')\ndata = Path({str(image)!r}).read_bytes()\nbefore = hwm()\n"
            f"try:\n    served.pixels(data)\n    print('decoded')\nexcept ValueError as error:\n    print(error)\n"
            f"print(hwm() - before)")  # fmt: skip
    *outcome, peak_kib = run_measured(code)[0]
    return " ".join(outcome), int(peak_kib)


def test_a_decodable_9000x9000_png_costs_serve_no_memory(upstream, tmp_path):
    outcome, peak_kib = served_peak_kib(upstream, png_header(tmp_path / "9000.png", 9000, 9000, black=True))
    assert "9000×9000 pixels is beyond the limit" in outcome and peak_kib < 20_000  # 850 MB before


def test_the_decoding_cost_serve_reports_is_the_memory_decoding_takes(served, upstream, tmp_path):
    gradient = Image.linear_gradient("L").resize((3000, 2000))
    Image.merge("RGBA", [gradient] * 4).save(tmp_path / "rgba.png", compress_level=1)  # the dearest: onto white
    estimate = served.decoding_bytes((tmp_path / "rgba.png").read_bytes())
    assert estimate == 3000 * 2000 * 16
    outcome, peak_kib = served_peak_kib(upstream, tmp_path / "rgba.png")
    assert outcome == "decoded" and 0.8 * estimate < 1024 * peak_kib < 1.1 * estimate


# -- 3: image URLs are bounded in bytes and time ---------------------------------------------------------------------


class Hostile(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        if self.path.startswith("/silent"):
            time.sleep(5)
            return
        if self.path in ("/slow-headers", "/bad-status"):
            self.answer_raw()
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/html" if self.path == "/html" else "image/png")
        self.end_headers()
        try:
            if self.path == "/html":
                self.wfile.write(b"<html>login required</html>")
            elif self.path.startswith("/endless"):
                for _ in range(10_000):  # bounded: 640 MB at most, the client stops long before
                    self.wfile.write(b"\0" * 65536)
            elif self.path == "/drip":
                for _ in range(30):
                    self.wfile.write(b"\0")
                    self.wfile.flush()
                    time.sleep(0.5)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def answer_raw(self):
        """Bytes no BaseHTTPRequestHandler would send: a status line that is not HTTP, or headers at 5 bytes/s."""
        if self.path == "/bad-status":
            self.wfile.write(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")
            return
        self.wfile.write(b"HTTP/1.1 200 OK\r\nX-Padding: ")
        try:
            for _ in range(40):  # bounded: 8 s at most
                self.wfile.write(b"a")
                time.sleep(0.2)
        except (BrokenPipeError, ConnectionResetError):
            pass


@pytest.fixture
def hostile_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hostile)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_an_endless_body_stops_at_the_byte_limit(hostile_server, monkeypatch):
    import bigtransfer.processing.decoding as decoding

    monkeypatch.setenv(decoding.DOWNLOAD_ENV, str(4 * 2**20))
    with pytest.raises(ValueError, match="beyond the limit of 4,194,304 bytes"):
        fetch_image(f"{hostile_server}/endless", timeout=20)


def test_a_slow_server_is_bounded_by_the_timeout_as_a_whole(hostile_server):
    began = time.monotonic()
    with pytest.raises(OSError, match="took longer than 2 s"):
        fetch_image(f"{hostile_server}/drip", timeout=2)
    assert time.monotonic() - began < 4  # one byte every 0.5 s held a timeout=3 call for 60 s before


def test_a_silent_server_is_bounded_without_a_timeout_given(hostile_server, monkeypatch):
    import bigtransfer.processing.decoding as decoding

    monkeypatch.setattr(decoding, "URL_TIMEOUT", 1.5)  # the default applies when the caller gives none
    began = time.monotonic()
    with pytest.raises(OSError, match="took longer than 1.5 s"):
        fetch_image(f"{hostile_server}/silent")
    assert time.monotonic() - began < 4


def test_a_server_dripping_its_headers_is_bounded_by_the_timeout_as_a_whole(hostile_server):
    began = time.monotonic()
    with pytest.raises(OSError, match=r"image http://127.0.0.1:\d+/slow-headers \(the download took longer than 1 s"):
        fetch_image(f"{hostile_server}/slow-headers", timeout=1)
    assert time.monotonic() - began < 3  # a header byte every 0.2 s held it for as long as the server liked


def test_an_answer_that_is_not_http_is_a_value_error_naming_the_url(hostile_server):
    with pytest.raises(ValueError, match=r"image http://127.0.0.1:\d+/bad-status \(its answer is not valid HTTP"):
        fetch_image(f"{hostile_server}/bad-status", timeout=5)


def test_an_html_answer_is_named(hostile_server):
    with pytest.raises(ValueError, match="the server returned text/html, not an image"):
        fetch_image(f"{hostile_server}/html")


# -- issue 31: tar shards from elsewhere cost their bad samples only, in bounded memory, and never run a command ------


def tiny_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4), (200, 30, 30)).save(buffer, "PNG")
    return buffer.getvalue()


def tar_member(name: str, data: bytes = b"", size: int | None = None, link: str | None = None) -> bytes:
    """One tar member's bytes: its header (declaring `size`, the data's length unless given; a symbolic link to
    `link` when given) and its data."""
    info = tarfile.TarInfo(name)
    info.size = len(data) if size is None else size
    if link is not None:
        info.type, info.linkname = tarfile.SYMTYPE, link
    return info.tobuf(tarfile.GNU_FORMAT) + data + b"\0" * (-len(data) % 512)


def good_sample(key: str, label: bytes = b"0") -> bytes:
    return tar_member(f"{key}.png", tiny_png()) + tar_member(f"{key}.cls", label)


def write_tar(path: Path, *members: bytes, end: bool = True) -> Path:
    path.write_bytes(b"".join(members) + (b"\0" * 1024 if end else b""))  # end: the two zero blocks closing a tar
    return path


def bounded(mib: int) -> str:
    """A line of code that caps the process's address space at what it has mapped so far plus `mib` MiB: a
    regression that would allocate gigabytes fails with MemoryError instead of taking the machine."""
    return ("import re, resource; resource.setrlimit(resource.RLIMIT_AS, (1024 * int(re.search(r'VmSize:\\s+(\\d+)', "
            f"open('/proc/self/status').read()).group(1)) + {mib} * 2**20, resource.RLIM_INFINITY))")  # fmt: skip


def test_a_manifest_naming_a_command_or_a_path_elsewhere_is_refused_and_never_run(tmp_path, monkeypatch, capsys):
    from bigtransfer.data.sources import load_dataset

    monkeypatch.chdir(tmp_path)  # `cd shards && bigtransfer … --data .`: "." joined to a name is the name alone
    size = {"height": 4, "width": 4, "statistic": "median"}
    for name in ("pipe:touch MARKER", "../outside.tar", "/etc/passwd"):
        manifest = {"classes": ["a", "b"], "image_size": size, "shards": [{"name": name, "examples": 1}]}
        Path("dataset.json").write_text(json.dumps(manifest))
        assert cli(["shard", ".", str(tmp_path / "out"), "--quiet"]) == 2
        error = capsys.readouterr().err
        assert f"the shard name {name!r} is not a plain file name" in error and len(error.splitlines()) == 1
    (tmp_path / "bare").mkdir()
    monkeypatch.chdir(tmp_path / "bare")
    Path("pipe:touch MARKER #.tar").write_bytes(b"")  # without a manifest: a file, whatever its name says
    with pytest.raises(ValueError, match="None of the 0 samples of 1 shards"):
        load_dataset(".")
    assert not Path("MARKER").exists() and not (tmp_path / "MARKER").exists()


def test_one_bad_sample_costs_that_sample_and_the_run_lists_it(upstream, tmp_path):
    from bigtransfer.data.sources import load_dataset
    from bigtransfer.data.workers import load_examples

    folder = tmp_path / "shards"
    folder.mkdir()
    write_tar(folder / "shard-000000.tar", good_sample("a0"),
              tar_member("a1.png", link="/etc/passwd"), tar_member("a1.cls", b"1"),  # a symlink member
              tar_member("a2.png", tiny_png()),  # no label
              tar_member("a3.png", tiny_png()), tar_member("a3.png", tiny_png()), tar_member("a3.cls", b"1"),
              good_sample("a4", b"1"))  # fmt: skip
    damaged = write_tar(folder / "shard-000001.tar", good_sample("b0", b"2"), good_sample("b1", b"1"),
                        tar_member("b2.png", tiny_png()[:20], size=len(tiny_png())), end=False)  # fmt: skip
    damaged.write_bytes(damaged.read_bytes()[:-492])  # truncated inside b2.png's data
    manifest = {"classes": ["a", "b", "c"], "class_counts": [1, 2, 1], "image_size": {"height": 4, "width": 4,
                "statistic": "median"}, "shards": [{"name": "shard-000000.tar", "examples": 6},  # 5 are there
                {"name": "shard-000001.tar", "examples": 4}]}  # fmt: skip
    (folder / "dataset.json").write_text(json.dumps(manifest))
    shards = load_dataset(str(folder))
    loaded = load_examples(shards, range(10), range(10), lambda image, _: np.asarray(image))
    assert loaded.ids == [0, 4, 6, 7] and loaded.labels == [0, 1, 2, 1]
    reasons = dict(loaded.failures)
    assert sorted(reasons) == [f"{folder}/shard-000000.tar[{i}]" for i in (1, 2, 3, 5)] + [
        f"{folder}/shard-000001.tar[{i}]" for i in (2, 3)
    ]
    assert "a1.png is a symbolic link, not a file" in reasons[f"{folder}/shard-000000.tar[1]"]
    assert "sample 'a2' has no label" in reasons[f"{folder}/shard-000000.tar[2]"]
    assert "it holds a3.png twice" in reasons[f"{folder}/shard-000000.tar[3]"]
    assert "holds 5 samples but dataset.json says 6" in reasons[f"{folder}/shard-000000.tar[5]"]
    assert "breaks off after 2 samples (unexpected end of data)" in reasons[f"{folder}/shard-000001.tar[2]"]
    assert shards.labels.tolist() == [0, -1, -1, -1, 1, -1, 2, 1, -1, -1]  # evaluation skips the unusable
    metrics = tune(upstream, folder, tmp_path / "run", recipe={"batch_size": 4, "steps": 3})  # every example seen
    assert metrics["steps"] == 3 and sorted(metrics["skipped_images"]) == sorted(reasons)


def test_a_label_far_beyond_the_classes_is_one_line_not_a_class_list_up_to_it(tmp_path):
    write_tar(tmp_path / "shard-000000.tar", good_sample("k0", b"0"), good_sample("k1", b"1"),
              good_sample("k2", b"99999999999"))  # fmt: skip
    code = (f"from bigtransfer.data.sources import load_dataset\nimport datasets\n{bounded(512)}\n"
            f"shards = load_dataset({str(tmp_path)!r})\nprint(len(shards), shards.classes)\n"
            "try:\n    shards.example(2)\nexcept ValueError as error:\n    print(error)\n"
            "from bigtransfer.data.datasets import from_hf_dataset\n"
            f"image = {{'bytes': {tiny_png()!r}, 'path': None}}\n"
            "table = datasets.Dataset.from_dict({'image': [image] * 3, 'label': [0, 1, 99999999999]}, "
            "features=datasets.Features({'image': datasets.Image(), 'label': datasets.Value('int64')}))\n"
            "try:\n    from_hf_dataset(table, 'ints')\nexcept ValueError as error:\n    print(error)")  # fmt: skip
    words, peak_kib = run_measured(code)
    printed = " ".join(words)
    assert printed.startswith("3 ['0', '1'] sample 'k2': the class id 99,999,999,999 is beyond the limit of 100,000")
    assert "ints, row 2: the class id 99,999,999,999 is beyond the limit of 100,000 classes" in printed
    assert peak_kib < 2_000_000  # the class list up to the label took 23 GB


def test_a_class_label_value_past_its_names_is_one_line_naming_the_row():
    import datasets

    from bigtransfer.data.datasets import from_hf_dataset

    image = {"bytes": tiny_png(), "path": None}
    table = datasets.Dataset.from_dict({"image": [image] * 3, "label": [0, 5, 1], "tags": [[0], [1], [-1]]})
    table = table.cast_column("image", datasets.Image())
    table = table.cast_column("label", datasets.ClassLabel(names=["a", "b"]))  # a cast checks no value
    table = table.cast_column("tags", datasets.Sequence(datasets.ClassLabel(names=["a", "b"])))
    with pytest.raises(ValueError, match=re.escape("t, row 1: the class id 5 is none of its 2 classes (0 to 1).")):
        from_hf_dataset(table, "t")  # an IndexError mid-training before
    with pytest.raises(ValueError, match=re.escape("t, row 2: the class id -1 is none of its 2 classes")):
        from_hf_dataset(table, "t", label_column="tags", multi_label=True)  # class "b" before


def test_labels_that_are_no_class_are_skipped_naming_the_sample(tmp_path):
    from bigtransfer.data.sources import load_dataset

    write_tar(tmp_path / "shard-000000.tar", good_sample("n0", b"0"), good_sample("n1", b"cat"),
              good_sample("n2", b"-1"), good_sample("n3", b"2.5"), good_sample("n4", b"1"))  # fmt: skip
    shards = load_dataset(str(tmp_path))  # no manifest: skipped like an unreadable image, keeping their places
    assert len(shards) == 5 and shards.classes == ["0", "1"] and shards.positives_per_class().tolist() == [1, 1]
    for index, reason in ((1, "sample 'n1' has an unreadable label"), (2, "sample 'n2': the class id -1 is negative"),
                          (3, "sample 'n3' has an unreadable label")):  # fmt: skip
        with pytest.raises(ValueError, match=re.escape(reason)):
            shards.example(index)
    manifest = {"classes": ["a", "b"], "image_size": {"height": 4, "width": 4, "statistic": "median"},
                "shards": [{"name": "shard-000000.tar", "examples": 5}]}  # fmt: skip
    (tmp_path / "dataset.json").write_text(json.dumps(manifest))
    write_tar(tmp_path / "shard-000000.tar", *(good_sample(f"m{i}", b"%d" % i) for i in range(5)))
    shards = load_dataset(str(tmp_path))
    assert shards.example(1)[1] == 1
    with pytest.raises(ValueError, match="sample 'm2' has the class id 2, but dataset.json lists 2 classes"):
        shards.example(2)  # an IndexError mid-training before


def test_a_member_beyond_the_cap_is_refused_from_its_header_without_reading_it(tmp_path):
    with gzip.open(tmp_path / "shard-000000.tar", "wb", compresslevel=1) as tar:
        tar.write(good_sample("g0"))
        tar.write(tar_member("g1.png", size=160 * 2**20))
        for _ in range(160):  # 160 MiB of zeros: 0.7 MB compressed
            tar.write(b"\0" * 2**20)
        tar.write(tar_member("g1.cls", b"0") + good_sample("g2", b"1"))
        tar.write(tar_member("g3.png", size=3 * 2**30) + b"\0" * 4096)  # declares 3 GiB; the file ends first
    code = (f"from bigtransfer.data.sources import load_dataset\n{bounded(128)}\n"
            f"shards = load_dataset({str(tmp_path)!r})\nprint(len(shards))\nfor i in range(len(shards)):\n"
            "    try:\n        print(shards.example(i)[1])\n    except ValueError as error:\n"
            "        print(error)")  # fmt: skip
    words, peak_kib = run_measured(code, BIGTRANSFER_MAX_SHARD_MEMBER_BYTES=str(4 * 2**20))
    printed = " ".join(words)
    assert printed.startswith("4 0 sample 'g1' is unusable: g1.png is 167,772,160 bytes, beyond the limit of "
                              "4,194,304 (BIGTRANSFER_MAX_SHARD_MEMBER_BYTES) 1 sample 'g3' is unusable: g3.png is "
                              "3,221,225,472 bytes, beyond the limit")  # fmt: skip
    assert peak_kib < 2_000_000


def test_a_brace_range_of_a_hundred_million_names_is_refused_before_expanding(tmp_path):
    pattern = f"{tmp_path}/shard-{{000000..99999999}}.tar::{tmp_path}/x.tar"
    code = (f"from bigtransfer.data.sources import load_dataset\n{bounded(256)}\ntry:\n    load_dataset({pattern!r})\n"
            "except ValueError as error:\n    print(error)")  # fmt: skip
    words, _ = run_measured(code)
    assert " ".join(words).endswith(
        "names 100,000,001 shards, beyond the limit of 1,000,000: check the {first..last} range."
    )


def test_a_remote_manifest_is_bounded_in_bytes_and_time_like_an_image_url(hostile_server, monkeypatch):
    import bigtransfer.processing.decoding as decoding
    from bigtransfer.data.sources import load_dataset

    code = (f"from bigtransfer.data.sources import load_dataset\n{bounded(256)}\ntry:\n"
            f"    load_dataset({hostile_server + '/endless/shard-{0..1}.tar'!r})\nexcept OSError as error:\n"
            "    print(error)")  # fmt: skip
    words, _ = run_measured(code, BIGTRANSFER_MAX_DOWNLOAD_BYTES=str(4 * 2**20))
    assert f"Could not read {hostile_server}/endless/dataset.json (it is beyond the limit of 4,194,304 bytes" in (
        " ".join(words)
    )
    monkeypatch.setattr(decoding, "URL_TIMEOUT", 1.5)
    began = time.monotonic()
    with pytest.raises(OSError, match=r"silent/dataset.json \(.*(timed out|longer than)"):
        load_dataset(f"{hostile_server}/silent/shard-{{0..1}}.tar")
    assert time.monotonic() - began < 4


# -- 5: SIGTERM saves like Ctrl-C; a folder with metrics only is not a run --------------------------------------------


def test_sigterm_saves_at_the_next_step_and_resume_logs_each_step_once(upstream, folder, tmp_path):
    out = tmp_path / "run"
    command = [sys.executable, "-m", "bigtransfer", "finetune", "--model", str(upstream), "--data", str(folder),
               "--batch-size", "8", "--steps", "300", "--resize", "24", "--crop", "20", "--out", str(out), "--quiet",
               "--workers", "0"]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (out / "metrics.jsonl").exists():
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 143, stderr
    saved = torch.load(out / "checkpoint.pt", weights_only=True)["step"]
    assert 0 < saved < 300 and "interrupted at step" in stderr
    assert subprocess.run([*command, "--resume"], capture_output=True, timeout=300).returncode == 0
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 301))


def test_a_folder_holding_only_metrics_is_not_a_run(upstream, folder, tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.jsonl").write_text('{"step": 1, "lr": 0.0, "loss": 1.0}\n')
    tune(upstream, folder, tmp_path / "run")
    steps = [json.loads(line)["step"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]


# -- 6: a diverged run stops before saving anything from its state ----------------------------------------------------


def test_a_non_finite_loss_stops_the_run_before_any_checkpoint_or_model(upstream, folder, tmp_path, capsys):
    command = ["finetune", "--model", str(upstream), "--data", str(folder), "--batch-size", "8", "--steps", "30",
               "--resize", "24", "--crop", "20", "--out", str(tmp_path / "run"), "--quiet", "--workers", "0",
               "--base-lr", "1e6", "--save-every", "1"]  # fmt: skip
    assert cli(command) == 2
    assert "lower --base-lr" in capsys.readouterr().err
    assert not (tmp_path / "run" / "model").exists()
    for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines():
        assert np.isfinite(json.loads(line)["loss"])  # valid JSON, no bare NaN
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert all(torch.isfinite(tensor).all() for tensor in state["model"].values())


# -- issue 31, 7: weights that turn NaN in an update (its loss still finite) are never saved nor used ------------


def weights_turn_nan_in_update(at_call: int, monkeypatch) -> None:
    """SGD's `at_call`-th update leaves a NaN in the first weight: the loss of that step, computed before the
    update, is still finite."""
    original, calls = torch.optim.SGD.step, {"n": 0}

    def step(self, closure=None):
        result = original(self, closure)
        calls["n"] += 1
        if calls["n"] == at_call:
            with torch.no_grad():
                self.param_groups[0]["params"][0].view(-1)[0] = float("nan")
        return result

    monkeypatch.setattr(torch.optim.SGD, "step", step)


@pytest.mark.parametrize("nan_at, kept", [(6, 3), (3, None)])  # the last step; a checkpoint's own step
def test_weights_that_turn_nan_in_an_update_are_never_saved(upstream, folder, tmp_path, monkeypatch, capsys, nan_at,
                                                            kept):  # fmt: skip
    weights_turn_nan_in_update(nan_at, monkeypatch)
    command = ["finetune", "--model", str(upstream), "--data", str(folder), "--batch-size", "8", "--steps", "6",
               "--resize", "24", "--crop", "20", "--out", str(tmp_path / "run"), "--quiet", "--workers", "0",
               "--save-every", "3"]  # fmt: skip
    assert cli(command) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and f"weights became NaN or infinite at step {nan_at}" in error[0], error
    assert "lower --base-lr" in error[0] and "last saved checkpoint" in error[0]
    assert not (tmp_path / "run" / "model").exists()
    if kept is None:
        assert not (tmp_path / "run" / "checkpoint.pt").exists()
    else:
        state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
        assert state["step"] == kept and all(torch.isfinite(tensor).all() for tensor in state["model"].values())


def test_predict_flags_non_finite_scores_instead_of_printing_them(upstream, tmp_path, capsys):
    model = BitForImageClassification.from_pretrained(upstream)
    with torch.no_grad():
        model.classifier[1].weight.fill_(float("nan"))  # a model saved by a diverged run
    model.save_pretrained(tmp_path / "diverged")
    BitImageProcessor.from_pretrained(upstream).save_pretrained(tmp_path / "diverged")
    Image.new("RGB", (24, 24), (90, 30, 200)).save(tmp_path / "photo.png")
    code = cli(["predict", str(tmp_path / "photo.png"), "--model", str(tmp_path / "diverged"), "--json"])
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert code == 1 and report["results"] == [] and "score" not in captured.out
    assert "not finite" in report["errors"][0]["error"] and "not finite" in captured.err


# -- issue 31, 8: a run whose batches hold no readable image fails instead of "training" ----------------------------


def test_a_run_without_a_readable_image_fails_naming_the_skipped(upstream, folder, tmp_path, capsys):
    for image in folder.rglob("*.png"):
        png_header(image, 24, 24)  # a valid header, so the plan's size sample passes; no pixel data
    command = [
        "finetune",
        "--model",
        str(upstream),
        "--data",
        str(folder),
        "--batch-size",
        "8",
        "--steps",
        "3",
        "--resize",
        "24",
        "--crop",
        "20",
        "--out",
        str(tmp_path / "run"),
        "--quiet",
        "--workers",
        "0",
    ]
    assert cli(command) == 2
    error = [line for line in capsys.readouterr().err.splitlines() if line.startswith("bigtransfer")]
    assert len(error) == 1 and "step 1: none of the 8 examples of its batch had a readable image" in error[0]
    assert "8 unreadable training images skipped so far, e.g." in error[0] and "truncated" in error[0]
    assert not (tmp_path / "run" / "model").exists() and not (tmp_path / "run" / "checkpoint.pt").exists()


def test_the_fraction_of_examples_left_out_is_reported(upstream, folder, tmp_path, capsys):
    for image in sorted(folder.rglob("*.png"))[::3]:  # 5 of the 15
        image.write_bytes(b"not a png")
    command = ["finetune", "--model", str(upstream), "--data", str(folder), "--batch-size", "15", "--steps", "2",
               "--resize", "24", "--crop", "20", "--out", str(tmp_path / "run"), "--quiet", "--workers", "0",
               "--mixup", "0"]  # fmt: skip
    assert cli(command) == 0
    assert "skipped 5 unreadable training images: 33.3% of the examples were left out" in capsys.readouterr().out
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["skipped_fraction"] == 0.3333


# -- 7: one run per folder --------------------------------------------------------------------------------------------


def test_a_second_run_into_a_busy_folder_is_refused_naming_the_first(upstream, folder, tmp_path):
    out = tmp_path / "run"
    command = [sys.executable, "-m", "bigtransfer", "finetune", "--model", str(upstream), "--data", str(folder),
               "--batch-size", "8", "--steps", "200", "--resize", "24", "--crop", "20", "--out", str(out), "--quiet",
               "--workers", "0"]  # fmt: skip
    first = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not (out / "metrics.jsonl").exists():
            time.sleep(0.2)
        with pytest.raises(BlockingIOError, match=f"in use by process {first.pid}"):
            tune(upstream, folder, out, resume=True)
    finally:
        first.kill()
        first.wait()


# -- 8, 10: a damaged checkpoint falls back to the previous one -------------------------------------------------------


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:1000])


def flip_a_weight_bit(path: Path) -> None:
    """One bit of the largest tensor's first float: torch.load ignores the zip CRCs, so this loaded silently."""
    import zipfile

    with zipfile.ZipFile(path) as archive:
        largest = max(archive.infolist(), key=lambda member: member.file_size)
    data = bytearray(path.read_bytes())
    name_length, extra_length = struct.unpack_from("<HH", data, largest.header_offset + 26)
    data[largest.header_offset + 30 + name_length + extra_length + 2] ^= 0x10  # an eighth of its value
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", [truncate, flip_a_weight_bit])
def test_a_damaged_checkpoint_is_named_and_the_previous_one_used(upstream, folder, tmp_path, caplog, damage):
    tune(upstream, folder, tmp_path / "straight")
    out = tmp_path / "run"
    tune(upstream, folder, out, recipe={"steps": 6}, save_every=2)
    assert torch.load(out / "checkpoint.previous.pt", weights_only=True)["step"] == 4
    damage(out / "checkpoint.pt")
    (out / "model").rename(tmp_path / "old-model")
    tune(upstream, folder, out, resume=True)
    assert "checkpoint.pt" in caplog.text and "previous checkpoint" in caplog.text
    from safetensors.torch import load_file

    straight, resumed = (
        load_file(tmp_path / "straight/model/model.safetensors"),
        load_file(out / "model/model.safetensors"),
    )
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)


def test_a_recovered_run_keeps_only_sound_checkpoints_to_fall_back_on(upstream, folder, tmp_path, caplog):
    out = tmp_path / "run"
    tune(upstream, folder, out, save_every=2)  # checkpoint.pt at step 6, checkpoint.previous.pt at step 4
    for recovery in range(2):  # each resume starts from step 4 and saves once more, at step 6
        flip_a_weight_bit(out / "checkpoint.pt")
        (out / "model").rename(tmp_path / f"model-{recovery}")
        tune(upstream, folder, out, save_every=2, resume=True)  # the second found the first's damaged file before
        assert torch.load(out / "checkpoint.previous.pt", weights_only=True)["step"] == 4
    assert (out / "checkpoint.damaged.pt").is_file() and "checkpoint.damaged.pt" in caplog.text  # kept, named


# -- 10, 11, 13: one clear line ---------------------------------------------------------------------------------------


class Payload:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_pickle_payloads_are_refused_without_unsafe_advice(tmp_path, capsys):
    model = tmp_path / "model"
    BitForImageClassification(BitConfig(**SMALL)).config.save_pretrained(model)
    (model / "pytorch_model.bin").write_bytes(pickle.dumps({"weights": Payload()}))
    torch.save({"x": Payload()}, tmp_path / "timm.pth", _use_new_zipfile_serialization=True)
    for source in (model, tmp_path / "timm.pth"):
        with warnings.catch_warnings(record=True) as warned:  # a warning would print before the one line
            warnings.simplefilter("always")
            assert cli(["info", "--model", str(source)]) == 2
        assert not warned, [str(warning.message) for warning in warned]
        err = capsys.readouterr().err
        assert "holds Python objects or code besides tensors, so it was refused" in err
        assert "weights_only=False" not in err and len(err.strip().splitlines()) == 1


def test_a_csv_row_without_a_label_is_named_and_a_bom_is_fine(tmp_path, folder):
    first = next((folder / "a").glob("*.png"))
    (tmp_path / "good.csv").write_text(f"\ufeffpath,label\n{first},a\n{first},b\n", encoding="utf-8")
    from bigtransfer.data.sources import load_dataset

    assert load_dataset(tmp_path / "good.csv").classes == ["a", "b"]
    (tmp_path / "bad.csv").write_text(f"path,label\n{first},a\n{first}\n", encoding="utf-8")
    with pytest.raises(ValueError, match="line 3: every row needs a path and a label"):
        load_dataset(tmp_path / "bad.csv")


@pytest.mark.parametrize(("flag", "value"), [("--steps", "0"), ("--base-lr", "-1"), ("--mixup", "-1"),
                                             ("--batch-size", "0"), ("--workers", "-2")])  # fmt: skip
def test_values_that_make_no_sense_are_refused_at_parse_time(flag, value, capsys):
    with pytest.raises(SystemExit):
        cli(["finetune", "--model", "m", "--data", "d", flag, value])
    assert "out of range" in capsys.readouterr().err


def test_the_python_recipe_refuses_them_too():
    with pytest.raises(ValueError, match="steps=0"):
        FineTuning(steps=0)


# -- issue 32: a limit's environment variable is read where the limit is used, a bad value named in one line --------

LIMIT_MODULES = ("processing.decoding", "processing.base", "data.datasets", "data.tar_reading", "serve.model",
                 "serve.admission", "serve.connections")  # fmt: skip


def test_bad_limit_settings_break_neither_the_import_nor_the_version():
    variables = ("MAX_IMAGE_PIXELS", "MAX_ASPECT_RATIO", "MAX_DOWNLOAD_BYTES", "MAX_INPUT_SIDE", "MAX_CLASSES",
                 "MAX_SHARD_MEMBER_BYTES", "SERVE_MAX_IMAGE_PIXELS", "SERVE_DECODE_BYTES", "SERVE_HEADER_TIMEOUT")  # fmt: skip
    environment = {**os.environ, **{f"BIGTRANSFER_{name}": "80M" for name in variables}}
    imports = "; ".join(f"import bigtransfer.{module}" for module in LIMIT_MODULES)
    code = f"{imports}; from bigtransfer.cli import main; main(['--version'])"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=environment, timeout=120)
    assert done.returncode == 0 and done.stdout.startswith("bigtransfer ") and done.stderr == "", done.stderr


@pytest.mark.parametrize("value", ["80M", "0", "-1", "1e8", "nan"])
def test_a_bad_limit_setting_is_one_line_naming_the_variable_where_the_limit_is_used(value, monkeypatch):
    from bigtransfer.processing.decoding import check_image_size

    check_image_size(640, 480, "photo.jpg")
    monkeypatch.setenv("BIGTRANSFER_MAX_IMAGE_PIXELS", value)
    with pytest.raises(ValueError, match=f"^BIGTRANSFER_MAX_IMAGE_PIXELS='{value}' is not a positive whole number"):
        check_image_size(640, 480, "photo.jpg")


def test_a_limit_setting_takes_effect_without_a_new_import(monkeypatch):
    from bigtransfer.processing.decoding import check_image_size

    monkeypatch.setenv("BIGTRANSFER_MAX_ASPECT_RATIO", "2.5")
    with pytest.raises(ValueError, match="300:100 is beyond the limit of 2.5:1"):
        check_image_size(300, 100, "a banner")
    monkeypatch.setenv("BIGTRANSFER_MAX_ASPECT_RATIO", "3.5")
    check_image_size(300, 100, "a banner")


# -- 4: sizes are checked before anything is allocated --------------------------------------------------------------


def test_an_absurd_config_is_refused_before_allocating(tmp_path):
    with pytest.raises(ValueError, match="sizes beyond any BiT"):
        BitConfig(hidden_sizes=[100_000] * 4)
    model = tmp_path / "model"
    BitForImageClassification(BitConfig(**SMALL)).save_pretrained(model)
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "hidden_sizes": [8192] * 4}))  # ~2.4 GB if built
    code = (f"from bigtransfer import BitForImageClassification\ntry:\n"
            f"    BitForImageClassification.from_pretrained({str(model)!r})\nexcept ValueError as error:\n"
            f"    print('refused' if 'differ from this model' in str(error) else 'other')")  # fmt: skip
    (refused,), peak_kib = run_measured(code)
    assert refused == "refused" and peak_kib < 1_200_000


@pytest.mark.parametrize("setting", ["size", "crop_size"])
def test_absurd_processor_sizes_are_refused_at_load(upstream, setting, tmp_path, capsys, monkeypatch):
    import bigtransfer.processing.base as base

    saved = json.loads((upstream / "preprocessor_config.json").read_text())
    huge = {"height": 100_000, "width": 100_000}  # 9 GB of float32 pixels per image
    (upstream / "preprocessor_config.json").write_text(json.dumps({**saved, setting: huge, "do_center_crop": True}))
    with pytest.raises(
        ValueError, match=f"{setting} .* beyond the limit of 4,096 pixels a side.*BIGTRANSFER_MAX_INPUT"
    ):
        BitImageProcessor.from_pretrained(upstream)
    Image.new("RGB", (24, 24)).save(tmp_path / "image.png")  # never resized: the processor is refused first
    assert cli(["predict", str(tmp_path / "image.png"), "--model", str(upstream)]) == 2
    assert "beyond the limit" in capsys.readouterr().err
    monkeypatch.setenv(base.SIDE_ENV, "100000")
    assert getattr(BitImageProcessor.from_pretrained(upstream), setting) == huge


# -- 9: a full disk while writing the model is one line, and --resume writes it later ---------------------------------


def test_a_full_disk_at_the_final_save_is_named_and_resume_writes_the_model(upstream, folder, tmp_path, monkeypatch):
    from safetensors import SafetensorError

    import bigtransfer.checkpoints.weights as weights

    original = weights.save_file

    def full(*args, **kwargs):
        raise SafetensorError("Error while serializing: IoError(No space left on device)")

    monkeypatch.setattr(weights, "save_file", full)
    with pytest.raises(OSError, match=r"Could not write the trained model into .*MiB free.*--resume"):
        tune(upstream, folder, tmp_path / "run")
    monkeypatch.setattr(weights, "save_file", original)
    (tmp_path / "run" / ".checkpoint.pt.abc.tmp").write_bytes(b"half")  # as a kill mid-save leaves it
    assert tune(upstream, folder, tmp_path / "run", resume=True)["steps"] == 6
    assert (tmp_path / "run" / "model" / "model.safetensors").is_file()
    assert not list((tmp_path / "run").glob(".*.tmp"))


# -- 15: outputs that cannot be right are refused before any work ----------------------------------------------------


def test_an_unwritable_out_is_refused_before_the_model_loads(tmp_path, folder, monkeypatch):
    import bigtransfer.train.fine_tuning as fine_tuning

    monkeypatch.setattr(fine_tuning, "classifier_for", lambda *a: pytest.fail("the model was loaded first"))
    (tmp_path / "a-file").write_text("")
    with pytest.raises(PermissionError, match="is not a writable folder"):
        finetune("anything", str(folder), run=RunOptions(out=tmp_path / "a-file" / "run"))


def test_export_overwrite_never_replaces_a_file_with_a_folder(upstream, tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    assert cli(["export", "--model", str(upstream), "--out", str(tmp_path / "notes.txt"), "--overwrite"]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err and (tmp_path / "notes.txt").read_text() == "mine"


def test_a_class_without_images_is_refused_naming_it(upstream, folder, tmp_path):
    (folder / "empty").mkdir()
    with pytest.raises(ValueError, match="classes 'empty' have no images"):
        tune(upstream, folder, tmp_path / "run")


def test_a_zoo_file_that_is_an_html_page_leaves_the_cache(file_server, tmp_path, monkeypatch):
    root, url = file_server
    (root / "BiT-M-R50x1-CIFAR10.npz").write_text("<html>captive portal</html>")
    monkeypatch.setenv("BIGTRANSFER_BIT_BASE_URL", url)
    monkeypatch.setenv("BIGTRANSFER_CACHE", str(tmp_path / "cache"))
    with pytest.raises(ValueError, match="removed from the cache"):
        BitForImageClassification.from_pretrained("BiT-M-R50x1-CIFAR10")
    assert not (tmp_path / "cache" / "BiT-M-R50x1-CIFAR10.npz").exists()


def test_an_empty_file_first_in_a_training_folder_is_skipped_like_any_other(upstream, folder, tmp_path):
    (folder / "a" / "0000.png").write_bytes(b"")
    plans = []
    metrics = tune(upstream, folder, tmp_path / "run", on_plan=plans.append)
    assert [Path(name).name for name in metrics["skipped_images"]] == ["0000.png"]
    assert "1 of the 16 sampled could not be read and will be skipped" in plans[0]["image_size"]["statistic"]


# -- 14: few-shot skips unreadable shots as every other command does ---------------------------------------------------


def test_fewshot_draws_its_shots_among_readable_images(upstream, folder):
    from bigtransfer.inference.few_shot import FewShotProtocol, fewshot
    from bigtransfer.runtime.settings import InferenceSettings

    broken = folder / "a" / "2.png"
    broken.write_bytes(b"not a png")
    in_process = InferenceSettings(workers=0)
    result = fewshot(str(upstream), str(folder), str(folder), protocol=FewShotProtocol(shots=[4], seeds=3),
                     settings=in_process, progress=False)  # fmt: skip
    assert [Path(name).name for name in result["skipped_train_images"]] == ["2.png"]
    assert len(result["shots"]["4"]["runs"]) == 3 and result["train_images_used"] == 14  # 4 + 5 + 5 readable
    with pytest.raises(ValueError, match="fewer than --shots 5"):  # too few readable ones left in class a
        fewshot(str(upstream), str(folder), str(folder), protocol=FewShotProtocol(shots=[5], seeds=1),
                settings=in_process, progress=False)  # fmt: skip


# -- 12: names that are not UTF-8 -------------------------------------------------------------------------------------


def test_file_names_that_are_not_utf8_are_escaped_and_class_names_refused(upstream, folder, tmp_path, capsys):
    odd = os.fsdecode(bytes(folder / "a") + b"/caf\xe9.png")
    Image.new("RGB", (24, 24), "red").save(odd)
    assert cli(["predict", odd, "--model", str(upstream), "--json", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert json.loads(out)["results"][0]["file"].endswith("caf\\xe9.png") and "\\udce9" not in out
    assert cli(["predict", odd, "--model", str(upstream), "--csv", str(tmp_path / "p.csv"), "--quiet"]) == 0
    assert "caf\\xe9.png" in (tmp_path / "p.csv").read_text(encoding="utf-8")
    os.mkdir(os.fsdecode(bytes(folder) + b"/d\xe9j\xe0"))
    Image.new("RGB", (24, 24)).save(os.fsdecode(bytes(folder) + b"/d\xe9j\xe0/0.png"))
    with pytest.raises(ValueError, match=r"class folder .*d\\xe9j\\xe0 has a name that is not UTF-8"):
        tune(upstream, folder, tmp_path / "run")


def test_a_huge_sparse_safetensors_file_is_refused_from_its_header(tmp_path):
    model = tmp_path / "model"
    BitForImageClassification(BitConfig(**SMALL)).config.save_pretrained(model)
    header = json.dumps({"bit.embedder.convolution.weight": {"dtype": "F32", "shape": [50_000, 50_000],
                                                             "data_offsets": [0, 10_000_000_000]}}).encode()  # fmt: skip
    with open(model / "model.safetensors", "wb") as file:
        file.write(struct.pack("<Q", len(header)) + header)
        file.truncate(8 + len(header) + 10_000_000_000)  # 10 GB that take no disk: nothing may read them
    began = time.monotonic()
    code = (f"from bigtransfer import BitForImageClassification\ntry:\n"
            f"    BitForImageClassification.from_pretrained({str(model)!r})\nexcept ValueError as error:\n"
            f"    print('refused' if 'does not match' in str(error) else 'other')")  # fmt: skip
    (refused,), peak_kib = run_measured(code)
    assert refused == "refused" and peak_kib < 1_200_000 and time.monotonic() - began < 60


def test_a_failed_write_names_the_target_not_the_hidden_temporary(tmp_path, monkeypatch):
    import errno

    from bigtransfer._util.files import atomic_write_text

    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(self))

    monkeypatch.setattr(Path, "write_text", full)
    with pytest.raises(OSError, match=r"Could not write .*metrics.json: No space left on device") as raised:
        atomic_write_text(tmp_path / "metrics.json", "{}")
    assert ".tmp" not in str(raised.value) and not list(tmp_path.iterdir())


def test_export_prints_no_notices_about_operators_a_bit_never_uses(upstream, tmp_path):
    result = subprocess.run([sys.executable, "-m", "bigtransfer", "export", "--model", str(upstream), "--out",
                             str(tmp_path / "exported")], capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "torchvision" not in result.stderr


@pytest.fixture
def small_disk(tmp_path):
    """A real 600-KiB tmpfs (root only, as on this project's machines and CI): two checkpoints of the small model fit,
    a third does not."""
    mount = tmp_path / "small-disk"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=600k", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("mounting a tmpfs needs root")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


def test_a_real_full_disk_stops_in_one_line_and_keeps_a_complete_checkpoint(upstream, folder, small_disk):
    out = small_disk / "run"
    with pytest.raises(OSError, match=r"(Could not write the checkpoint|Could not write the trained model).*MiB free"):
        tune(upstream, folder, out, recipe={"steps": 20}, save_every=1)
    saved = torch.load(out / "checkpoint.pt", weights_only=True)
    assert 1 <= saved["step"] <= 20 and not list(out.glob(".*.tmp"))


# -- JSON files that are not JSON are named -------------------------------------------------------------------------


@pytest.mark.parametrize("damaged", ["state.json", "dataset_info.json", "dataset.json", "export.json"])
def test_a_json_file_that_is_not_json_is_named(tmp_path, damaged):
    from bigtransfer.data.shards import open_shards
    from bigtransfer.data.sources import load_dataset
    from bigtransfer.runtime.exported import ExportedClassifier

    if damaged == "export.json":
        BitConfig(**SMALL).save_pretrained(tmp_path)
        (tmp_path / "model.onnx").write_bytes(b"")
        read = ExportedClassifier
    elif damaged == "dataset.json":
        read = open_shards
    else:
        import datasets

        datasets.Dataset.from_dict({"image": [Image.new("RGB", (8, 8))] * 2, "label": [0, 1]}).save_to_disk(tmp_path)
        read = load_dataset
    (tmp_path / damaged).write_text('{"splits": ["train"')
    with pytest.raises(ValueError, match=f"{damaged} is not valid JSON .*line 1.*: (export|save|write) "):
        read(str(tmp_path))


# -- export directories are what people hand each other: read only what export writes, damage in one line -----------


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """format → a directory exported (once per module) from the SMALL model, to copy before damaging it."""
    from bigtransfer.deploy.export import export

    made = {}

    def exported(format: str) -> Path:
        if format not in made:
            torch.manual_seed(0)
            processor = BitImageProcessor(size={"height": 20, "width": 20}, do_center_crop=False)
            made[format] = tmp_path_factory.mktemp("exports") / format
            export(BitForImageClassification(BitConfig(**SMALL)), processor, made[format], format=format)
        return made[format]

    return exported


def copied(exports, format: str, tmp_path: Path) -> Path:
    import shutil

    return Path(shutil.copytree(exports(format), tmp_path / format))


class WritesMarker:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


def rewrite_archive(path: Path, change) -> None:
    """The zip at `path` with each member's bytes passed through `change(name below the top folder, bytes)`."""
    import zipfile

    with zipfile.ZipFile(path) as archive:
        members = [(info.filename, archive.read(info)) for info in archive.infolist()]
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members:
            archive.writestr(name, change(name.split("/", 1)[1], data))


def pickled_weight(marker: Path):
    def change(name: str, data: bytes) -> bytes:
        if name == "data/weights/model_weights_config.json":
            config = json.loads(data)
            next(iter(config["config"].values()))["use_pickle"] = True  # weight_0: torch.load(weights_only=False)
            return json.dumps(config).encode()
        return pickle.dumps(WritesMarker(marker)) if name == "data/weights/weight_0" else data

    return change


def pickled_sample_inputs(marker: Path):
    return lambda name, data: pickle.dumps(WritesMarker(marker)) if name == "data/sample_inputs/model.pt" else data


def evaluated_size(marker: Path):
    size = "Symbol('s99', positive=True, integer=True)"
    code = f"__import__('pathlib').Path({str(marker)!r}).write_text('pwned')"  # sympify evaluates sizes with eval
    return lambda name, data: data.replace(size.encode(), code.encode(), 1) if name == "models/model.json" else data


@pytest.mark.parametrize("payload", [pickled_weight, pickled_sample_inputs, evaluated_size])
def test_a_model_pt2_that_would_run_code_is_refused_before_loading(exports, tmp_path, payload, capsys):
    exported, marker = copied(exports, "pt2", tmp_path), tmp_path / "pwned"
    rewrite_archive(exported / "model.pt2", payload(marker))
    Image.new("RGB", (24, 24)).save(tmp_path / "image.png")
    assert cli(["predict", str(tmp_path / "image.png"), "--model", str(exported)]) == 2
    err = capsys.readouterr().err
    assert not marker.exists()
    assert "so it was refused: torch.export.load would run code from it" in err and len(err.strip().splitlines()) == 1
    with pytest.raises(ValueError, match="would run code"):
        pipeline("image-classification", model=str(exported))
    assert not marker.exists()


def test_an_export_as_written_still_loads_through_the_check(exports):
    from bigtransfer.runtime.exported import ExportedClassifier

    assert ExportedClassifier(exports("pt2"))(torch.zeros(2, 3, 20, 20)).logits.shape == (2, 3)


def halve(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[3000] ^= 0xFF  # in the first weight: torch reads the archive without checking its CRCs
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(("format", "file", "damage"), [
    ("onnx", "model.onnx", halve), ("openvino", "openvino_model.xml", halve), ("openvino", "openvino_model.bin", halve),
    ("pt2", "model.pt2", halve), ("pt2", "model.pt2", flip_a_byte),
])  # fmt: skip
def test_a_damaged_export_is_one_line_naming_the_file(exports, tmp_path, format, file, damage, capsys):
    from bigtransfer.serve.model import ServedModel

    exported = copied(exports, format, tmp_path)
    damage(exported / file)
    Image.new("RGB", (24, 24)).save(tmp_path / "image.png")
    assert cli(["predict", str(tmp_path / "image.png"), "--model", str(exported)]) == 2
    err = capsys.readouterr().err
    assert str(exported) in err and "export the model again" in err and len(err.strip().splitlines()) == 1
    with pytest.raises(ValueError, match="export the model again"):  # as serve starts, before it opens its port
        ServedModel(exported)


@pytest.mark.parametrize("labels", [2, 5])
def test_a_config_json_whose_labels_are_not_the_graphs_is_refused_at_load(exports, tmp_path, labels, capsys):
    from bigtransfer.serve.model import ServedModel

    exported = copied(exports, "onnx", tmp_path)
    BitConfig(**{**SMALL, "num_labels": labels}).save_pretrained(exported)
    Image.new("RGB", (24, 24)).save(tmp_path / "image.png")
    assert cli(["predict", str(tmp_path / "image.png"), "--model", str(exported)]) == 2
    err = capsys.readouterr().err
    assert f"names {labels} labels, but model.onnx gives 3 scores per image" in err and len(err.splitlines()) == 1
    with pytest.raises(ValueError, match="not this export's"):
        ServedModel(exported)


STAGE_AND_WAIT = """
import os, signal, sys, time
from pathlib import Path
from bigtransfer._util.files import atomic_directory
with atomic_directory(Path(sys.argv[1])) as staging:
    (staging / "model.onnx").write_bytes(b"half")
    print("staged", flush=True)
    if sys.argv[2] == "killed":
        os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(60)
"""


def staged(target: Path, how: str) -> subprocess.Popen:
    """A process writing `target` through atomic_directory: killed mid-write, or still writing."""
    process = subprocess.Popen([sys.executable, "-c", STAGE_AND_WAIT, str(target), how], stdout=subprocess.PIPE,
                               text=True)  # fmt: skip
    assert process.stdout.readline() == "staged\n"
    if how == "killed":
        assert process.wait(timeout=30) == -signal.SIGKILL
    return process


def test_export_removes_what_killed_exports_left_and_only_that(tmp_path, monkeypatch):
    from bigtransfer.deploy import export as exporting

    def names() -> set[str]:
        return {path.name for path in tmp_path.iterdir()}

    out = tmp_path / "exported"
    staged(out, "killed")
    assert [name for name in names() if name.endswith(".partial")]  # what a kill -9 mid-export leaves
    (tmp_path / ".exported.abc123.partial").mkdir()  # as a killed export of an earlier release left it, without lock
    (tmp_path / ".exported.v2.abc123.partial").mkdir()  # another target's
    before = names()
    writing = staged(out, "writing")
    try:
        under_way = names() - before
        torch.manual_seed(0)
        model, processor = BitForImageClassification(BitConfig(**SMALL)), BitImageProcessor(size=20, crop_size=20)
        exporting.export(model, processor, out, format="pt2")
        assert names() == {"exported", ".exported.v2.abc123.partial", *under_way}
        monkeypatch.setattr(exporting, "largest_differences", lambda *args: {"logits": 1.0})
        with pytest.raises(exporting.ExportCheckError):
            exporting.export(model, processor, out, format="pt2", overwrite=True)
        assert names() == {"exported", ".exported.v2.abc123.partial", *under_way}
    finally:
        writing.kill()
        writing.wait()
