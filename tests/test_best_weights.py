"""--keep-best and --early-stopping: model/ holds the best held-out evaluation's weights (evaluate gives its value
exactly), model-last/ the final ones when they differ, early stopping ends the run where the curve stopped
improving, and a resumed run decides as the uninterrupted one."""

# ruff: noqa: F811  (the fixtures `upstream` and `folder` come from test_train, and tests take them by name)

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from bigtransfer.cli import main as cli
from bigtransfer.train import RunOptions
from bigtransfer.train.best import BestWeights
from bigtransfer.train.fine_tuning import finetune
from helpers import free_port
from test_multi_label import SCENES, write_images
from test_train import ctrl_c_during, final_weights, folder, grouped, run, upstream  # noqa: F401  (the tiny runs)

# With eval_every=1 on the training images, this tiny run's held-out top-1 climbs to its best at step 2, then
# falls: 0.333, 0.733, 0.667, 0.667, 0.667, 0.600, 0.600, 0.600 (base_lr 0.1, 8 steps, seed 3).
FALLING = dict(eval_every=1, steps=8, base_lr=0.1, workers=0)
TINY_UPSTREAM = ["--arch", "custom", "--depths", "1,1", "--hidden-sizes", "16,32", "--embedding-size", "8",
                 "--num-groups", "4"]  # fmt: skip


