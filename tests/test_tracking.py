"""--report-to: TensorBoard, MLflow and Weights & Biases record a run, read back here with each tracker's own library
(TensorBoard's event reader, MLflow's client on a file store, W&B's protobuf records of an offline run)."""
# ruff: noqa: F811  (the training tests' fixtures, imported below, are the parameters of these tests)

import json
import logging
import os
import shutil
import struct
import sys
from pathlib import Path

import pytest
import torch

from bigtransfer.cli import main as cli
from bigtransfer.train import FewShotCheck, Pretraining, RunOptions, Speed, pretrain
from bigtransfer.train.fine_tuning import fine_tuning_job
from bigtransfer.train.run import run_training
from bigtransfer.train.tracking import open_trackers, resolve_report_to
from bigtransfer.train.tracking.base import RUN_IDS, flat_config
from test_train import final_weights, folder, grouped, run, upstream  # noqa: F401  (the tiny upstream and images)

TRAINING = ("train/loss", "train/lr", "train/images_per_s", "train/data_wait_s")
TINY_RUN = dict(steps=6, eval_every=2)  # evaluations at 2 and 4, and the final one at 6


@pytest.fixture
def mlflow_store(tmp_path, monkeypatch):
    """A file store in a temporary folder, opted into as MLflow 3 requires."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "mlruns").as_uri())
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    return tmp_path / "mlruns"


@pytest.fixture
def wandb_offline(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_PROJECT", raising=False)


def rows_of(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def events(out: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(out / "tensorboard"), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    return accumulator.Reload()


def scalar_steps(accumulator, tag: str) -> list[int]:
    return [event.step for event in accumulator.Scalars(tag)]


def wandb_records(run_file: Path) -> list:
    """The records of a .wandb file (W&B's LevelDB-style log: 32 KiB blocks of records with a 7-byte header, which
    wandb's Go core writes and no Python reader of the package reads), parsed with wandb's own protobuf types."""
    from wandb.proto import wandb_internal_pb2

    data = run_file.read_bytes()
    assert data[:4] == b":W&B"
    records, pending, offset = [], b"", 7  # the file header: magic, 2-byte id, 1-byte version
    while offset + 7 <= len(data):
        if 32768 - offset % 32768 < 7:  # a block's tail too short for a header is padding
            offset += 32768 - offset % 32768
            continue
        length, kind = struct.unpack("<HB", data[offset + 4 : offset + 7])
        pending += data[offset + 7 : offset + 7 + length]
        offset += 7 + length
        if kind in (1, 4):  # a whole record, or the last piece of one
            records.append(wandb_internal_pb2.Record.FromString(pending))
            pending = b""
    return records


def wandb_history(out: Path) -> tuple[dict[str, list[int]], list]:
    """{key: the steps it was logged at} over every offline W&B run folder of `out`, and all the records — once
    wandb's service has shut down: a finished run's records reach its .wandb file shortly after finish()."""
    import wandb

    wandb.teardown()
    steps: dict[str, list[int]] = {}
    records = [r for path in sorted(out.glob("wandb/offline-run-*/run-*.wandb")) for r in wandb_records(path)]
    for record in records:
        if record.WhichOneof("record_type") == "history":
            items = {item.key or "/".join(item.nested_key): item.value_json for item in record.history.item}
            for key in items:
                steps.setdefault(key, []).append(int(items["_step"]))
    return steps, records


# -- the option ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "trackers"),
    [("none", ()), ("", ()), ((), ()), ("all", ("tensorboard", "mlflow", "wandb")), ("wandb, TensorBoard", ("tensorboard", "wandb")),
     (["mlflow", "mlflow"], ("mlflow",))],
)  # fmt: skip
def test_report_to_takes_a_comma_list_all_or_none(given, trackers):
    assert resolve_report_to(given) == trackers


def test_an_unknown_tracker_is_one_line_naming_the_valid_ones(upstream, folder, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit:
        cli(["finetune", "--model", str(upstream), "--data", str(folder), "--out", str(tmp_path / "run"),
             "--report-to", "tensorboard,tensorbord"])  # fmt: skip
    error = capsys.readouterr().err
    assert exit.value.code == 2 and error.count("\n") == 1
    assert "unknown tracker 'tensorbord' (did you mean tensorboard?)" in error
    assert "tensorboard, mlflow, wandb, or all / none" in error
    with pytest.raises(ValueError, match="unknown tracker 'comet'"):
        RunOptions(report_to=("comet",))


@pytest.mark.parametrize("tracker", ["tensorboard", "mlflow", "wandb"])  # each the name of its module and extra
def test_a_missing_tracker_library_is_named_with_its_install_line_before_the_run(
    upstream, folder, tmp_path, monkeypatch, capsys, tracker
):
    monkeypatch.setitem(sys.modules, tracker, None)  # as if not installed
    code = cli(["pretrain" if tracker == "wandb" else "finetune", *([] if tracker == "wandb" else ["--model", str(upstream)]),
                "--data", str(folder), "--out", str(tmp_path / "run"), "--report-to", tracker])  # fmt: skip
    error = capsys.readouterr().err
    assert code == 2 and error.count("\n") == 1
    assert f"needs {tracker}: pip install -e '.[{tracker}]'" in error
    assert not (tmp_path / "run").exists()  # refused before the run started
    with pytest.raises(ImportError, match=rf"pip install -e '\.\[{tracker}\]'"):
        RunOptions(report_to=tracker)


def test_the_plan_names_the_trackers_and_a_dry_run_creates_none(upstream, folder, tmp_path, capsys):
    code = cli(["finetune", "--model", str(upstream), "--data", str(folder), "--out", str(tmp_path / "run"),
                "--report-to", "tensorboard", "--dry-run"])  # fmt: skip
    assert code == 0 and f"→ {tmp_path / 'run'}, reported to tensorboard" in capsys.readouterr().out
    assert not (tmp_path / "run").exists()


def test_mlflow_file_store_without_the_opt_in_is_one_line_with_the_fix(tmp_path, monkeypatch):
    """MLflow 3.18 refuses its file store unless MLFLOW_ALLOW_FILE_STORE=true: said before the run, with the fix,
    and not set behind the user's back."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", str(tmp_path / "mlruns"))
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    with pytest.raises(ValueError, match=r"only with MLFLOW_ALLOW_FILE_STORE=true: set that, or point") as error:
        RunOptions(report_to="mlflow")
    assert "\n" not in str(error.value) and "MLFLOW_ALLOW_FILE_STORE" not in os.environ


def test_other_ranks_create_no_tracker_at_all(tmp_path, monkeypatch, mlflow_store, wandb_offline):
    monkeypatch.setenv("RANK", "1")
    with open_trackers(("tensorboard", "mlflow", "wandb"), tmp_path / "run", {"seed": 0}, resume=False) as trackers:
        trackers.start(0)
        trackers.log_training({"step": 1, "loss": 1.0})
    assert trackers.active == [] and not (tmp_path / "run").exists() and not mlflow_store.exists()


def test_the_config_is_flattened_for_flat_parameters():
    config = {"rule": {"base_lr": 0.003, "decay_steps": [2, 4]}, "shots": None, "flip": True}
    assert flat_config(config) == {"rule.base_lr": 0.003, "rule.decay_steps": "[2, 4]", "shots": "null", "flip": True}


# -- what each tracker records ----------------------------------------------------------------------------------


def test_tensorboard_records_every_step_each_evaluation_the_images_and_the_config(upstream, folder, tmp_path):
    metrics = run(upstream, folder, tmp_path / "run", eval_data=str(folder), report_to="tensorboard", **TINY_RUN)
    out = tmp_path / "run"
    accumulator = events(out)
    for tag in TRAINING:
        assert scalar_steps(accumulator, tag) == [1, 2, 3, 4, 5, 6], tag
    rows = rows_of(out)
    losses = [event.value for event in accumulator.Scalars("train/loss")]
    assert losses == pytest.approx([row["loss"] for row in rows if "loss" in row], rel=1e-6)
    assert scalar_steps(accumulator, "eval/top1") == [2, 4, 6]
    top1 = [event.value for event in accumulator.Scalars("eval/top1")]
    assert top1 == pytest.approx([row["eval_top1"] for row in rows if "eval_top1" in row], rel=1e-6)
    assert top1[-1] == pytest.approx(metrics["eval"]["top1"])
    assert [i.step for i in accumulator.Images("confusion")] == [i.step for i in accumulator.Images("curves")] == [6]
    (text,) = accumulator.Tensors("config/text_summary")
    assert "    steps: 6\n" in text.tensor_proto.string_val[0].decode()  # the resolved run file, as config.yaml
    assert "bigtransfer_version:" in text.tensor_proto.string_val[0].decode()
    from tensorboard.plugins.hparams import plugin_data_pb2

    content = accumulator.PluginTagToContent("hparams")
    started = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    assert started.session_start_info.hparams["base_lr"].number_value == 0.003
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    assert [metric.name.tag for metric in experiment.metric_infos] == ["eval/top1"]


def test_reporting_changes_no_weight(upstream, folder, tmp_path):
    run(upstream, folder, tmp_path / "plain", steps=3)
    run(upstream, folder, tmp_path / "reported", steps=3, report_to="tensorboard")
    plain, reported = final_weights(tmp_path / "plain"), final_weights(tmp_path / "reported")
    assert all(torch.equal(plain[key], reported[key]) for key in plain)
    assert not (tmp_path / "plain" / "tensorboard").exists() and not (tmp_path / "plain" / RUN_IDS).exists()


def test_mlflow_records_the_config_as_params_the_metrics_by_step_and_the_model(
    upstream,
    folder,
    tmp_path,
    mlflow_store,
):
    import mlflow
    from mlflow import MlflowClient

    recipe, options = grouped(tmp_path / "run", batch_size=8, resize=24, crop=20, progress=False, seed=3,
                              report_to="mlflow", **TINY_RUN)  # fmt: skip
    job = fine_tuning_job(str(upstream), str(folder), str(folder), recipe, seed=3)
    job.config = {"base_lr": 0.003, "note": "x" * 7000, "bigtransfer_version": "0.1.0"}  # the resolved run file
    run_training(job, options)
    (found,) = mlflow.search_runs(experiment_names=["bigtransfer"], output_format="list")
    assert found.info.run_name == "run" and found.info.status == "FINISHED"
    assert found.info.run_id == json.loads((tmp_path / "run" / RUN_IDS).read_text())["mlflow"]
    params = found.data.params
    assert params["base_lr"] == "0.003" and params["bigtransfer_version"] == "0.1.0" and len(params["note"]) == 6000
    client = MlflowClient()
    for key in TRAINING:
        assert [m.step for m in client.get_metric_history(found.info.run_id, key)] == [1, 2, 3, 4, 5, 6], key
    history = client.get_metric_history(found.info.run_id, "eval/top1")
    assert [m.step for m in history] == [2, 4, 6]
    final = json.loads((tmp_path / "run" / "metrics.json").read_text())["eval"]["top1"]
    assert history[-1].value == pytest.approx(final)
    artifacts = {a.path for a in client.list_artifacts(found.info.run_id)}
    assert artifacts == {"model", "metrics.json", "plots"}
    assert "model/model.safetensors" in {a.path for a in client.list_artifacts(found.info.run_id, "model")}
    assert {a.path for a in client.list_artifacts(found.info.run_id, "plots")} == {
        "plots/confusion.png",
        "plots/curves.png",
    }


def test_mlflow_honours_the_experiment_name(upstream, folder, tmp_path, mlflow_store, monkeypatch):
    import mlflow

    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "digits")
    run(upstream, folder, tmp_path / "run", steps=2, report_to="mlflow")
    (found,) = mlflow.search_runs(experiment_names=["digits"], output_format="list")
    assert found.data.metrics["train/loss"] > 0


