"""The commands a user types first: predict, models, info, demo, and what they say about damaged files."""

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

import bigtransfer
from bigtransfer import BitConfig, BitForImageClassification, BitImageProcessor, BitModel
from bigtransfer.cli import main as cli
from helpers import TINY, run_python, write_bit_npz

R50 = [3, 4, 6, 3]


@pytest.fixture
def photo_dir(tmp_path):
    import skimage.data
    from PIL import Image

    (tmp_path / "photos" / "nested").mkdir(parents=True)
    Image.fromarray(skimage.data.chelsea()).save(tmp_path / "photos" / "cat.jpg")
    Image.fromarray(skimage.data.coffee()).save(tmp_path / "photos" / "nested" / "coffee.png")
    (tmp_path / "photos" / "broken.jpg").write_bytes(b"not an image")
    return tmp_path / "photos"


def test_predict_cli_json_reports_results_and_skips_broken_files(tmp_path, photo_dir, capsys):
    model = write_bit_npz(tmp_path / "model.npz", R50, num_classes=1000)
    code = cli(["predict", str(photo_dir), "--model", str(model), "--json", "--top-k", "3"])
    report = json.loads(capsys.readouterr().out)
    assert code == 1  # one input failed
    assert [r["file"].rsplit("/", 1)[-1] for r in report["results"]] == ["cat.jpg", "coffee.png"]
    assert all(len(r["predictions"]) == 3 for r in report["results"])
    scores = [p["score"] for p in report["results"][0]["predictions"]]
    assert scores == sorted(scores, reverse=True) and 0 < scores[0] <= 1
    assert report["errors"][0]["file"].endswith("broken.jpg")


def test_predict_cli_writes_csv(tmp_path, photo_dir):
    model = write_bit_npz(tmp_path / "model.npz", R50, num_classes=1000)
    assert cli(["predict", str(photo_dir / "cat.jpg"), "--model", str(model), "--csv", str(tmp_path / "p.csv")]) == 0
    lines = (tmp_path / "p.csv").read_text().splitlines()
    assert lines[0] == "file,rank,label,score" and len(lines) == 6


def test_pipeline_matches_manual_processing(tmp_path, photo_dir):
    from bigtransfer import pipeline

    model_path = write_bit_npz(tmp_path / "BiT-M-R50x1-ILSVRC2012.npz", R50, num_classes=1000)
    classify = pipeline("image-classification", model=str(model_path), device="cpu")
    top = classify(str(photo_dir / "cat.jpg"), top_k=2)
    model = BitForImageClassification.from_pretrained(model_path)
    pixels = BitImageProcessor.from_pretrained(model_path)(str(photo_dir / "cat.jpg"), return_tensors="pt")
    with torch.no_grad():
        probabilities = model(**pixels).logits.softmax(-1)[0]
    best = int(probabilities.argmax())
    assert top[0]["label"] == model.config.id2label[best]
    assert abs(top[0]["score"] - float(probabilities[best])) < 5e-3  # fast vs exact processor
    assert len(classify([str(photo_dir / "cat.jpg")] * 3, top_k=1)) == 3