def logged(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def curve(out, key="eval_top1"):
    return {row["step"]: row[key] for row in logged(out) if key in row}


def saved_metrics(out):
    return json.loads((out / "metrics.json").read_text())


def same_weights(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def exit_code(arguments):
    """The command's exit code, whether it returns it or argparse exits with it."""
    try:
        return cli(arguments)
    except SystemExit as stop:
        return stop.code


def evaluated(capsys, model, data, *flags):
    assert cli(["evaluate", "--model", str(model), "--data", str(data), "--workers", "0", "--json", *flags]) == 0
    return json.loads(capsys.readouterr().out)


def test_keep_best_saves_the_best_evaluation_as_model_and_the_final_weights_as_model_last(upstream, folder, tmp_path,
                                                                                         capsys):  # fmt: skip
    metrics = run(upstream, folder, tmp_path / "best", eval_data=str(folder), keep_best=True, **FALLING)
    out, logged_curve = tmp_path / "best", curve(tmp_path / "best")
    assert metrics["best"] == {"step": 2, "metric": "top1", "value": logged_curve[2]} == saved_metrics(out)["best"]
    assert logged_curve[2] == max(logged_curve.values()) > logged_curve[8] == metrics["last_eval"]["top1"]
    assert evaluated(capsys, out / "model", folder)["top1"] == metrics["best"]["value"] == metrics["eval"]["top1"]
    assert evaluated(capsys, out / "model-last", folder)["top1"] == metrics["last_eval"]["top1"]
    assert same_weights(final_weights(out), load_file(out / "best-step2.safetensors"))
    assert {"preprocessor_config.json", "README.md", "model.safetensors"} <= {
        p.name for p in (out / "model-last").iterdir()
    }
    assert metrics["model_last_dir"] == str(out / "model-last")
    card = "; these are the weights after step 2, of the best held-out top-1 accuracy."
    assert card in (out / "model" / "README.md").read_text()
    assert "best held-out" not in (out / "model-last" / "README.md").read_text()
    # training itself is unchanged: model-last/ is what the same run without the option leaves as model/
    plain = run(upstream, folder, tmp_path / "plain", eval_data=str(folder), **FALLING)
    assert same_weights(final_weights(tmp_path / "plain"), load_file(out / "model-last" / "model.safetensors"))
    assert curve(tmp_path / "plain") == logged_curve and plain["eval"] == metrics["last_eval"]
    assert not {"best", "last_eval", "model_last_dir"} & set(plain)
    assert not [p.name for p in (tmp_path / "plain").iterdir() if p.name.startswith(("model-last", "best-step"))]


def test_a_tie_keeps_the_earlier_evaluation(upstream, folder, tmp_path):
    metrics = run(upstream, folder, tmp_path / "run", eval_data=str(folder), keep_best=True,
                  **{**FALLING, "base_lr": 0.003})  # fmt: skip
    logged_curve = curve(tmp_path / "run")
    assert set(list(logged_curve.values())[1:]) == {logged_curve[2]}  # 0.733 from step 2 to the end
    assert metrics["best"]["step"] == 2 and (tmp_path / "run" / "model-last").is_dir()


def test_when_the_final_weights_are_the_best_there_is_no_model_last(upstream, folder, tmp_path, capsys):
    options = ["finetune", "--model", str(upstream), "--data", str(folder), "--eval-data", str(folder),
               "--batch-size", "8", "--steps", "2", "--resize", "24", "--crop", "20", "--seed", "3",
               "--eval-every", "1", "--workers", "0", "--quiet"]  # fmt: skip
    assert cli([*options, "--out", str(tmp_path / "best"), "--keep-best"]) == 0
    printed = capsys.readouterr().out
    metrics = saved_metrics(tmp_path / "best")
    assert metrics["best"] == {"step": 2, "metric": "top1", "value": metrics["eval"]["top1"]}
    assert metrics["eval"]["top1"] > curve(tmp_path / "best")[1]
    kept = f"top-1 {metrics['eval']['top1']:.4f} at step 2"
    assert (
        "  evaluate every 1 steps; keep the best evaluation's weights as model/ (the final ones as model-last/)\n"
        in printed
    )
    assert f"the final weights are the best ({kept}): model/ holds them, no model-last/" in printed
    assert not (tmp_path / "best" / "model-last").exists() and "last_eval" not in metrics
    assert cli([*options, "--out", str(tmp_path / "plain")]) == 0
    assert same_weights(final_weights(tmp_path / "best"), final_weights(tmp_path / "plain"))


def test_early_stopping_ends_the_run_after_p_evaluations_without_improvement(upstream, folder, tmp_path, capsys):
    out = tmp_path / "run"
    command = ["finetune", "--model", str(upstream), "--data", str(folder), "--eval-data", str(folder),
               "--batch-size", "8", "--steps", "8", "--resize", "24", "--crop", "20", "--seed", "3", "--base-lr",
               "0.1", "--eval-every", "1", "--workers", "0", "--early-stopping", "2", "--out", str(out)]  # fmt: skip
    assert cli(command) == 0
    printed, console = capsys.readouterr()
    assert "evaluate every 1 steps; early stopping after 2 evaluations without improvement" in printed
    assert "step 4: early stopping: 2 evaluations without a top1 above 0.7333 (step 2); the run stops here" in console
    assert "stopped early at step 4: 2 evaluations without a top-1 above 0.7333 (step 2)" in printed
    metrics = saved_metrics(out)
    assert metrics["steps"] == 4 and torch.load(out / "checkpoint.pt", weights_only=True)["step"] == 4
    assert metrics["stopped_early"] == {"step": 4, "best_step": 2, "metric": "top1", "best_value": curve(out)[2],
                                        "patience": 2}  # fmt: skip
    assert "best" not in metrics and not (out / "model-last").exists()  # without --keep-best: the stop's weights
    assert same_weights(final_weights(out), torch.load(out / "checkpoint.pt", weights_only=True)["model"])
    assert [row["step"] for row in logged(out)] == [1, 2, 3, 4] and list(curve(out)) == [1, 2, 3, 4]
    # a resumed early-stopped run trains no further: it reports the same
    assert cli([*command, "--resume", "--quiet"]) == 0
    assert saved_metrics(out)["stopped_early"] == metrics["stopped_early"] and saved_metrics(out)["steps"] == 4
    assert [row["step"] for row in logged(out)] == [1, 2, 3, 4]


def test_keep_best_with_early_stopping_keeps_the_best_and_the_weights_at_the_stop(upstream, folder, tmp_path):
    metrics = run(upstream, folder, tmp_path / "run", eval_data=str(folder), keep_best=True, early_stopping=2,
                  **FALLING)  # fmt: skip
    assert metrics["steps"] == 4 and metrics["best"]["step"] == 2 and metrics["stopped_early"]["best_step"] == 2
    checkpoint = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert same_weights(load_file(tmp_path / "run" / "model-last" / "model.safetensors"), checkpoint["model"])
    assert checkpoint["best"] == {"step": 2, "metric": "top1", "value": metrics["best"]["value"], "since": 2}


def test_a_patience_the_run_never_reaches_changes_nothing(upstream, folder, tmp_path):
    metrics = run(upstream, folder, tmp_path / "patient", eval_data=str(folder), early_stopping=100, **FALLING)
    run(upstream, folder, tmp_path / "plain", eval_data=str(folder), **FALLING)
    assert metrics["steps"] == 8 and "stopped_early" not in metrics and "best" not in metrics
    assert same_weights(final_weights(tmp_path / "patient"), final_weights(tmp_path / "plain"))


def test_a_run_interrupted_after_its_first_evaluations_resumes_to_the_same_best(upstream, folder, tmp_path,
                                                                               monkeypatch):  # fmt: skip
    options = dict(eval_data=str(folder), keep_best=True, early_stopping=3, **FALLING)
    straight = run(upstream, folder, tmp_path / "straight", **options)
    assert straight["stopped_early"]["step"] == 5 and straight["best"]["step"] == 2
    with monkeypatch.context() as patch:
        ctrl_c_during("train_step", 2, patch)  # the step to 3 finishes, is evaluated (no better), then saved
        with pytest.raises(KeyboardInterrupt, match="interrupted at step 3"):
            run(upstream, folder, tmp_path / "resumed", **options)
    assert torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=True)["best"]["since"] == 1
    with pytest.raises(
        ValueError, match=r"--keep-best true → false, --early-stopping 3 → unset"
    ):  # the options are part of the fingerprint
        run(upstream, folder, tmp_path / "resumed", resume=True, eval_data=str(folder), **FALLING)
    resumed = run(upstream, folder, tmp_path / "resumed", resume=True, **options)
    for name in ("best", "stopped_early", "steps", "eval", "last_eval"):
        assert resumed[name] == straight[name], name
    for kept in ("model", "model-last"):
        assert same_weights(
            *(load_file(tmp_path / name / kept / "model.safetensors") for name in ("straight", "resumed"))
        )


def test_only_the_best_and_the_checkpointed_best_stay_on_disk(tmp_path):
    """A new best is written at once; the one the last checkpoint records stays until the next checkpoint, so a
    run killed in between resumes with its best weights intact."""
    model = torch.nn.Linear(2, 2)
    best = BestWeights(tmp_path, keep=True, patience=None, writes=True)
    best.consider(2, {"top1": 0.5}, model)
    best.checkpointed()
    with torch.no_grad():
        model.weight += 1
    best.consider(4, {"top1": 0.5}, model)  # a tie: not better
    best.consider(6, {"top1": 0.75}, model)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best-step2.safetensors", "best-step6.safetensors"]
    best.checkpointed()
    assert [p.name for p in tmp_path.iterdir()] == ["best-step6.safetensors"]
    assert torch.equal(load_file(tmp_path / "best-step6.safetensors")["weight"], model.weight.detach())


def test_multi_label_runs_keep_the_best_map(upstream, tmp_path, capsys):
    write_images(tmp_path / "images", SCENES)
    (tmp_path / "train.csv").write_text("path,label\n" + "".join(f"images/{n},{s}\n" for n, s in SCENES.items()))
    from bigtransfer.data.sources import load_dataset

    data = load_dataset(tmp_path / "train.csv", multi_label=True)
    recipe, options = grouped(tmp_path / "run", eval_every=1, steps=6, base_lr=0.003, batch_size=6, resize=24,
                              crop=20, workers=0, progress=False, seed=3, keep_best=True)  # fmt: skip
    metrics = finetune(str(upstream), data, data, recipe=recipe, run=options)
    logged_curve = curve(tmp_path / "run", "eval_map")
    first_best = min(step for step, value in logged_curve.items() if value == max(logged_curve.values()))
    assert (
        metrics["best"] == {"step": first_best, "metric": "map", "value": logged_curve[first_best]} and first_best < 6
    )
    assert (
        evaluated(capsys, tmp_path / "run" / "model", tmp_path / "train.csv", "--multi-label")["map"]
        == (metrics["best"]["value"])
    )
    assert metrics["last_eval"]["map"] == logged_curve[6] < metrics["eval"]["map"]


def test_pretrain_evaluates_every_n_steps_and_keeps_the_best(folder, tmp_path, capsys):
    out = tmp_path / "up"
    code = cli(["pretrain", "--data", str(folder), "--eval-data", str(folder), *TINY_UPSTREAM, "--epochs", "2",
                "--warmup-epochs", "0.5", "--batch-size", "5", "--crop", "16", "--eval-every", "2", "--keep-best",
                "--workers", "0", "--out", str(out), "--json", "--quiet"])  # fmt: skip
    metrics = json.loads(capsys.readouterr().out)
    assert code == 0 and metrics["steps"] == 6 and list(curve(out)) == [2, 4, 6]
    assert metrics["best"]["step"] in (2, 4, 6) and metrics["best"]["value"] == max(curve(out).values())
    assert evaluated(capsys, out / "model", folder)["top1"] == metrics["best"]["value"]


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--keep-best"], "--keep-best follow held-out evaluations while training: pass --eval-data DATA (or "
                          "--val-split) and --eval-every N."),
        (["--early-stopping", "3", "--eval-every", "2"], "--early-stopping follow held-out evaluations while "
                                                         "training: pass --eval-data DATA (or --val-split)."),
        (["--keep-best", "--early-stopping", "0"], "argument --early-stopping: 0 is out of range: give a number > 0"),
    ],
)  # fmt: skip
def test_the_options_without_evaluations_are_one_line_naming_the_fix(upstream, folder, tmp_path, capsys, flags,
                                                                     message):  # fmt: skip
    for command in (["finetune", "--model", str(upstream)], ["pretrain", *TINY_UPSTREAM]):
        code = exit_code([*command, "--data", str(folder), "--out", str(tmp_path / "never"), "--dry-run", *flags])
        error = capsys.readouterr().err
        assert code == 2 and message in error and len(error.strip().splitlines()) == 1, error
    assert not (tmp_path / "never").exists()


