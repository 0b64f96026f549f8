"""OpenVINO exports: float32 features beside the logits, bf16 where the CPU has it, int8 by NNCF, every command
that runs an export directory, and the errors a user meets."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

import numpy as np
import pytest
import torch

from bigtransfer import BitForImageClassification, BitImageProcessor, pipeline
from bigtransfer.cli import main as cli
from bigtransfer.deploy.export import export
from bigtransfer.runtime.exported import ExportedClassifier
from bigtransfer.serve.model import ServedModel
from test_deploy import BUNDLED, FASHION_TEST, PROCESSOR, photos, tiny_classifier

FIVE_CLASSES = "T-shirt/top,Trouser,Pullover,Dress,Coat"  # the five the bundled model was trained on


@pytest.fixture(scope="module")
def bundled_openvino(tmp_path_factory):
    out = tmp_path_factory.mktemp("openvino") / "bit-tiny-fashion5"
    model, processor = BitForImageClassification.from_pretrained(BUNDLED), BitImageProcessor.from_pretrained(BUNDLED)
    export(model, processor, out, format="openvino")
    return out


def test_openvino_export_holds_float32_weights_and_gives_pooled_features(tmp_path):
    model = tiny_classifier("hybrid_same")
    report = export(model, PROCESSOR, tmp_path / "out", format="openvino")
    assert report.max_abs_logit_difference <= 1e-4 and report.max_abs_feature_difference <= 1e-4
    info = json.loads((tmp_path / "out" / "export.json").read_text())
    assert info["format"] == "openvino" and {"openvino", "nncf"} <= set(info)  # the versions that made it
    assert {p.name for p in (tmp_path / "out").iterdir()} == {
        "openvino_model.xml", "openvino_model.bin", "config.json", "preprocessor_config.json", "export.json"}  # fmt: skip
    parameters = sum(p.numel() for p in model.parameters())
    assert (tmp_path / "out" / "openvino_model.bin").stat().st_size >= 4 * parameters * 0.9  # not halved to fp16
    exported = ExportedClassifier(tmp_path / "out")
    assert exported.compute_precision == "float32"
    for batch in (1, 3):
        pixel_values = photos(PROCESSOR, batch)
        with torch.inference_mode():
            expected = model.bit(pixel_values).pooler_output.flatten(1)
        assert (exported.features(pixel_values) - expected).abs().max() <= 1e-4


def test_predict_embed_pipeline_and_serve_run_an_openvino_export(bundled_openvino, tmp_path, capsys):
    from bigtransfer.data.sources import load_dataset

    fashion = load_dataset(FASHION_TEST)
    folder = tmp_path / "images"
    folder.mkdir()
    for index in range(6):
        fashion.load(index).save(folder / f"{index}.png")
    results = {}
    for number, model in enumerate((BUNDLED, bundled_openvino)):
        assert cli(["predict", str(folder), "--model", str(model), "--top-k", "2", "--json", "--workers", "0"]) == 0
        results[model] = json.loads(capsys.readouterr().out)["results"]
        assert cli(["embed", str(folder), "--model", str(model), "--out", str(tmp_path / f"{number}.npy"),
                    "--workers", "0", "--quiet"]) == 0  # fmt: skip
        capsys.readouterr()
    for original, exported in zip(results[BUNDLED], results[bundled_openvino]):
        assert [p["label"] for p in original["predictions"]] == [p["label"] for p in exported["predictions"]]
        assert np.allclose([p["score"] for p in original["predictions"]],
                           [p["score"] for p in exported["predictions"]], atol=1e-5)  # fmt: skip
    features = [np.load(tmp_path / f"{number}.npy") for number in range(2)]
    assert features[0].shape == (6, 512) and np.abs(features[0] - features[1]).max() <= 1e-4
    files = sorted(str(path) for path in folder.iterdir())
    exported, original = (pipeline("image-classification", model=model)(files, top_k=1)
                          for model in (bundled_openvino, BUNDLED))  # fmt: skip
    for a, b in zip(exported, original, strict=True):
        assert a[0]["label"] == b[0]["label"] and a[0]["score"] == pytest.approx(b[0]["score"], abs=1e-5)
    served = ServedModel(bundled_openvino)
    pixels = np.stack([served.pixels((folder / "0.png").read_bytes())])
    assert served.name == "bit-tiny-fashion5"
    assert (served.logits(pixels) - ServedModel(BUNDLED).logits(pixels)).abs().max() <= 1e-4


def test_bf16_compiles_bf16_where_the_cpu_has_it_and_says_so_where_not(bundled_openvino, caplog, capsys):
    scores = {}
    for options in ([], ["--bf16"]):
        with caplog.at_level(logging.WARNING):
            assert cli(["evaluate", "--model", str(bundled_openvino), "--data", FASHION_TEST, "--classes",
                        FIVE_CLASSES, "--json", "--quiet", *options]) == 0  # fmt: skip
        scores[tuple(options)] = json.loads(capsys.readouterr().out)["top1"]
    compiled = ExportedClassifier(bundled_openvino, bf16=True)
    if compiled.compute_precision == "bfloat16":  # AMX or AVX512_BF16: the 1-point bound
        assert abs(scores[("--bf16",)] - scores[()]) <= 0.01
    else:
        assert "no bfloat16 support" in caplog.text and "runs the model in float32" in caplog.text
        assert scores[("--bf16",)] == scores[()]
    assert scores[()] > 0.8


def test_openvino_int8_keeps_fashion_mnist_top1_within_one_point(tmp_path, capsys):
    out = tmp_path / "int8"
    assert cli(["export", str(BUNDLED), str(out), "--format", "openvino", "--int8", "--calibration", FASHION_TEST,
                "--classes", FIVE_CLASSES, "--heldout-size", "1000", "--json"]) == 0  # fmt: skip
    report = json.loads(capsys.readouterr().out)  # NNCF's progress went to stderr: stdout is the JSON alone
    assert report["precision"] == "int8" and report["int8"]["calibration_images"] == 128
    assert abs(report["int8"]["float32_top1"] - report["int8"]["int8_top1"]) <= 0.01
    assert sorted(p.name for p in out.iterdir()) == [
        "config.json", "export.json", "openvino_model.bin", "openvino_model.xml", "preprocessor_config.json"]  # fmt: skip
    scores = {}
    for model in (BUNDLED, out):
        assert cli(["evaluate", "--model", str(model), "--data", FASHION_TEST, "--classes", FIVE_CLASSES, "--json",
                    "--quiet"]) == 0  # fmt: skip
        scores[model] = json.loads(capsys.readouterr().out)["top1"]
    assert scores[BUNDLED] > 0.8 and abs(scores[BUNDLED] - scores[out]) <= 0.01


def test_openvino_runs_on_the_cpu_by_default_on_a_gpu_machine(bundled_openvino, monkeypatch):
    from bigtransfer.runtime.classifier import load_classifier

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # as on a GPU machine: torch would pick cuda
    assert load_classifier(bundled_openvino).device.type == "cpu"
    classify = pipeline("image-classification", model=bundled_openvino)
    assert classify.device.type == "cpu" and classify.model.device.type == "cpu"


def test_what_an_export_cannot_do_is_refused_with_the_way_out(bundled_openvino, tmp_path, capsys):
    export(BitForImageClassification.from_pretrained(BUNDLED), BitImageProcessor.from_pretrained(BUNDLED),
           tmp_path / "onnx")  # fmt: skip
    with pytest.raises(ValueError, match="bf16 does not apply.*--format openvino"):
        ExportedClassifier(tmp_path / "onnx", bf16=True)
    with pytest.raises(ValueError, match="run on the CPU.*--device cpu"):
        ExportedClassifier(bundled_openvino, device="cuda")
    with pytest.raises(ValueError, match="hidden states"):
        pipeline("image-feature-extraction", model=bundled_openvino)
    image = tmp_path / "one.png"
    from PIL import Image

    Image.new("RGB", (40, 40), (120, 30, 200)).save(image)
    assert cli(["embed", str(image), "--model", str(tmp_path / "onnx"), "--out", str(tmp_path / "f.npy")]) == 2
    assert "logits only" in capsys.readouterr().err and not (tmp_path / "f.npy").exists()


def test_missing_openvino_says_how_to_install_it(bundled_openvino, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)
    assert cli(["evaluate", "--model", str(bundled_openvino), "--data", FASHION_TEST]) == 2
    assert "pip install -e '.[openvino]'" in capsys.readouterr().err
    assert cli(["export", str(BUNDLED), str(tmp_path / "out"), "--format", "openvino"]) == 2
    assert "pip install -e '.[openvino]'" in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_releasing_compiled_models_in_any_order_leaves_signals_working(bundled_openvino):
    """OpenVINO leaves a dangling signal stack on the thread that compiled models released out of order; the
    next signal (a loading worker's SIGCHLD) then killed the process. Run apart: a failure is a crash."""
    script = f"""
import gc, os, signal
from pathlib import Path
from bigtransfer.runtime.openvino import OpenVINORunner
handled = []
signal.signal(signal.SIGUSR1, lambda *_: handled.append(1))
first = OpenVINORunner(Path({str(bundled_openvino / "openvino_model.xml")!r}))
second = OpenVINORunner(Path({str(bundled_openvino / "openvino_model.xml")!r}))
del first; gc.collect()
del second; gc.collect()
os.kill(os.getpid(), signal.SIGUSR1)
assert handled == [1]
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_a_runner_called_from_many_threads_gives_each_its_own_answer(bundled_openvino):
    import concurrent.futures

    from bigtransfer.runtime.openvino import OPENVINO_FILE, OpenVINORunner

    runner = OpenVINORunner(bundled_openvino / OPENVINO_FILE)
    size = BitImageProcessor.from_pretrained(bundled_openvino).eval_transform().fixed_size()
    images = [np.random.default_rng(seed).standard_normal((1, 3, *size), dtype=np.float32) for seed in range(16)]
    expected = [runner(image)["logits"] for image in images]
    assert all(not np.array_equal(expected[0], other) for other in expected[1:])
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        for _ in range(5):
            answers = list(pool.map(lambda image: runner(image)["logits"], images))
            assert all(np.array_equal(answer, want) for answer, want in zip(answers, expected))