def test_models_command_lists_the_zoo(capsys):
    assert cli(["models", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {"BiT-M-R50x1", "BiT-S-R101x3", "BiT-M-R152x2-ILSVRC2012", "BiT-M-R50x1-CIFAR10"} <= {
        r["name"] for r in rows
    }


def test_info_describes_a_zoo_model_without_downloading_and_a_local_one_by_loading(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("BIGTRANSFER_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("BIGTRANSFER_OFFLINE", "1")
    assert cli(["info", "BiT-M-R50x1-CIFAR10", "--json"]) == 0
    zoo = json.loads(capsys.readouterr().out)
    assert zoo["parameters"] == 23_520_842 and zoo["resolution"] == 128 and not zoo["cached"]
    BitForImageClassification(BitConfig(**TINY)).save_pretrained(tmp_path / "tiny")
    assert cli(["info", str(tmp_path / "tiny"), "--json"]) == 0
    local = json.loads(capsys.readouterr().out)
    assert local["num_labels"] == 3 and local["config"]["depths"] == TINY["depths"]
    assert cli(["info", str(tmp_path / "tiny")]) == 0
    text = capsys.readouterr().out
    assert "num_labels: 3" in text and "config:\n" in text and "  depths: [1, 1, 2, 1]" in text
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)


def test_demo_round_trips_a_model_and_classifies_a_photo(tmp_path, capsys):
    assert cli(["demo", "--out", str(tmp_path / "demo"), "--json", "--top-k", "3", "--num-labels", "10"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["reloaded_logits_identical"] and len(result["top_k"]) == 3
    scores = [entry["score"] for entry in result["top_k"]]
    assert scores == sorted(scores, reverse=True) and 0 < sum(scores) <= 1  # ranked probabilities, not logits
    assert cli(["demo", "--out", str(tmp_path / "demo")]) == 2  # the CLI's code for a bad value, not sys.exit's 1
    error = capsys.readouterr().err
    assert error.startswith("bigtransfer demo: ") and "already holds a model" in error and error.count("\n") == 1


def test_damaged_or_missing_files_are_named_without_a_traceback(tmp_path, capsys):
    for name in ("broken-config", "truncated-weights"):
        BitForImageClassification(BitConfig(**TINY)).save_pretrained(tmp_path / name)
    (tmp_path / "broken-config" / "config.json").write_text('{"depths": [1,')
    weights = tmp_path / "truncated-weights" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    expected = {
        "broken-config": r"broken-config/config\.json is not valid JSON",
        "truncated-weights": r"truncated-weights/model\.safetensors \(.*\); the file is truncated",
        "nowhere/BiT-M-R101x3.npz": r"nowhere/BiT-M-R101x3\.npz does not exist",
    }
    for name, message in expected.items():
        assert cli(["info", str(tmp_path / name)]) == 2
        error = capsys.readouterr().err
        assert re.search(message, error) and "Traceback" not in error, error


def test_bigtransfer_alone_prints_the_command_overview_and_version(capsys):
    assert cli([]) == 0
    overview = capsys.readouterr().out
    assert "COMMAND" in overview and all(name in overview for name in ("finetune", "fewshot", "embed", "export"))
    with pytest.raises(SystemExit) as exit_info:
        cli(["--version"])
    assert exit_info.value.code == 0 and capsys.readouterr().out.strip() == f"bigtransfer {bigtransfer.__version__}"


def test_models_lists_the_bundled_models_first(capsys):
    assert cli(["models", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["name"] == "bit-tiny-fashion5" and rows[0]["head"] == 5 and rows[0]["parameters"] == 510_693
    assert rows[1]["name"] == "bit-tiny-glyphs" and rows[1]["head"] == 39 and rows[1]["resolution"] == 32
    assert rows[1]["upstream"].startswith("printed letters") and rows[1]["parameters"] == 528_135
    assert rows[0]["url"] is rows[1]["url"] is None and rows[2]["name"].startswith("BiT-")


def test_output_piped_into_head_is_not_an_error():
    done = subprocess.run(f"{sys.executable} -m bigtransfer models | head -1", shell=True, capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert done.stdout.startswith("name") and done.stderr == ""


def test_demo_without_out_leaves_nothing_behind(tmp_path, monkeypatch, capsys):
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    assert cli(["demo", "--json", "--num-labels", "10"]) == 0
    assert json.loads(capsys.readouterr().out)["saved_to"].startswith("a temporary directory, removed")
    assert list(tmp_path.iterdir()) == []


def test_predict_with_an_unreachable_hub_fails_fast_in_one_line(tmp_path):
    photo = tmp_path / "x.jpg"
    Image.new("RGB", (32, 32)).save(photo)
    began = time.perf_counter()
    environment = {**os.environ, "HF_ENDPOINT": "http://127.0.0.1:9", "HF_HOME": str(tmp_path / "hf")}
    done = subprocess.run([sys.executable, "-m", "bigtransfer", "predict", "--model", "google/bit-50", str(photo)],
                          capture_output=True, text=True, env=environment, timeout=60)  # fmt: skip
    assert time.perf_counter() - began < 10
    assert done.returncode == 2 and "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert (
        "Could not reach the Hugging Face Hub for 'google/bit-50'" in done.stderr and "HF_HUB_OFFLINE=1" in done.stderr
    )


def test_transformers_imports_in_a_fresh_interpreter_after_set_up():
    done = run_python("from transformers import BitForImageClassification, Trainer; print('ok')")
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-500:]


def test_an_unreadable_input_is_reported_once(tmp_path, photo_dir, capsys):
    model = write_bit_npz(tmp_path / "model.npz", [1, 1, 1, 1], num_classes=10)
    assert cli(["predict", str(photo_dir), "--model", str(model), "--quiet"]) == 1
    assert len([line for line in capsys.readouterr().err.splitlines() if "broken.jpg" in line]) == 1
    assert cli(["embed", str(photo_dir), "--model", str(model), "--out", str(tmp_path / "f.npy"), "--quiet"]) == 1
    assert len([line for line in capsys.readouterr().err.splitlines() if "broken.jpg" in line]) == 1


@pytest.mark.parametrize(
    "command", ["predict", "evaluate", "finetune", "fewshot", "embed", "export", "convert", "info"]
)
def test_every_command_names_the_model_with_model(command, capsys):
    with pytest.raises(SystemExit):
        cli([command, "--help"])
    assert "--model MODEL" in capsys.readouterr().out


def test_old_positional_spellings_still_work(tmp_path, capsys):
    tiny = tmp_path / "tiny"
    BitForImageClassification(BitConfig(**TINY)).save_pretrained(tiny)
    BitImageProcessor(size=32, crop_size=32).save_pretrained(tiny)
    assert cli(["convert", str(tiny), str(tmp_path / "a")]) == 0
    assert cli(["convert", "--model", str(tiny), "--out", str(tmp_path / "b")]) == 0
    assert (tmp_path / "a" / "model.safetensors").is_file() and (tmp_path / "b" / "model.safetensors").is_file()
    capsys.readouterr()
    assert cli(["info", str(tiny), "--json"]) == 0 and json.loads(capsys.readouterr().out)["num_labels"] == 3
    assert cli(["convert", "--model", str(tiny), str(tmp_path / "c")]) == 0  # --model with a positional OUT
    assert (tmp_path / "c" / "model.safetensors").is_file()
    with pytest.raises(SystemExit):
        cli(["convert", str(tiny), "--model", str(tmp_path / "a"), "--out", str(tmp_path / "d")])
    assert "give MODEL and OUT once each" in capsys.readouterr().err


def test_convert_into_a_folder_in_use_is_one_line_and_exit_code_2(tmp_path, capsys):
    tiny = tmp_path / "tiny"
    BitForImageClassification(BitConfig(**TINY)).save_pretrained(tiny)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    assert cli(["convert", str(tiny), str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    assert error.startswith("bigtransfer convert: ") and "is not empty" in error and error.count("\n") == 1


def test_convert_over_an_earlier_conversion_leaves_no_stale_preprocessing(tmp_path, capsys):
    with_preprocessing, without = tmp_path / "with", tmp_path / "without"
    for folder in (with_preprocessing, without):
        BitForImageClassification(BitConfig(**TINY)).save_pretrained(folder)
    BitImageProcessor(size=32, crop_size=32).save_pretrained(with_preprocessing)
    assert cli(["convert", "--model", str(with_preprocessing), "--out", str(tmp_path / "out")]) == 0
    assert cli(["convert", "--model", str(without), "--out", str(tmp_path / "out"), "--overwrite"]) == 0
    assert not (tmp_path / "out" / "preprocessor_config.json").exists()
    assert "none was written" in capsys.readouterr().out


def test_info_describes_a_local_folder_named_like_a_zoo_entry(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    BitForImageClassification(BitConfig(**TINY)).save_pretrained("BiT-M-R50x1")
    assert cli(["info", "--model", "BiT-M-R50x1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["num_labels"] == 3  # not the zoo entry's 21,843


def test_training_under_torchrun_needs_an_out_folder(monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    for command in (["finetune", "--model", "m", "--data", "d"], ["pretrain", "--data", "d"]):
        assert cli(command) == 2
        assert "under torchrun needs --out DIR" in capsys.readouterr().err


def test_fewshot_repeats_are_runs_like_finetunes_with_seeds_kept(capsys):
    for spelling in ("--runs", "--seeds"):
        args = bigtransfer.cli.build_parser().parse_args(
            ["fewshot", "--model", "m", "--data", "d", "--eval-data", "e", spelling, "4"]
        )
        assert args.runs == 4


def test_workers_help_mentions_metrics_jsonl_only_where_one_is_written(capsys):
    for command, writes_metrics in (("finetune", True), ("pretrain", True), ("predict", False), ("embed", False),
                                    ("evaluate", False), ("fewshot", False), ("export", False)):  # fmt: skip
        with pytest.raises(SystemExit):
            cli([command, "--help"])
        assert ("metrics.jsonl" in " ".join(capsys.readouterr().out.split())) is writes_metrics, command


def test_inference_commands_share_one_batch_size_default_with_its_reason(capsys):
    for command in ("predict", "evaluate", "fewshot", "embed"):
        with pytest.raises(SystemExit):
            cli([command, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        assert "images per forward pass (default 32: about 2 GB of activations" in text, command


def test_commands_import_options_from_one_module_not_from_each_other():
    import ast

    cli_dir = Path(bigtransfer.__file__).parent / "cli"
    for path in cli_dir.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module not in (None, "_options"):
                assert path.name == "__init__.py", f"{path.name} imports from cli.{node.module}"


def test_an_unknown_device_is_one_line_and_exit_code_2(tmp_path, capsys):
    """torch's RuntimeError for `--device gpu` was a traceback; it is now the one line every bad value gets."""
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    assert cli(["predict", str(tmp_path / "a.png"), "--model", "bit-tiny-glyphs", "--device", "gpu"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--device 'gpu' is not a device: use cpu, cuda or cuda:N" in err


def test_the_pretrain_help_examples_of_a_custom_architecture_build_with_the_default_groups():
    from bigtransfer.cli.training import pretrain_config

    (commands,) = [a for a in bigtransfer.cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    helps = {action.dest: action.help for action in commands.choices["pretrain"]._actions}
    depths, widths = (re.search(r"e\.g\. ([\d,]+)", helps[name])[1] for name in ("depths", "hidden_sizes"))
    args = bigtransfer.cli.build_parser().parse_args(
        ["pretrain", "--data", "images/", "--arch", "custom", "--depths", depths, "--hidden-sizes", widths]
    )
    config = pretrain_config(args)
    assert config.hidden_sizes == [int(width) for width in widths.split(",")] and config.num_groups == 32
    with torch.device("meta"):
        BitModel(config)  # GroupNorm refused 64,128,256,512: a bottleneck of 16 channels in 32 groups