def test_the_python_api_refuses_a_patience_below_one(upstream, folder, tmp_path):
    recipe, _ = grouped(tmp_path / "run", eval_every=1)
    with pytest.raises(ValueError, match="early_stopping must be ≥ 1"):
        finetune(str(upstream), str(folder), str(folder), recipe=recipe,
                 run=RunOptions(out=tmp_path / "run", early_stopping=0, dry_run=True))  # fmt: skip


def test_pretrain_keeps_its_rule_of_one_monitor(folder, tmp_path, capsys):
    code = cli(["pretrain", "--data", str(folder), "--eval-data", str(folder), "--eval-every", "2", *TINY_UPSTREAM,
                "--fewshot-every", "2", "--fewshot-data", str(folder), "--fewshot-eval-data", str(folder),
                "--out", str(tmp_path / "never"), "--keep-best"])  # fmt: skip
    assert code == 2 and "A run measures one thing while it trains" in capsys.readouterr().err


def test_two_processes_choose_the_same_best_and_stop_at_the_same_step(upstream, folder, tmp_path):
    """The evaluation is gathered from both processes, so both see the same curve and take the same decisions:
    no process stops alone (which would leave the other waiting at the next all-reduce)."""
    single = run(upstream, folder, tmp_path / "single", eval_data=str(folder), keep_best=True, early_stopping=2,
                 **FALLING)  # fmt: skip
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
               "-m", "bigtransfer", "finetune", "--model", str(upstream), "--data", str(folder), "--batch-size", "8",
               "--steps", "8", "--resize", "24", "--crop", "20", "--seed", "3", "--base-lr", "0.1", "--out",
               str(tmp_path / "ddp"), "--eval-data", str(folder), "--eval-every", "1", "--keep-best",
               "--early-stopping", "2", "--quiet", "--device", "cpu"]  # fmt: skip
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert result.returncode == 0, result.stderr[-3000:]
    ddp = saved_metrics(tmp_path / "ddp")
    assert ddp["best"] == pytest.approx(single["best"]) and ddp["stopped_early"] == pytest.approx(
        single["stopped_early"]
    )
    assert ddp["eval"]["top1"] == ddp["best"]["value"]
    assert sorted(p.name for p in (tmp_path / "ddp").glob("best-step*")) == ["best-step2.safetensors"]
