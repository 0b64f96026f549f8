"""`bigtransfer bench`: every runtime timed in one process, in alternating blocks, with finite figures."""

from __future__ import annotations

import json
import math
import sys

import pytest
import torch

from bigtransfer.cli import main as cli
from bigtransfer.deploy.bench import alternate, synthetic_images
from bigtransfer.processing.exact import BitImageProcessor
from test_deploy import BUNDLED


def test_rounds_alternate_blocks_of_warm_calls():
    calls = []
    functions = {name: (lambda x, name=name: calls.append(name)) for name in ("a", "b")}
    timings = alternate(functions, torch.zeros(1), rounds=2, calls=3)
    assert calls == ["a", "b"] + (["a"] * 4 + ["b"] * 4) * 2  # a warm-up each, then per round 1 untimed + 3 timed
    assert {name: len(times) for name, times in timings.items()} == {"a": 2, "b": 2}
    assert all(time >= 0 for times in timings.values() for time in times)


def test_synthetic_pictures_are_seeded_and_cover_the_input():
    processor = BitImageProcessor.from_pretrained(BUNDLED)
    first, again = synthetic_images(processor, 4), synthetic_images(processor, 4)
    assert (first.arrays == again.arrays).all() and first.arrays.shape == (4, 40, 40, 3)
    assert first.arrays.std() > 10  # pictures, not a constant


def test_bench_json_lists_every_runtime_with_finite_numbers(capsys):
    assert cli(["bench", str(BUNDLED), "--batch-size", "1,3", "--int8", "--bf16", "--rounds", "2", "--calls", "1",
                "--json"]) == 0  # fmt: skip
    report = json.loads(capsys.readouterr().out)
    paths = {(row["runtime"], row["precision"]) for row in report["results"]}
    assert {("torch", "float32"), ("onnx", "float32"), ("onnx", "int8"), ("openvino", "float32"),
            ("openvino", "int8")} <= paths  # fmt: skip
    skipped = {row["path"] for row in report["skipped"]}
    assert ("openvino", "bfloat16") in paths or "openvino bfloat16" in skipped
    assert {row["batch_size"] for row in report["results"]} == {1, 3}
    for row in report["results"]:
        assert all(math.isfinite(row[key]) and row[key] > 0 for key in ("ms_per_batch", "images_per_s", "speedup"))
        assert row["ms_range"][0] <= row["ms_per_batch"] <= row["ms_range"][1]
        if row["precision"] == "float32":
            assert row["max_abs_logit_difference"] <= 1e-4 and row["top1_agreement"] == 1.0
    baseline = [row for row in report["results"] if row["runtime"] == "torch" and row["precision"] == "float32"]
    assert [row["speedup"] for row in baseline] == [1.0, 1.0]
    assert report["cpu"]["threads"] >= 1 and isinstance(report["cpu"]["flags"], list)
    assert {"torch", "onnxruntime", "openvino"} <= set(report["versions"])


def test_bench_table_names_the_machine_and_the_paths(capsys):
    assert cli(["bench", str(BUNDLED), "--batch-size", "2", "--runtimes", "torch,openvino,transformers",
                "--rounds", "1", "--calls", "1"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "CPU:" in out and "× transformers" in out
    rows = [
        line.split() for line in out.splitlines() if line.split()[:1] in (["torch"], ["openvino"], ["transformers"])
    ]
    assert [row[:3] for row in rows] == [["torch", "float32", "2"], ["transformers", "float32", "2"],
                                         ["openvino", "float32", "2"]]  # fmt: skip


def test_bench_refuses_what_it_cannot_time(capsys):
    assert cli(["bench", str(BUNDLED), "--runtimes", "torch,tensorrt"]) == 2
    assert "Unknown runtime tensorrt: use torch, onnx, openvino, transformers" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli(["bench", str(BUNDLED), "--batch-size", "0"])
    assert "each at least 1" in capsys.readouterr().err


def test_a_runtime_that_is_not_installed_is_listed_with_how_to_install_it(capsys, monkeypatch):
    import openvino

    monkeypatch.setitem(sys.modules, "openvino", None)
    assert cli(["bench", str(BUNDLED), "--batch-size", "1", "--runtimes", "torch,openvino", "--rounds", "1",
                "--calls", "1", "--json"]) == 0  # fmt: skip
    report = json.loads(capsys.readouterr().out)
    assert [row["runtime"] for row in report["results"]] == ["torch"]
    assert report["skipped"][0]["path"] == "openvino"
    assert "pip install -e '.[openvino]'" in report["skipped"][0]["reason"]
    monkeypatch.setitem(sys.modules, "openvino", openvino)
    monkeypatch.setitem(sys.modules, "nncf", None)  # OpenVINO without its quantizer
    assert cli(["bench", str(BUNDLED), "--batch-size", "1", "--runtimes", "openvino", "--int8", "--rounds", "1",
                "--calls", "1", "--json"]) == 0  # fmt: skip
    report = json.loads(capsys.readouterr().out)
    assert [(row["runtime"], row["precision"]) for row in report["results"]] == [("torch", "float32"),
                                                                                 ("openvino", "float32")]  # fmt: skip
    assert (
        report["skipped"][0]["path"] == "openvino int8"
        and "pip install -e '.[openvino]'" in report["skipped"][0]["reason"]
    )
