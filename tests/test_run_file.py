"""Run files: every run writes the resolved OUT/config.yaml; `--config FILE` (and `replaying.load_run_file` from
Python) runs it again to the same weights, flags beside it winning; a bad file is one line naming the key."""

import argparse
import json

import pytest
import torch
import yaml
from safetensors.torch import load_file

from bigtransfer.cli import build_parser
from bigtransfer.cli import main as cli
from bigtransfer.data.datasets import from_folder
from bigtransfer.data.reading import DataReading
from bigtransfer.train import FineTuning, Pretraining, RunOptions, finetune, load_run_file, pretrain, replay
from bigtransfer.train.architecture import architecture_config
from bigtransfer.train.run_file import NOT_IN_FILES, RUN, options_of
from test_train import folder, upstream  # noqa: F401  (fixtures: a tiny pretrained model, 3 classes × 5 images)

TINY_RUN = ["--batch-size", "8", "--steps", "4", "--resize", "24", "--crop", "20", "--workers", "0", "--quiet"]
TINY_PRETRAIN = ["--arch", "custom", "--depths", "1,1", "--hidden-sizes", "16,32", "--embedding-size", "8",
                 "--num-groups", "4", "--epochs", "1", "--batch-size", "5", "--crop", "16", "--workers", "0",
                 "--quiet"]  # fmt: skip
MARKS = {"command", "bigtransfer_version"}


def dests(command: str) -> set[str]:
    (commands,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return {action.dest for action in commands.choices[command]._actions} - set(NOT_IN_FILES)


def finetune_command(model, data, out, *options):
    return ["finetune", "--model", str(model), "--data", str(data), "--out", str(out), *TINY_RUN, *options]


def read(path):
    return yaml.safe_load(path.read_text())


def same_weights(first, second) -> bool:
    a, b = load_file(first / "model" / "model.safetensors"), load_file(second / "model" / "model.safetensors")
    return a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)


def dry_run_config(arguments, capsys) -> dict:
    assert cli([*arguments, "--dry-run", "--json"]) == 0
    return json.loads(capsys.readouterr().out)["config"]


@pytest.mark.parametrize("command", ["finetune", "pretrain"])
def test_every_option_of_the_command_has_a_row_of_the_table(command):
    """An option added to the parser without a row fails here: the file could not hold or read it."""
    assert [option.name for option in options_of(command)] != []
    assert {option.name for option in options_of(command)} == dests(command)


def test_a_run_replayed_from_its_config_yaml_has_bit_identical_weights(upstream, folder, tmp_path, capsys):  # noqa: F811
    first, again = tmp_path / "first", tmp_path / "again"
    assert cli(finetune_command(upstream, folder, first, "--eval-data", str(folder), "--mixup", "0.2")) == 0
    written = read(first / "config.yaml")
    assert set(written) == dests("finetune") | MARKS  # every option, defaults included, and nothing else
    assert written["command"] == "finetune" and written["shots"] is None and written["base_lr"] == 0.003
    assert (written["mixup"], written["no_flip"], written["steps"], written["workers"]) == (0.2, False, 4, 0)
    assert list(written)[2:4] == ["model", "data"] and list(written)[-1] == RUN[-1].name
    assert cli(["finetune", "--config", str(first / "config.yaml"), "--out", str(again)]) == 0
    assert same_weights(first, again)
    assert read(again / "config.yaml") == {**written, "out": str(again)}
    capsys.readouterr()


def test_a_flag_beside_the_file_wins_and_the_file_may_give_model_and_data(upstream, folder, tmp_path, capsys):  # noqa: F811
    (tmp_path / "run.yaml").write_text(f"model: {upstream}\ndata: {folder}\nsteps: 6\nbase-lr: 0.01\nno_flip: true\n")
    config = dry_run_config(["finetune", "--config", str(tmp_path / "run.yaml"), "--steps", "2"], capsys)
    assert (config["steps"], config["base_lr"], config["no_flip"], config["model"]) == (2, 0.01, True, str(upstream))