def test_wandb_offline_run_holds_the_history_config_and_images(upstream, folder, tmp_path, wandb_offline):
    run(upstream, folder, tmp_path / "run", eval_data=str(folder), report_to="wandb", **TINY_RUN)
    out = tmp_path / "run"
    run_id = json.loads((out / RUN_IDS).read_text())["wandb"]
    assert [path.name for path in out.glob("wandb/offline-run-*/*.wandb")] == [f"run-{run_id}.wandb"]
    steps, records = wandb_history(out)
    for key in TRAINING:
        assert steps[key] == [1, 2, 3, 4, 5, 6], key
    assert steps["eval/top1"] == [2, 4, 6]
    assert steps["confusion/_type"] == steps["curves/_type"] == [6]
    (started,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert (started.run_id, started.project, started.display_name) == (run_id, "bigtransfer", "run")
    config = {item.key: json.loads(item.value_json) for item in started.config.update}
    assert config["steps"] == 6 and config["seed"] == 3 and config["command"] == "finetune"


def test_pretraining_reports_its_steps_and_few_shot_monitor(folder, tmp_path):
    from bigtransfer.models.config import BitConfig

    config = BitConfig(depths=[1, 1], hidden_sizes=[16, 32], embedding_size=8, num_groups=4)
    check = FewShotCheck(str(folder), str(folder), every=2, shots=(1,), seeds=1)
    pretrain(str(folder), config, recipe=Pretraining(epochs=2, warmup_epochs=0.5, batch_size=5, crop=16),
             run=RunOptions(out=tmp_path / "up", progress=False, speed=Speed(workers=0), report_to="tensorboard"),
             fewshot_check=check)  # fmt: skip
    accumulator = events(tmp_path / "up")
    assert scalar_steps(accumulator, "train/loss") == [1, 2, 3, 4, 5, 6]
    assert scalar_steps(accumulator, "eval/fewshot_1shot") == [2, 4, 6]  # and once at the end, at 6
    assert [i.step for i in accumulator.Images("curves")] == [6]


# -- resume and failure ---------------------------------------------------------------------------------------------


def fail_at_step(step: int, monkeypatch, error: Exception) -> None:
    """The run stops with `error` as TrainingRun.train_step begins `step` (a crash, not a Ctrl-C: nothing saved)."""
    import bigtransfer.train.loop as loop

    original = loop.TrainingRun.train_step

    def failing(self, *args, **kwargs):
        if self.step + 1 == step:
            raise error
        return original(self, *args, **kwargs)

    monkeypatch.setattr(loop.TrainingRun, "train_step", failing)


def test_resume_continues_the_same_runs_and_tensorboard_steps_never_double(
    upstream,
    folder,
    tmp_path,
    monkeypatch,
    mlflow_store,
    wandb_offline,
):
    import mlflow

    options = dict(steps=8, save_every=4, report_to="all")
    with monkeypatch.context() as crash, pytest.raises(RuntimeError, match="went away"):
        fail_at_step(7, crash, RuntimeError("the machine went away"))
        run(upstream, folder, tmp_path / "run", **options)  # checkpoint at 4; steps 1-5 logged (6 was pending)
    out = tmp_path / "run"
    assert scalar_steps(events(out), "train/loss") == [1, 2, 3, 4, 5]
    (first,) = mlflow.search_runs(experiment_names=["bigtransfer"], output_format="list")
    assert first.info.status == "FAILED"
    ids = json.loads((out / RUN_IDS).read_text())
    run(upstream, folder, out, resume=True, **options)
    assert scalar_steps(events(out), "train/loss") == [1, 2, 3, 4, 5, 6, 7, 8]  # 5 purged, logged again once
    assert json.loads((out / RUN_IDS).read_text()) == ids
    (resumed,) = mlflow.search_runs(experiment_names=["bigtransfer"], output_format="list")
    assert resumed.info.run_id == ids["mlflow"] and resumed.info.status == "FINISHED"
    steps = [m.step for m in mlflow.MlflowClient().get_metric_history(ids["mlflow"], "train/loss")]
    assert sorted(set(steps)) == list(range(1, 9))
    assert {path.name for path in out.glob("wandb/offline-run-*/*.wandb")} == {f"run-{ids['wandb']}.wandb"}
    assert len(list(out.glob("wandb/offline-run-*"))) == 2  # one W&B run, recorded in two sessions
    assert sorted(set(wandb_history(out)[0]["train/loss"])) == list(range(1, 9))


def test_a_tracker_that_cannot_start_stops_the_run_before_step_one_in_one_line(
    upstream, folder, tmp_path, monkeypatch, capsys
):
    """A tracking server that does not answer (a closed port, MLflow's retries off so the test is quick)."""
    from helpers import free_port

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    code = cli(["finetune", "--model", str(upstream), "--data", str(folder), "--out", str(tmp_path / "run"),
                "--batch-size", "8", "--steps", "2", "--resize", "24", "--crop", "20", "--quiet",
                "--report-to", "tensorboard,mlflow"])  # fmt: skip
    error = capsys.readouterr().err
    assert code == 2 and error.count("\n") == 1
    assert "Could not start reporting to mlflow (" in error and "leave mlflow out of --report-to" in error
    assert not (tmp_path / "run" / "metrics.jsonl").exists()  # no step ran


def test_a_refused_resume_touches_no_tracker_run(upstream, folder, tmp_path, mlflow_store):
    import mlflow

    run(upstream, folder, tmp_path / "run", steps=2, report_to="mlflow")
    with pytest.raises(ValueError, match="different run"):
        run(upstream, folder, tmp_path / "run", steps=3, resume=True, report_to="mlflow")
    (only,) = mlflow.search_runs(experiment_names=["bigtransfer"], output_format="list")
    assert only.info.status == "FINISHED"


def test_a_tracker_that_fails_mid_run_warns_once_and_the_run_goes_on(
    upstream,
    folder,
    tmp_path,
    monkeypatch,
    mlflow_store,
    caplog,
):
    """The MLflow store vanishes at step 3 (a real failure of MLflow's own file store): one warning, MLflow is switched
    off, TensorBoard goes on recording, and the run saves everything as without trackers."""
    import bigtransfer.train.loop as loop

    original = loop.TrainingRun.train_step

    def losing_the_store(self, *args, **kwargs):
        if self.step == 3:
            shutil.rmtree(mlflow_store)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(loop.TrainingRun, "train_step", losing_the_store)
    with caplog.at_level(logging.WARNING, logger="bigtransfer"):
        metrics = run(upstream, folder, tmp_path / "run", eval_data=str(folder), report_to="tensorboard,mlflow",
                      **TINY_RUN)  # fmt: skip
    warnings = [r.getMessage() for r in caplog.records if "Reporting to" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].startswith("Reporting to MLflow stopped (") and "\n" not in warnings[0]
    out = tmp_path / "run"
    assert [row["step"] for row in rows_of(out) if "loss" in row] == [1, 2, 3, 4, 5, 6]
    assert (out / "model" / "model.safetensors").is_file() and (out / "checkpoint.pt").is_file()
    assert metrics["eval"]["top1"] == json.loads((out / "metrics.json").read_text())["eval"]["top1"]
    assert scalar_steps(events(out), "train/loss") == [1, 2, 3, 4, 5, 6]
