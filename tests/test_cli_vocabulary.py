"""One option vocabulary across commands, and the errors a user meets in the first hour: one line, at once,
exit 2, with the fix."""

import argparse
import json
import time

import pytest
from PIL import Image

from bigtransfer import BitConfig, BitForImageClassification, BitImageProcessor
from bigtransfer.cli import build_parser
from bigtransfer.cli import main as cli
from bigtransfer.data import datasets
from helpers import TINY

# The role each command's inputs and outputs play, named the same everywhere.
READS_DATA = ["finetune", "evaluate", "pretrain", "fewshot", "predict", "embed", "export", "bench", "shard"]
NAMES_A_MODEL = ["info", "convert", "predict", "finetune", "evaluate", "fewshot", "embed", "export", "bench", "serve"]
WRITES_OUT = ["demo", "convert", "predict", "finetune", "pretrain", "embed", "export", "shard"]


def command_parsers() -> dict[str, argparse.ArgumentParser]:
    (commands,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(commands.choices)


def options_of(parser: argparse.ArgumentParser) -> set[str]:
    return {name for action in parser._actions for name in action.option_strings}


@pytest.fixture
def tiny_model(tmp_path):
    BitForImageClassification(BitConfig(**TINY)).save_pretrained(tmp_path / "tiny")
    BitImageProcessor(size=32, crop_size=32).save_pretrained(tmp_path / "tiny")
    return tmp_path / "tiny"


def test_every_command_names_its_model_data_and_output_with_one_option_each():
    parsers = command_parsers()
    assert [c for c in READS_DATA if "--data" not in options_of(parsers[c])] == []
    assert [c for c in NAMES_A_MODEL if "--model" not in options_of(parsers[c])] == []
    assert [c for c in WRITES_OUT if "--out" not in options_of(parsers[c])] == []


def test_workers_means_image_loading_processes_in_every_command():
    for name, parser in command_parsers().items():
        for action in parser._actions:
            if "--workers" in action.option_strings and action.help != argparse.SUPPRESS:
                assert action.help.startswith("image-loading processes"), name


def test_repeats_are_runs_or_seeds_in_finetune_as_in_fewshot():
    parsers = command_parsers()
    for command in ("finetune", "fewshot"):
        for spelling in ("--runs", "--seeds"):
            args = parsers[command].parse_args(["--model", "m", "--data", "d", "--eval-data", "e", spelling, "4"])
            assert args.runs == 4, (command, spelling)


def test_a_range_error_is_one_line_naming_the_command_not_a_usage_block(capsys):
    with pytest.raises(SystemExit) as stop:
        cli(["finetune", "--model", "m", "--data", "d", "--steps", "0"])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.count("\n") == 1 and "usage:" not in err
    assert err.startswith("bigtransfer finetune: argument --steps: 0 is out of range") and "--help" in err


def test_an_unknown_option_names_the_near_one_in_the_commands_name(capsys):
    with pytest.raises(SystemExit) as stop:
        cli(["predict", "--model", "m", "--dta", "photos/"])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.count("\n") == 1
    assert err.startswith("bigtransfer predict: unrecognized arguments: --dta (did you mean --data?)")


def test_a_mistyped_choice_names_the_near_one(capsys):
    with pytest.raises(SystemExit):
        cli(["export", "--model", "m", "--out", "o", "--format", "onx"])
    assert "did you mean 'onnx'?" in capsys.readouterr().err


def test_options_are_never_abbreviated(capsys):
    """`--lr` is not `--lr-scaling`: a prefix would change meaning the day an option is added."""
    with pytest.raises(SystemExit):
        cli(["finetune", "--model", "m", "--data", "d", "--lr", "0.1"])
    assert "unrecognized arguments: --lr (did you mean" in capsys.readouterr().err


def test_predict_and_embed_take_their_images_as_data_too(tiny_model, tmp_path, capsys):
    Image.new("RGB", (40, 30), (10, 200, 30)).save(tmp_path / "green.png")
    assert cli(["predict", "--model", str(tiny_model), "--data", str(tmp_path / "green.png"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["results"][0]["file"].endswith("green.png")
    out = tmp_path / "features.npy"
    assert cli(["embed", "--model", str(tiny_model), "--data", str(tmp_path / "green.png"), "--out", str(out)]) == 0
    assert out.is_file()


def test_predict_writes_csv_or_json_by_the_out_suffix(tiny_model, tmp_path, capsys):
    Image.new("RGB", (40, 30), (10, 200, 30)).save(tmp_path / "green.png")
    assert (
        cli(["predict", str(tmp_path / "green.png"), "--model", str(tiny_model), "--out", str(tmp_path / "p.json")])
        == 0
    )
    assert json.loads((tmp_path / "p.json").read_text())["results"][0]["predictions"]
    assert (
        cli(["predict", str(tmp_path / "green.png"), "--model", str(tiny_model), "--out", str(tmp_path / "p.csv")]) == 0
    )
    assert (tmp_path / "p.csv").read_text().startswith("file,rank,label,score")
    assert (
        cli(["predict", str(tmp_path / "green.png"), "--model", str(tiny_model), "--out", str(tmp_path / "p.txt")]) == 2
    )
    assert "name a .csv file" in capsys.readouterr().err


def test_a_named_image_that_does_not_exist_fails_before_any_model_loads(tmp_path, capsys, monkeypatch):
    import bigtransfer.runtime.classifier as classifier

    monkeypatch.setattr(classifier, "load_classifier", lambda *a, **k: pytest.fail("the model was loaded"))
    Image.new("RGB", (8, 8)).save(tmp_path / "real.png")
    assert cli(["predict", str(tmp_path / "real.png"), str(tmp_path / "typo.png"), "--model", "bit-tiny-glyphs"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no such file or directory: " in err and "typo.png" in err


def test_shard_takes_data_and_out_as_options_or_positionally(tmp_path, capsys):
    for name in ("a", "b"):
        (tmp_path / "images" / name).mkdir(parents=True)
        Image.new("RGB", (12, 12), (200 * (name == "a"), 0, 0)).save(tmp_path / "images" / name / "0.png")
    assert cli(["shard", "--data", str(tmp_path / "images"), "--out", str(tmp_path / "s1"), "--quiet"]) == 0
    assert cli(["shard", str(tmp_path / "images"), str(tmp_path / "s2"), "--quiet"]) == 0
    assert (tmp_path / "s1" / "dataset.json").is_file() and (tmp_path / "s2" / "dataset.json").is_file()
    assert "wrote 2 images of 2 classes as 1 shard " in capsys.readouterr().out


def test_export_calibrates_on_data_as_bench_does():
    parsers = command_parsers()
    for spelling in ("--data", "--calibration"):
        args = parsers["export"].parse_args(["--model", "m", "--out", "o", "--int8", spelling, "photos/"])
        assert args.data == "photos/"
    assert parsers["bench"].parse_args(["--model", "m", "--data", "photos/"]).data == "photos/"


@pytest.mark.parametrize("command", [["finetune", "--model", "bit-tiny-glyphs"], ["shard", "--out", "o"]])
def test_a_misspelt_local_data_path_fails_at_once_without_asking_the_hub(tmp_path, monkeypatch, capsys, command):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data" / "missing_dir_").mkdir(parents=True)
    monkeypatch.setattr(datasets, "from_hub_dataset", lambda *a, **k: pytest.fail("asked the Hub"))
    started = time.monotonic()
    assert cli([*command, "--data", "data/missing_dir"]) == 2
    err = capsys.readouterr().err
    assert time.monotonic() - started < 10 and err.count("\n") == 1
    assert "No dataset at data/missing_dir (did you mean data/missing_dir_?)" in err


def test_predict_on_a_triton_model_without_a_model_in_its_version_folder_says_what_it_needs(tmp_path, capsys):
    repository = tmp_path / "repository"
    (repository / "tiny" / "1").mkdir(parents=True)
    (repository / "tiny" / "config.pbtxt").write_text('name: "tiny"\n')
    Image.new("RGB", (8, 8)).save(tmp_path / "x.png")
    for model in (repository, repository / "tiny"):  # the repository, or its one Triton model
        assert cli(["predict", str(tmp_path / "x.png"), "--model", str(model)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"The Triton model {repository / 'tiny'} has no version to serve" in err
        assert "a version folder (1/, 2/ …) holding an export or a model folder" in err


def test_predict_keeps_an_existing_out_file_unless_told_to_replace_it(tiny_model, tmp_path, capsys):
    Image.new("RGB", (40, 30), (10, 200, 30)).save(tmp_path / "green.png")
    kept = tmp_path / "p.csv"
    kept.write_text("the user's own rows\n")
    command = ["predict", str(tmp_path / "green.png"), "--model", str(tiny_model), "--out", str(kept)]
    assert cli(command) == 2
    assert (
        capsys.readouterr()
        .err.strip()
        .endswith("already exists: choose another --out, or pass --overwrite to replace it.")
    )
    assert kept.read_text() == "the user's own rows\n"
    assert cli([*command, "--overwrite"]) == 0 and kept.read_text().startswith("file,rank,label,score")
