"""Untrusted input and faults: hostile images and servers are bounded in memory and time and reported like any
unreadable file; a stopped, diverged, doubled or damaged run loses nothing that was saved."""

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
import threading
import time
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


def run_measured(code: str) -> tuple[list[str], int]:
    """Run `code` in a fresh interpreter: the words it printed, and its own peak memory in KiB (/proc's VmHWM
    belongs to the new process image; ru_maxrss would carry the test process's peak over fork and exec)."""
    script = code + "\nimport re\nprint(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1))"
    words = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout.split()
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
    reference = served.transform.normalise_pixels(torch.from_numpy(full[None])).numpy()[0]
    assert np.abs(served.pixels(jpeg.getvalue()) - reference).mean() < 2e-2  # the fast processor's draft tolerance
    monkeypatch.setattr(model, "SERVE_MAX_IMAGE_PIXELS", 100_000)  # decoded pixels count, not declared ones
    assert served.pixels(jpeg.getvalue()).shape == (3, 20, 20)
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
        if self.path == "/silent":
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
            elif self.path == "/endless":
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

    monkeypatch.setattr(decoding, "MAX_DOWNLOAD_BYTES", 4 * 2**20)
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


# -- 8: a damaged checkpoint falls back to the previous one ----------------------------------------------------------


def test_a_truncated_checkpoint_is_named_and_the_previous_one_used(upstream, folder, tmp_path, caplog):
    tune(upstream, folder, tmp_path / "straight")
    out = tmp_path / "run"
    tune(upstream, folder, out, recipe={"steps": 6}, save_every=2)
    assert torch.load(out / "checkpoint.previous.pt", weights_only=True)["step"] == 4
    (out / "checkpoint.pt").write_bytes((out / "checkpoint.pt").read_bytes()[:1000])
    (out / "model").rename(tmp_path / "old-model")
    tune(upstream, folder, out, resume=True)
    assert "checkpoint.pt" in caplog.text and "previous checkpoint" in caplog.text
    from safetensors.torch import load_file

    straight, resumed = (
        load_file(tmp_path / "straight/model/model.safetensors"),
        load_file(out / "model/model.safetensors"),
    )
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)


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
        assert cli(["info", "--model", str(source)]) == 2
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
    from bigtransfer.inference.few_shot import fewshot

    broken = folder / "a" / "2.png"
    broken.write_bytes(b"not a png")
    result = fewshot(str(upstream), str(folder), str(folder), shots=[4], seeds=3, workers=0, progress=False)
    assert [Path(name).name for name in result["skipped_train_images"]] == ["2.png"]
    assert len(result["shots"]["4"]["runs"]) == 3 and result["train_images_used"] == 14  # 4 + 5 + 5 readable
    with pytest.raises(ValueError, match="fewer than --shots 5"):  # too few readable ones left in class a
        fewshot(str(upstream), str(folder), str(folder), shots=[5], seeds=1, workers=0, progress=False)


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

    from bigtransfer.checkpoints.io import atomic_write_text

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