def test_dry_run_prints_the_run_file_after_the_plan_and_writes_nothing(upstream, folder, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "never"
    assert cli(finetune_command(upstream, folder, out, "--dry-run")) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("plan: fine-tune") and printed.index("plan:") < printed.index("command: finetune")
    assert yaml.safe_load(printed[printed.index("# The resolved run file") :])["steps"] == 4
    assert not out.exists()
    assert dry_run_config(finetune_command(upstream, folder, out, "--runs", "2"), capsys)["runs"] == 2
    assert not out.exists()


def test_several_seeds_write_the_run_file_of_them_all_and_one_each(upstream, folder, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "runs"
    assert cli(finetune_command(upstream, folder, out, "--runs", "2", "--seed", "4", "--steps", "1")) == 0
    assert (read(out / "config.yaml")["runs"], read(out / "config.yaml")["seed"]) == (2, 4)
    assert [(read(out / f"seed-{seed}" / "config.yaml")["runs"], read(out / f"seed-{seed}" / "config.yaml")["seed"])
            for seed in (4, 5)] == [(1, 4), (1, 5)]  # fmt: skip
    capsys.readouterr()


def test_a_python_run_writes_the_cli_runs_file_with_the_same_defaults(upstream, folder, tmp_path, capsys):  # noqa: F811
    """The same writer for both, and the recipe's defaults are the options' defaults."""
    out = str(tmp_path / "out")
    cli_config = dry_run_config(["finetune", "--model", str(upstream), "--data", str(folder), "--out", out], capsys)
    python = finetune(str(upstream), str(folder), run=RunOptions(out=out, dry_run=True))
    assert python["config"] == cli_config
    cli_config = dry_run_config(["pretrain", "--data", str(folder), "--out", out], capsys)
    python = pretrain(str(folder), architecture_config(), recipe=Pretraining(), run=RunOptions(out=out, dry_run=True))
    assert python["config"] == cli_config


def test_data_given_as_an_object_is_said_not_replayable_while_a_reading_is_recorded(upstream, folder, tmp_path):  # noqa: F811
    options = RunOptions(out=tmp_path / "x", dry_run=True)
    config = finetune(str(upstream), from_folder(folder), recipe=FineTuning(steps=1), run=options)["config"]
    assert config["data"] == str(folder) and "data was given as a ImageDataset object" in config["not_replayable"][0]
    data, eval_data = DataReading(str(folder), classes="a,c", val_split=0.4).load(seed=5)
    config = finetune(str(upstream), data, eval_data, run=RunOptions(out=tmp_path / "x", seed=5, dry_run=True))[
        "config"
    ]
    assert "not_replayable" not in config and (config["classes"], config["val_split"]) == ("a,c", 0.4)
    config = finetune(str(upstream), data, eval_data, run=RunOptions(out=tmp_path / "x", seed=6, dry_run=True))[
        "config"
    ]
    assert "held the evaluation images out with seed 5, not this run's seed 6" in config["not_replayable"][0]


def test_pretrain_replayed_from_python_has_bit_identical_weights(folder, tmp_path, capsys):  # noqa: F811
    first = tmp_path / "first"
    options = ["--fewshot-every", "2", "--fewshot-data", str(folder), "--fewshot-eval-data", str(folder)]
    assert (
        cli(
            ["pretrain", "--data", str(folder), "--out", str(first), *TINY_PRETRAIN, *options, "--fewshot-shots", "1,2"]
        )
        == 0
    )
    written = read(first / "config.yaml")
    assert set(written) == dests("pretrain") | MARKS and written["fewshot_shots"] == [1, 2]
    spec = load_run_file(first / "config.yaml")
    assert spec.architecture.depths == [1, 1] and spec.fewshot_check.shots == (1, 2) and spec.recipe.crop == 16
    replay(first / "config.yaml", out=tmp_path / "again")
    assert same_weights(first, tmp_path / "again")
    assert read(tmp_path / "again" / "config.yaml") == {**written, "out": str(tmp_path / "again")}
    capsys.readouterr()


def test_a_toml_file_and_a_list_for_comma_text(folder, tmp_path, capsys):  # noqa: F811
    check = f'fewshot_every = 2\nfewshot_data = "{folder}"\nfewshot-eval-data = "{folder}"\n'
    (tmp_path / "run.toml").write_text(
        f'data = "{folder}"\n{check}fewshot_shots = [2, 4]\nfewshot_classes = ["a", "b"]\n'
    )
    config = dry_run_config(["pretrain", "--config", str(tmp_path / "run.toml"), "--out", str(tmp_path / "o")], capsys)
    assert (config["fewshot_shots"], config["fewshot_classes"], config["fewshot_every"]) == ([2, 4], "a,b", 2)
    (tmp_path / "run.yaml").write_text(
        "data: d\nfewshot_every: 2\nfewshot_data: x\nfewshot_eval_data: y\nfewshot_shots: 3,6\n"
    )
    assert load_run_file(tmp_path / "run.yaml", "pretrain").fewshot_check.shots == (3, 6)
    (tmp_path / "run.yaml").write_text("fewshot_shots: [1]\n")
    with pytest.raises(ValueError, match="run.yaml: no data: set `data:`"):
        load_run_file(tmp_path / "run.yaml", "pretrain")


@pytest.mark.parametrize(
    "text, message",
    [
        ("base_lrr: 0.1", "--config {file}: unknown option 'base_lrr' (did you mean base_lr?)"),
        ("base_lr: fast", "--config {file}: base_lr: 'fast' is not a number"),
        ("steps: 0", "--config {file}: steps: 0 is out of range: give a number > 0"),
        ("preset: cod", "--config {file}: preset: invalid choice: 'cod' (choose from 'code', 'paper'); did you mean"),
        ("no_flip: 1", "--config {file}: no_flip: 1 is not true or false"),
        ("resume: true", "--config {file}: resume: resuming is a choice for one invocation: pass --resume beside"),
        (
            "command: pretrain",
            "--config {file} is a run file of `bigtransfer pretrain`: run it with `bigtransfer pretrain",
        ),
        ("steps: [", "--config {file} is not valid YAML (line 2"),
        ("- 1", "--config {file} is not a run file: expected `option: value` lines, found a list"),
    ],
)
def test_a_bad_run_file_is_one_line_naming_the_file_and_the_key(text, message, tmp_path, capsys):
    file = tmp_path / "run.yaml"
    file.write_text(text + "\n")
    with pytest.raises(SystemExit) as stop:
        cli(["finetune", "--config", str(file), "--model", "m", "--data", "d"])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.count("\n") == 1, err
    assert err.startswith("bigtransfer finetune: " + message.format(file=file)), err


def test_python_reads_a_run_file_with_the_same_checks_and_its_values_by_field(tmp_path):
    file = tmp_path / "run.yaml"
    file.write_text("command: finetune\nmodel: m\ndata: d\nbase_lrr: 1\n")
    with pytest.raises(ValueError, match=r"unknown option 'base_lrr' \(did you mean base_lr\?\)"):
        load_run_file(file)
    file.write_text("command: finetune\nmodel: m\ndata: d\nworkers: many\n")
    with pytest.raises(ValueError, match=r"run.yaml: workers: 'many' is not a int"):
        load_run_file(file)
    file.write_text("command: finetune\nmodel: m\ndata: d\nsteps: 0\n")
    with pytest.raises(ValueError, match=r"run.yaml: FineTuning: steps=0 out of range"):
        load_run_file(file)
    file.write_text("command: finetune\nmodel: m\ndata: d\nmixup: 0.1\nno_flip: true\nbatch_split: 2\nruns: 3\n")
    spec = load_run_file(file)
    assert (spec.recipe.mixup_alpha, spec.recipe.flip, spec.run.speed.batch_split, spec.runs) == (0.1, False, 2, 3)
    assert spec.recipe.base_lr == FineTuning().base_lr and spec.data == DataReading("d")


def test_another_version_only_warns(upstream, folder, tmp_path, capsys, caplog):  # noqa: F811
    (tmp_path / "run.yaml").write_text(f"bigtransfer_version: 0.0.1\nmodel: {upstream}\ndata: {folder}\n")
    dry_run_config(["finetune", "--config", str(tmp_path / "run.yaml"), "--out", str(tmp_path / "o")], capsys)
    assert "written by bigtransfer 0.0.1, this is" in caplog.text


def test_resume_names_a_changed_recipe_option_and_takes_new_speed_options(upstream, folder, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "run"
    assert cli(finetune_command(upstream, folder, out)) == 0
    before = (out / "config.yaml").read_text()
    assert cli(finetune_command(upstream, folder, out, "--resume", "--base-lr", "0.01", "--no-flip")) == 2
    err = capsys.readouterr().err
    assert "comes from a different run (config.yaml → now: --base-lr 0.003 → 0.01, --no-flip false → true)" in err
    assert (out / "config.yaml").read_text() == before  # a refused resume leaves the run's file as it was
    speed = ("--resume", "--batch-split", "2", "--save-every", "2", "--channels-last")
    assert cli(["finetune", "--config", str(out / "config.yaml"), *speed]) == 0
    resumed = read(out / "config.yaml")
    assert (resumed["batch_split"], resumed["save_every"], resumed["channels_last"]) == (2, 2, True)
    assert {**resumed, "batch_split": 1, "save_every": None, "channels_last": None} == yaml.safe_load(before)
