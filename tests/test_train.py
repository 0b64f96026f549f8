"""Transfer: the HyperRule table, few-shot subsets, datasets, exact accumulation, resume, DDP, outputs, errors."""

import dataclasses
import errno
import functools
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from bigtransfer import BitConfig, BitForImageClassification, BitImageProcessor
from bigtransfer.cli import main as cli
from bigtransfer.data.datasets import from_csv, from_folder, write_idx
from bigtransfer.data.sources import load_dataset
from bigtransfer.data.workers import LoaderWorkerError
from bigtransfer.inference.few_shot import few_shot_subset
from bigtransfer.inference.predict import evaluate
from bigtransfer.runtime.settings import InferenceSettings
from bigtransfer.train import FineTuning, RunOptions, Speed, hyperrule
from bigtransfer.train.augment import eval_processor, hyperrule_augment
from bigtransfer.train.fine_tuning import fine_tuning_job, finetune
from bigtransfer.train.schedules import upstream_schedule
from helpers import TINY, free_port, kill_one_row_past_a_checkpoint, max_abs_diff, png_header

# -- the rule, as a table -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "size, steps, warmup, decays, mixup",
    [
        (50, 500, 100, [200, 300, 400], 0.0),
        (19_999, 500, 100, [200, 300, 400], 0.0),
        (20_000, 10_000, 500, [3000, 6000, 9000], 0.1),
        (499_999, 10_000, 500, [3000, 6000, 9000], 0.1),
        (500_000, 20_000, 500, [6000, 12000, 18000], 0.1),
    ],
)
def test_code_preset_schedule_by_dataset_size(size, steps, warmup, decays, mixup):
    rule = hyperrule(size, (300, 300))
    assert (rule.steps, rule.warmup_steps, rule.decay_steps, rule.mixup_alpha) == (steps, warmup, decays, mixup)
    assert (rule.base_lr, rule.batch_size, rule.momentum, rule.weight_decay) == (0.003, 512, 0.9, 0.0)


@pytest.mark.parametrize(
    "step, lr",
    [(0, 0.0), (50, 0.0015), (100, 0.003), (200, 0.003), (201, 3e-4), (300, 3e-4), (301, 3e-5), (401, 3e-6),
     (499, 3e-6), (500, None), (10_000, None)],
)  # fmt: skip
def test_code_preset_learning_rate(step, lr):
    value = hyperrule(1000, (32, 32)).lr(step)
    assert value == pytest.approx(lr) if lr is not None else value is None


@pytest.mark.parametrize(
    "image_size, preset, architecture, expected",
    [
        ((28, 28), "code", None, (160, 128)),
        ((95, 96), "code", None, (160, 128)),
        ((96, 96), "code", None, (512, 480)),
        ((500, 375), "code", None, (512, 480)),
        ((500, 375), "paper", None, (448, 384)),
        ((500, 375), "paper", "R152x4", (512, 480)),  # as catalogue.architecture_of names it
        ((32, 32), "paper", None, (160, 128)),
    ],
)
def test_resolution_rule(image_size, preset, architecture, expected):
    rule = hyperrule(1000, image_size, preset=preset, architecture=architecture)
    assert (rule.resize, rule.crop) == expected


@pytest.mark.parametrize("size, steps, decays", [(100, 500, [150, 300, 450]), (50_000, 10_000, [3000, 6000, 9000]),
                                                 (1_000_000, 20_000, [6000, 12000, 18000])])  # fmt: skip
def test_paper_preset(size, steps, decays):
    rule = hyperrule(size, (224, 224), preset="paper")
    assert (rule.steps, rule.warmup_steps, rule.decay_steps) == (steps, 0, decays)
    assert rule.lr(0) == 0.003 and rule.lr(steps - 1) == pytest.approx(3e-6) and rule.lr(steps) is None


@pytest.mark.parametrize("scaling, batch, lr", [("none", 128, 0.003), ("linear", 128, 0.00075), ("sqrt", 128, 0.0015)])
def test_learning_rate_scaling_with_batch(scaling, batch, lr):
    assert hyperrule(1000, (32, 32), batch_size=batch, lr_scaling=scaling).base_lr == pytest.approx(lr)


def test_unknown_preset_is_rejected():
    with pytest.raises(ValueError, match="'code'"):
        hyperrule(1000, (32, 32), preset="fast")


def test_upstream_schedule_decays_at_thirds_and_eight_ninths():
    schedule = upstream_schedule(dataset_size=25_600, epochs=9, batch_size=256, warmup_epochs=1)
    assert (schedule.steps, schedule.warmup_steps, schedule.base_lr) == (900, 100, 0.03)
    assert [schedule.lr(s) for s in (50, 299, 300, 600, 800)] == pytest.approx([0.015, 0.03, 0.003, 3e-4, 3e-5])


@pytest.mark.parametrize("epochs", [1, 3, 7, 9, 31])
def test_upstream_decays_follow_the_fractions_of_training_at_every_length(epochs):
    """One schedule class for both recipes: the upstream's integer boundaries decay exactly where the rule's
    fractions 1/3, 2/3 and 8/9 of training fall."""
    schedule = upstream_schedule(dataset_size=2_560, epochs=epochs, batch_size=256, warmup_epochs=0)
    for step in range(schedule.steps):
        decays = sum(1 for fraction in (1 / 3, 2 / 3, 8 / 9) if step >= fraction * schedule.steps)
        assert schedule.lr(step) == pytest.approx(0.03 / 10**decays)


# -- few-shot ------------------------------------------------------------------------------------------


def test_few_shot_subsets_are_balanced_and_the_same_on_every_machine():
    labels = np.repeat(np.arange(3), 10)
    subset = few_shot_subset(labels, shots=2, seed=0)
    assert np.bincount(labels[subset]).tolist() == [2, 2, 2]
    assert subset.tolist() == few_shot_subset(labels, 2, 0).tolist()
    # PCG64 streams are platform-independent: this exact subset is part of the contract
    assert subset.tolist() == [4, 6, 19, 11, 28, 22]
    assert subset.tolist() != few_shot_subset(labels, 2, 1).tolist()


def test_more_shots_than_a_class_has_is_explained():
    with pytest.raises(ValueError, match="Class 1 has only 3 examples"):
        few_shot_subset(np.array([0] * 5 + [1] * 3), shots=4, seed=0)


# -- data ----------------------------------------------------------------------------------------------


def make_folder(root, classes=("cat", "dog"), per_class=6, size=(20, 24), seed=0):
    rng = np.random.default_rng(seed)
    for index, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = np.clip(rng.normal(60 + 120 * index, 30, size + (3,)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


def test_folder_csv_and_idx_datasets(tmp_path):
    folder = from_folder(make_folder(tmp_path / "folder"))
    assert folder.classes == ["cat", "dog"] and len(folder) == 12 and folder.load(0).mode == "RGB"
    (tmp_path / "list.csv").write_text("path,label\nfolder/cat/0.png,cat\nfolder/dog/1.png,dog\n")
    csv_set = from_csv(tmp_path / "list.csv")
    assert csv_set.labels.tolist() == [0, 1] and csv_set.typical_image_size()[:2] == (20, 24)
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", np.zeros((4, 28, 28)))
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.array([0, 1, 2, 1]))
    idx = load_dataset(tmp_path / "train-images-idx3-ubyte.gz")
    assert len(idx) == 4 and idx.classes == ["0", "1", "2"] and idx.load(3).size == (28, 28)
    gzip_header = (tmp_path / "train-labels-idx1-ubyte.gz").read_bytes()[:10]
    assert gzip_header[4:8] == bytes(4)  # no time stamp: a regenerated file is byte-identical


def test_integer_csv_labels_are_classes_in_numeric_order(tmp_path):
    make_folder(tmp_path / "folder", classes=("x",), per_class=5)
    labels = ["12", "3", "0", "9", "6"]
    rows = "".join(f"folder/x/{i}.png,{label}\n" for i, label in enumerate(labels))
    (tmp_path / "digits.csv").write_text("path,label\n" + rows)
    digits = from_csv(tmp_path / "digits.csv")
    assert digits.classes == ["0", "3", "6", "9", "12"] and digits.labels.tolist() == [4, 1, 0, 3, 2]
    (tmp_path / "multi.csv").write_text("path,label\n" + rows.replace(",12", ",12;3"))
    assert from_csv(tmp_path / "multi.csv", multi_label=True).classes == ["0", "3", "6", "9", "12"]
    (tmp_path / "mixed.csv").write_text("path,label\n" + rows.replace(",9", ",9b"))
    assert from_csv(tmp_path / "mixed.csv").classes == ["0", "12", "3", "6", "9b"]  # not all integers: as text


def test_fashion_mnist_from_the_debian_package_has_its_names():
    path = "/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz"
    if not os.path.exists(path):
        pytest.fail(
            "dataset-fashion-mnist is not installed: .ci/run installs it (apt-get install dataset-fashion-mnist)"
        )
    test_set = load_dataset(path)
    assert len(test_set) == 10_000 and test_set.classes[9] == "Ankle boot"
    assert test_set.select_classes(["Sandal", "Bag"]).classes == ["Sandal", "Bag"]


def test_hugging_face_saved_dataset(tmp_path):
    import datasets  # part of the [test] extra: a missing install fails here rather than skipping

    images = [Image.fromarray(np.full((16, 16, 3), 40 * i, np.uint8)) for i in range(4)]
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b"])})
    datasets.Dataset.from_dict({"image": images, "label": [0, 1, 0, 1]}, features=features).save_to_disk(
        tmp_path / "ds"
    )
    loaded = load_dataset(tmp_path / "ds")
    assert loaded.classes == ["a", "b"] and len(loaded) == 4 and loaded.load(1).size == (16, 16)


@pytest.mark.parametrize(
    "make, error, message",
    [
        (lambda p: p.mkdir(), ValueError, "no images in class sub-folders"),
        (lambda p: make_folder(p, classes=("only",)), ValueError, "single class"),
        (lambda p: p.with_suffix(".csv").write_text("file,y\na.png,1\n") and p.with_suffix(".csv"), ValueError,
         "exactly the columns 'path,label'"),
        (lambda p: p.with_suffix(".csv").write_text("path,label\nnope.png,1\n") and p.with_suffix(".csv"),
         FileNotFoundError, "missing files"),
    ],
)  # fmt: skip
def test_bad_datasets_are_explained(tmp_path, make, error, message):
    created = make(tmp_path / "data")
    source = created if created and str(created).endswith(".csv") else tmp_path / "data"
    with pytest.raises(error, match=message):
        load_dataset(source).check_trainable()


def test_the_resolution_rule_reads_a_sample_of_sizes_not_the_first_image(tmp_path):
    """One small image sorted first must not send a dataset of large photos to the small-image resolution."""
    root = tmp_path / "photos"
    for label in ("a", "b"):
        (root / label).mkdir(parents=True)
        for i in range(6):
            side = 20 if (label, i) == ("a", 0) else 200
            Image.new("RGB", (side, side + 10)).save(root / label / f"{i}.png")
    dataset = load_dataset(root)
    assert dataset.paths[0].name == "0.png" and Image.open(dataset.paths[0]).size == (20, 30)
    typical = dataset.typical_image_size()
    assert typical[:2] == (210, 200) and "median of 12 of 12 images" in typical.statistic
    assert hyperrule(len(dataset), typical[:2]).crop == 480  # the first image alone gives 128


def test_eval_transform_saved_with_the_model_equals_the_training_eval():
    processor = eval_processor(32)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (28, 28, 3), dtype=np.uint8))
    pixels = processor(image, return_tensors="pt")["pixel_values"][0]
    assert pixels.shape == (3, 32, 32) and pixels.min() >= -1 and pixels.max() <= 1
    assert processor.crop_size == {"height": 32, "width": 32}  # the resolution it records, not the default 224
    augmented = hyperrule_augment(image, 32, 32, flip=False, rng=np.random.default_rng(0))
    model_input = processor.eval_transform().normalise_pixels(torch.tensor(augmented)[None])[0]
    assert torch.allclose(model_input, pixels, atol=1e-6)  # resize == crop


# -- the loop --------------------------------------------------------------------------------------------


@pytest.fixture
def upstream(tmp_path):
    torch.manual_seed(0)
    config = BitConfig(hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 1, 1], num_groups=4, embedding_size=16,
                       num_labels=3)  # fmt: skip
    BitForImageClassification(config).save_pretrained(tmp_path / "upstream")
    return tmp_path / "upstream"


@pytest.fixture
def folder(tmp_path):
    return make_folder(tmp_path / "images", classes=("a", "b", "c"), per_class=5)


RECIPE = {field.name for field in dataclasses.fields(FineTuning)}
SPEED = {field.name for field in dataclasses.fields(Speed)}


def grouped(out, **options):
    """Flat test options sorted into the typed groups finetune takes: (FineTuning, RunOptions)."""
    recipe = {key: value for key, value in options.items() if key in RECIPE}
    speed = Speed(**{key: value for key, value in options.items() if key in SPEED})
    rest = {key: value for key, value in options.items() if key not in RECIPE | SPEED}
    return FineTuning(**recipe), RunOptions(out=out, speed=speed, **rest)


def run(upstream, folder, out, eval_data=None, **kwargs):
    """finetune with the suite's small defaults; `upstream` may be a path or a model object."""
    recipe, options = grouped(
        out, **{**dict(batch_size=8, steps=6, resize=24, crop=20, progress=False, seed=3), **kwargs}
    )
    model = upstream if isinstance(upstream, (torch.nn.Module, int)) else str(upstream)
    return finetune(model, str(folder), eval_data, recipe=recipe, run=options)


def final_weights(out):
    return load_file(out / "model" / "model.safetensors")


@pytest.mark.parametrize("mixup", [0.0, 0.4])
def test_batch_split_gives_the_same_update(upstream, folder, tmp_path, mixup):
    run(upstream, folder, tmp_path / "whole", mixup_alpha=mixup)
    run(upstream, folder, tmp_path / "split", mixup_alpha=mixup, batch_split=4)
    whole, split = final_weights(tmp_path / "whole"), final_weights(tmp_path / "split")
    assert max(max_abs_diff(whole[k], split[k]) for k in whole) < 1e-6


def test_top5_is_reported_only_when_it_can_differ_from_top1_certainty():
    from bigtransfer.inference.metrics import accuracy_metrics, top_classes

    rng = np.random.default_rng(0)
    for classes, has_top5 in ((5, False), (6, True)):
        metrics = accuracy_metrics(
            top_classes(rng.normal(size=(20, classes))), rng.integers(0, classes, 20), list("abcdef")[:classes]
        )
        assert ("top5" in metrics) is has_top5


def test_grad_checkpointing_gives_the_same_weights(upstream, folder, tmp_path):
    run(upstream, folder, tmp_path / "plain")
    run(upstream, folder, tmp_path / "checkpointed", grad_checkpointing=True)
    plain, checkpointed = final_weights(tmp_path / "plain"), final_weights(tmp_path / "checkpointed")
    assert max(max_abs_diff(plain[k], checkpointed[k]) for k in plain) < 1e-6


def ctrl_c_during(method_name: str, at_step: int, monkeypatch) -> None:
    """Deliver a real SIGINT to this process from inside `TrainingRun.<method_name>` at `at_step`."""
    import bigtransfer.train.loop as loop

    original = getattr(loop.TrainingRun, method_name)

    def interrupted(self, *args, **kwargs):
        if self.step == at_step:
            os.kill(os.getpid(), signal.SIGINT)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(loop.TrainingRun, method_name, interrupted)


def ctrl_c_inside_the_optimiser_step(at_call: int, monkeypatch) -> None:
    """SIGINT after SGD has updated half the parameters of its `at_call`-th step (CPU SGD updates them one by
    one): where an exception-based Ctrl-C would leave a half-applied update."""
    original, calls = torch.optim.SGD.step, {"n": 0}

    def step(self, closure=None):
        calls["n"] += 1
        if calls["n"] != at_call:
            return original(self, closure)
        groups = self.param_groups
        halves = [[{**g, "params": g["params"][: len(g["params"]) // 2]} for g in groups],
                  [{**g, "params": g["params"][len(g["params"]) // 2 :]} for g in groups]]  # fmt: skip
        try:
            self.param_groups = halves[0]
            original(self)
            os.kill(os.getpid(), signal.SIGINT)
            self.param_groups = halves[1]
            original(self)
        finally:
            self.param_groups = groups

    monkeypatch.setattr(torch.optim.SGD, "step", step)


def test_ctrl_c_inside_the_optimiser_step_finishes_the_step_then_saves(upstream, folder, tmp_path, monkeypatch):
    run(upstream, folder, tmp_path / "straight")
    with monkeypatch.context() as patch:
        ctrl_c_inside_the_optimiser_step(4, patch)
        with pytest.raises(KeyboardInterrupt, match="interrupted at step 4: checkpoint saved .*--resume"):
            run(upstream, folder, tmp_path / "resumed", workers=2)
    assert torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=True)["step"] == 4
    with pytest.raises(FileExistsError, match="--resume"):
        run(upstream, folder, tmp_path / "resumed")
    run(upstream, folder, tmp_path / "resumed", resume=True)
    straight, resumed = final_weights(tmp_path / "straight"), final_weights(tmp_path / "resumed")
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)


def test_ctrl_c_during_the_last_step_lets_the_run_finish(upstream, folder, tmp_path, monkeypatch):
    ctrl_c_during("train_step", 5, monkeypatch)  # the step from 5 to 6, the last of six
    metrics = run(upstream, folder, tmp_path / "run")
    assert metrics["steps"] == 6 and (tmp_path / "run" / "model" / "model.safetensors").is_file()


def test_a_second_ctrl_c_stops_at_once_without_saving(upstream, folder, tmp_path, monkeypatch):
    import bigtransfer.train.loop as loop

    original = loop.TrainingRun.train_step

    def twice(self, *args):
        if self.step == 2:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
        return original(self, *args)

    monkeypatch.setattr(loop.TrainingRun, "train_step", twice)
    with pytest.raises(KeyboardInterrupt, match="without saving"):
        run(upstream, folder, tmp_path / "run", save_every=1)
    assert torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["step"] == 2  # the last one saved
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the run's handler is gone


def test_console_shows_plain_lines_when_redirected_eval_results_and_the_resume_step(upstream, folder, tmp_path,
                                                                                   capsys):  # fmt: skip
    run(upstream, folder, tmp_path / "run", progress=True, eval_data=str(folder), eval_every=3, steps=4, save_every=2)
    console = capsys.readouterr().err  # not a terminal here: lines, not a bar
    assert "\r" not in console and re.search(r"step 3: top1 \d\.\d{4}", console)
    assert re.search(r"step 4/4  loss \d+\.\d{4}  lr .*img/s  0m\d\ds elapsed, 0m00s left", console)
    (tmp_path / "run" / "model").rename(tmp_path / "first-model")  # continue the finished run: nothing left
    run(upstream, folder, tmp_path / "run", progress=True, steps=4, resume=True)
    assert f"resuming at step 4 of 4 from {tmp_path / 'run' / 'checkpoint.pt'}" in capsys.readouterr().err


def test_dry_run_prints_the_plan_writes_nothing_and_warns_when_slow(upstream, tmp_path, capsys):
    photos = make_folder(tmp_path / "photos", size=(120, 100))  # area ≥ 96²: the rule picks 512 → 480
    out = tmp_path / "never"
    assert cli(["finetune", "--model", str(upstream), "--data", str(photos), "--dry-run", "--out", str(out),
                "--device", "cpu", "--workers", "0"]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert printed.startswith("plan: fine-tune") and "on 12 images of 2 classes" in printed
    assert "resize 512 → crop 480, 500 steps (warm-up 100, ÷10 at 200, 300, 400), batch 512" in printed
    assert "cpu, float32, 0 loading workers → " + str(out) in printed
    assert "note: 480-px crops are slow on a CPU; for a quicker run pass --resize 160 --crop 128" in printed
    assert not out.exists()


def test_pretrain_dry_run_prints_its_plan(folder, tmp_path, capsys):
    out = tmp_path / "never"
    assert cli(["pretrain", "--data", str(folder), "--arch", "custom", "--depths", "1,1", "--hidden-sizes", "16,32",
                "--embedding-size", "8", "--num-groups", "4", "--epochs", "3", "--batch-size", "5", "--device", "cpu",
                "--workers", "0", "--out", str(out),
                "--dry-run"]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert re.match(
        r"plan: pre-train a BiT \(1-1, \d\.\d\d k parameters\) from scratch on 15 images of 3 classes", printed
    )
    assert "Inception crop 224 + flip, 9 steps" in printed and "note: 224-px crops are slow on a CPU" in printed
    assert not out.exists()


def test_several_runs_save_their_mean_and_std(upstream, folder, tmp_path):
    from bigtransfer.train import finetune_runs

    recipe, options = grouped(tmp_path / "runs", batch_size=8, steps=2, resize=24, crop=20, progress=False)
    summary = finetune_runs(2, str(upstream), str(folder), str(folder), recipe=recipe, run=options)
    assert [Path(run["model_dir"]).parent.name for run in summary["runs"]] == ["seed-0", "seed-1"]
    saved = json.loads((tmp_path / "runs" / "runs.json").read_text())
    assert saved["seeds"] == [0, 1] and saved["eval_top1_mean"] == summary["eval_top1_mean"]
    assert saved["eval_top1_mean"] == pytest.approx(np.mean(saved["eval_top1"]))


def test_ctrl_c_in_the_cli_checkpoints_and_exits_130(upstream, folder, tmp_path, monkeypatch, capsys):
    ctrl_c_during("train_step", 2, monkeypatch)
    command = ["finetune", "--model", str(upstream), "--data", str(folder), "--out", str(tmp_path / "run"),
               "--batch-size", "8", "--steps", "6", "--resize", "24", "--crop", "20", "--quiet", "--workers", "0"]  # fmt: skip
    assert cli(command) == 130
    assert "finetune: interrupted at step 3: checkpoint saved" in capsys.readouterr().err
    assert torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["step"] == 3


def test_kill_9_then_resume_gives_the_same_weights_and_each_metrics_step_once(upstream, folder, tmp_path):
    options = dict(steps=24, save_every=3, workers=0, resize=72, crop=64)  # steps slow enough to kill in between
    run(upstream, folder, tmp_path / "straight", **options)
    for attempt in range(3):  # a loaded machine may let the run reach its next checkpoint before the kill lands
        out = tmp_path / f"killed-{attempt}"
        command = [sys.executable, "-m", "bigtransfer", "finetune", "--model", str(upstream), "--data", str(folder),
                   "--out", str(out), "--batch-size", "8", "--steps", "24", "--resize", "72", "--crop", "64",
                   "--seed", "3", "--save-every", "3", "--workers", "0", "--quiet"]  # fmt: skip
        checkpoint_step, logged = kill_one_row_past_a_checkpoint(command, out)
        if checkpoint_step < max(logged):
            break
    assert checkpoint_step < max(logged) < 24  # rows after the checkpoint exist: the resumed run redoes them
    run(upstream, folder, out, resume=True, **options)
    straight, resumed = final_weights(tmp_path / "straight"), final_weights(out)
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows if "loss" in row] == list(range(1, 25))


def test_finetune_from_python_twice_and_from_a_model_object(upstream, folder, tmp_path):
    import inspect

    import bigtransfer.train

    assert {"recipe", "run"} <= set(inspect.signature(bigtransfer.train.finetune).parameters)
    bigtransfer.train.finetune(str(upstream), str(folder), recipe=FineTuning(steps=1),
                               run=RunOptions(out=tmp_path / "first", progress=False))  # fmt: skip
    loaded = BitForImageClassification.from_pretrained(upstream)
    before = {k: v.clone() for k, v in loaded.state_dict().items()}
    options = dict(batch_size=8, steps=2, resize=24, crop=20, progress=False, seed=3)
    run(loaded, folder, tmp_path / "second", **options)
    run(loaded.bit, folder, tmp_path / "third", **options)
    assert all(torch.equal(before[k], v) for k, v in loaded.state_dict().items()), "the caller's model changed"
    by_path = run(upstream, folder, tmp_path / "by-path", steps=2)
    assert final_weights(tmp_path / "second").keys() == final_weights(tmp_path / "by-path").keys()
    assert all(torch.equal(final_weights(tmp_path / "second")[k], final_weights(tmp_path / "by-path")[k])
               for k in final_weights(tmp_path / "by-path"))  # fmt: skip
    assert by_path["classes"] == ["a", "b", "c"]
    with pytest.raises(TypeError, match="name, a path or a BiT model object"):
        run(12, folder, tmp_path / "bad", **options)


def test_paper_preset_takes_r152x4_from_the_model_config(upstream, folder, tmp_path, monkeypatch):
    import bigtransfer.train.fine_tuning as fine_tuning
    from bigtransfer.checkpoints.catalogue import architecture_of

    assert architecture_of(BitConfig(depths=[3, 8, 36, 3], width_factor=4)) == "R152x4"
    assert architecture_of(BitConfig(depths=[3, 4, 6, 3])) == "R50x1"
    assert architecture_of(BitConfig(depths=[3, 4, 6, 3], layer_type="bottleneck")) is None
    seen = []
    monkeypatch.setattr(fine_tuning, "architecture_of", lambda config: seen.append(config.depths) or "R152x4")
    metrics = run(upstream, make_folder(tmp_path / "big", classes=("a", "b"), per_class=2, size=(100, 100)), tmp_path / "run",
                  preset="paper", steps=1, resize=None, crop=None, batch_size=2)  # fmt: skip
    assert seen == [[1, 1, 1, 1]] and (metrics["rule"]["resize"], metrics["rule"]["crop"]) == (512, 480)


def test_resume_refuses_a_run_of_another_model(upstream, folder, tmp_path):
    run(upstream, folder, tmp_path / "run", steps=2)
    (tmp_path / "run" / "model").rename(tmp_path / "other")
    with pytest.raises(ValueError, match=r"different run \(config\.yaml → now: --model .*upstream → .*other\)"):
        run(tmp_path / "other", folder, tmp_path / "run", resume=True, steps=2)
    with pytest.raises(ValueError, match=r"now: --resize 24 → 18, --crop 20 → 16\)"):
        run(upstream, folder, tmp_path / "run", resume=True, steps=2, resize=18, crop=16)
    (tmp_path / "run" / "config.yaml").unlink()  # as a run of an older version left it: the fingerprint's words
    with pytest.raises(ValueError, match=r"checkpoint → now: rule\.crop: 20 → 16; rule\.resize: 24 → 18"):
        run(upstream, folder, tmp_path / "run", resume=True, steps=2, resize=18, crop=16)


def test_outputs_of_a_run(upstream, folder, tmp_path):
    metrics = run(upstream, folder, tmp_path / "run", eval_data=str(folder), eval_every=3)
    out = tmp_path / "run"
    assert {"checkpoint.pt", "metrics.jsonl", "metrics.json", "curves.png", "confusion.png", "model"} <= {
        p.name for p in out.iterdir()
    }
    model = BitForImageClassification.from_pretrained(out / "model")
    assert model.config.id2label == {0: "a", 1: "b", 2: "c"}
    assert json.loads((out / "model" / "config.json").read_text())["label2id"] == {"a": 0, "b": 1, "c": 2}
    assert BitImageProcessor.from_pretrained(out / "model").size == {"height": 20, "width": 20}
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4, 5, 6]
    assert any("eval_top1" in r for r in rows)
    confusion = np.array(metrics["eval"]["confusion"])
    assert confusion.sum() == 15 and metrics["eval"]["top1"] == np.trace(confusion) / 15
    assert set(metrics["eval"]["per_class"]) == {"a", "b", "c"}
    assert Image.open(out / "curves.png").size[0] > 300


def test_zero_initialised_head_starts_at_uniform_predictions(upstream, folder, tmp_path, monkeypatch):
    import bigtransfer.train.run as run_module

    seen = {}

    def capture(network, *args, **kwargs):
        seen["head"] = network.classifier[1].weight.detach().clone()
        raise KeyboardInterrupt

    monkeypatch.setattr(run_module, "train", capture)
    with pytest.raises(KeyboardInterrupt):
        run(upstream, folder, tmp_path / "run")
    assert torch.count_nonzero(seen["head"]) == 0


def test_corrupt_training_images_are_skipped_and_counted(upstream, folder, tmp_path, caplog):
    (folder / "b" / "broken.png").write_bytes(b"not a png")
    metrics = run(upstream, folder, tmp_path / "run", steps=4)
    assert any(name.endswith("broken.png") for name in metrics["skipped_images"])
    assert "broken.png" in caplog.text


def test_too_many_shots_and_unknown_eval_classes_are_explained(upstream, folder, tmp_path):
    with pytest.raises(ValueError, match="Class 'a' has only 5 examples, fewer than --shots 9"):
        run(upstream, folder, tmp_path / "a", shots=9)
    other = make_folder(tmp_path / "other", classes=("a", "zebra"), per_class=2)
    with pytest.raises(ValueError, match="'zebra'"):
        run(upstream, folder, tmp_path / "b", eval_data=str(other), steps=1)


@pytest.mark.parametrize(
    "failure",
    [OSError(errno.ENOSPC, "No space left on device"), RuntimeError("[enforce fail at inline_container.cc] . "
     "PytorchStreamWriter failed writing file data/0: file write failed")],  # how torch reports a full disk
)  # fmt: skip
def test_full_disk_gives_a_clear_error_and_keeps_the_last_checkpoint(upstream, folder, tmp_path, monkeypatch,
                                                                      failure):  # fmt: skip
    import bigtransfer.train.loop as loop

    original, saved = loop.torch.save, []

    def full_after_the_first(state, path):
        if saved:
            raise failure
        original(state, path)
        saved.append(state["step"])

    monkeypatch.setattr(loop.torch, "save", full_after_the_first)
    with pytest.raises(OSError, match=r"Could not write the checkpoint .*MiB free.*--resume continues from the last"):
        run(upstream, folder, tmp_path / "run", steps=6, save_every=2)
    assert saved == [2] and torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["step"] == 2
    assert not [p.name for p in (tmp_path / "run").iterdir() if p.name.endswith(".tmp")]


def test_finetune_and_evaluate_commands(upstream, folder, tmp_path, capsys):
    code = cli(["finetune", "--model", str(upstream), "--data", str(folder), "--eval-data", str(folder), "--shots", "3",
                "--batch-size", "6", "--steps", "3", "--resize", "24", "--crop", "20", "--out", str(tmp_path / "run"),
                "--json", "--quiet"])  # fmt: skip
    metrics = json.loads(capsys.readouterr().out)
    assert code == 0 and metrics["train_examples"] == 9 and "confusion" not in metrics["eval"]
    assert cli(["evaluate", "--model", str(tmp_path / "run" / "model"), "--data", str(folder), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["top1"] == metrics["eval"]["top1"]


def test_few_shot_runs_report_mean_and_std(upstream, folder, tmp_path, capsys):
    cli(["finetune", "--model", str(upstream), "--data", str(folder), "--eval-data", str(folder), "--shots", "2",
         "--runs", "2", "--batch-size", "6", "--steps", "2", "--resize", "24", "--crop", "20",
         "--out", str(tmp_path / "runs"), "--quiet"])  # fmt: skip
    output = capsys.readouterr().out
    assert "seed 0" in output and "seed 1" in output and "over 2 seeds" in output and "±" in output


def test_pretrain_command_makes_a_transferable_model(folder, tmp_path, capsys):
    code = cli(["pretrain", "--data", str(folder), "--arch", "custom", "--depths", "1,1", "--hidden-sizes", "16,32",
                "--embedding-size", "8", "--num-groups", "4", "--epochs", "2", "--warmup-epochs", "0.5",
                "--batch-size", "5", "--crop", "16", "--out", str(tmp_path / "up"), "--json", "--quiet"])  # fmt: skip
    assert code == 0 and json.loads(capsys.readouterr().out)["steps"] == 6
    model = BitForImageClassification.from_pretrained(tmp_path / "up" / "model")
    assert model.config.depths == [1, 1] and model.config.id2label[2] == "c"
    assert json.loads((tmp_path / "up" / "model" / "config.json").read_text())["label2id"] == {"a": 0, "b": 1, "c": 2}


def test_two_processes_equal_one_process_and_share_the_evaluation(upstream, folder, tmp_path):
    """Evaluation during and after the run is split over the processes (none waits at a timed collective while
    another evaluates) and gives the one-process metrics."""
    run(upstream, folder, tmp_path / "single", eval_data=str(folder), eval_every=3)
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
               "-m", "bigtransfer", "finetune", "--model", str(upstream), "--data", str(folder), "--batch-size", "8",
               "--steps", "6", "--resize", "24", "--crop", "20", "--seed", "3", "--out", str(tmp_path / "ddp"),
               "--eval-data", str(folder), "--eval-every", "3", "--quiet", "--device", "cpu"]  # fmt: skip
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert result.returncode == 0, result.stderr[-3000:]
    single, ddp = final_weights(tmp_path / "single"), final_weights(tmp_path / "ddp")
    assert max(max_abs_diff(single[k], ddp[k]) for k in single) < 1e-5
    reports = [json.loads((tmp_path / name / "metrics.json").read_text())["eval"] for name in ("single", "ddp")]
    assert reports[1]["examples"] == 15 and reports[0]["confusion"] == reports[1]["confusion"]
    curves = [[row["eval_top1"] for row in map(json.loads, (tmp_path / name / "metrics.jsonl").read_text().splitlines())
               if "eval_top1" in row] for name in ("single", "ddp")]  # fmt: skip
    assert len(curves[1]) == 2 and curves[0] == pytest.approx(curves[1], abs=1e-6)


def test_the_standardised_kernel_cached_for_evaluation_is_dropped_when_training_resumes():
    from bigtransfer.models.layers import WeightStandardizedConv2d

    model = BitForImageClassification(BitConfig(**TINY)).eval()
    with torch.no_grad():
        model(torch.randn(1, 3, 32, 32))
    convs = [m for m in model.modules() if isinstance(m, WeightStandardizedConv2d)]
    assert all(conv._cache is not None for conv in convs)
    model.train()
    assert all(conv._cache is None for conv in convs)


# -- parallel loading --------------------------------------------------------------------------------


@pytest.mark.parametrize("mixup", [0.0, 0.4])
def test_any_number_of_workers_gives_bit_identical_weights(upstream, folder, tmp_path, mixup, monkeypatch):
    import bigtransfer.train.batches as batches

    monkeypatch.setattr(batches, "IMAGES_PER_CHUNK", 2)  # several chunks per micro-batch, spread over workers
    run(upstream, folder, tmp_path / "serial", mixup_alpha=mixup, workers=0)
    run(upstream, folder, tmp_path / "parallel", mixup_alpha=mixup, workers=2)
    serial, parallel = final_weights(tmp_path / "serial"), final_weights(tmp_path / "parallel")
    assert all(torch.equal(serial[k], parallel[k]) for k in serial)


def test_a_mixup_partner_in_the_same_micro_batch_is_decoded_once(folder, monkeypatch):
    from bigtransfer.data.datasets import ImageDataset
    from bigtransfer.train.batches import Layout, TrainingExamples

    loads = []
    original = ImageDataset.load
    monkeypatch.setattr(ImageDataset, "load", lambda self, index: loads.append(index) or original(self, index))
    augment = functools.partial(hyperrule_augment, resize=24, crop=20, flip=True)
    dataset = load_dataset(folder)
    examples = TrainingExamples(dataset, dataset.training_order(8, 0), augment, 0, Layout(8, batch_split=2), 0.4, 0, 1)
    plan = examples.plan(0, 0)
    loaded = examples[0]
    partners = {plan.partner(p) for p in plan.positions}
    assert len(loads) == len(set(plan.positions) | partners) < 2 * len(plan.positions)
    assert sorted(loaded.ids) == sorted(set(plan.positions) | partners)


def test_metrics_record_throughput_and_the_wait_for_data(upstream, folder, tmp_path):
    run(upstream, folder, tmp_path / "run", workers=2, steps=3)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert all(r["images_per_s"] > 0 and 0 <= r["data_wait_s"] < 60 and np.isfinite(r["loss"]) for r in rows)
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["workers"] == 2


def test_channels_last_trains_to_the_same_weights(upstream, folder, tmp_path):
    run(upstream, folder, tmp_path / "default", steps=3)
    run(upstream, folder, tmp_path / "channels_last", steps=3, channels_last=True)
    default, channels_last = final_weights(tmp_path / "default"), final_weights(tmp_path / "channels_last")
    assert max(max_abs_diff(default[k], channels_last[k]) for k in default) < 1e-5


def test_a_crashing_loading_worker_stops_training_with_a_clear_error(upstream, folder, tmp_path, monkeypatch):
    import signal

    from torch.utils.data import get_worker_info

    import bigtransfer.train.fine_tuning as finetune_module

    def killed_in_worker(image, **kwargs):
        if get_worker_info() is not None:
            os.kill(os.getpid(), signal.SIGKILL)
        return hyperrule_augment(image, **kwargs)

    monkeypatch.setattr(finetune_module, "hyperrule_augment", killed_in_worker)
    with pytest.raises(LoaderWorkerError, match="data-loading worker process failed"):
        run(upstream, folder, tmp_path / "run", workers=2)
    assert cli(["finetune", "--model", str(upstream), "--data", str(folder), "--steps", "2", "--batch-size", "6",
                "--resize", "24", "--crop", "20", "--workers", "2", "--out", str(tmp_path / "cli"), "--quiet"]) == 2  # fmt: skip


def test_unreadable_evaluation_images_are_skipped_and_listed(upstream, folder, tmp_path):
    run(upstream, folder, tmp_path / "run", steps=2)
    (folder / "b" / "broken.png").write_bytes(b"not a png")
    model = BitForImageClassification.from_pretrained(tmp_path / "run" / "model")
    metrics = evaluate(model, load_dataset(folder), eval_processor(20), InferenceSettings(workers=2))
    assert metrics["examples"] == 15 and [name.endswith("broken.png") for name in metrics["skipped_images"]] == [True]


def test_ddp_rank_with_only_unreadable_images_still_joins_the_all_reduce(upstream, folder, tmp_path):
    from bigtransfer.data.order import batch_indices

    paths = from_folder(folder).paths
    seed = next(s for s in range(100) if 0 not in batch_indices(0, 8, len(paths), s)[4:])  # keep the first image
    for index in batch_indices(0, 8, len(paths), seed)[4:]:  # positions 4-7: all of rank 1's micro-batch
        paths[index].write_bytes(b"unreadable")
    single = run(upstream, folder, tmp_path / "single", steps=1, seed=seed)
    assert len(single["skipped_images"]) == 4
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "bigtransfer", "finetune", "--model", str(upstream), "--data", str(folder), "--batch-size", "8",
               "--steps", "1", "--resize", "24", "--crop", "20", "--seed", str(seed), "--out", str(tmp_path / "ddp"),
               "--quiet", "--device", "cpu", "--workers", "1"]  # fmt: skip
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=240, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert result.returncode == 0, result.stderr[-3000:]
    single_weights, ddp = final_weights(tmp_path / "single"), final_weights(tmp_path / "ddp")
    assert max(max_abs_diff(single_weights[k], ddp[k]) for k in single_weights) < 1e-5


def test_ddp_stops_when_the_global_batch_holds_no_readable_image(upstream, folder, tmp_path):
    for path in folder.rglob("*.png"):
        png_header(path, 20, 24)  # a readable header (the plan passes), no pixels: unreadable in training
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "bigtransfer", "finetune", "--model", str(upstream), "--data", str(folder), "--batch-size", "8",
               "--steps", "2", "--resize", "24", "--crop", "20", "--out", str(tmp_path / "ddp"), "--quiet",
               "--device", "cpu", "--workers", "0"]  # fmt: skip
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=240, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert result.returncode != 0
    assert "bigtransfer finetune: step 1: none of the 8 examples of its batch had a readable image" in result.stderr
    assert not (tmp_path / "ddp" / "model").exists()


@pytest.mark.slow
def test_compiled_training_and_evaluation_match_eager(upstream, folder, tmp_path):
    eager = run(upstream, folder, tmp_path / "eager", steps=3, eval_data=str(folder))
    compiled = run(upstream, folder, tmp_path / "compiled", steps=3, eval_data=str(folder), compile=True)
    a, b = final_weights(tmp_path / "eager"), final_weights(tmp_path / "compiled")
    assert max(max_abs_diff(a[k], b[k]) for k in a) < 1e-4
    assert compiled["eval"]["top1"] == eager["eval"]["top1"]


# -- one meaning per image -----------------------------------------------------------------------------


def make_transparent_folder(root, per_class=5):
    """RGBA, LA and palette PNGs whose transparent parts hide noise: only compositing onto white sees a plain background."""
    rng = np.random.default_rng(1)
    for label, colour in enumerate([(200, 30, 30), (30, 30, 200)]):
        (root / f"c{label}").mkdir(parents=True)
        for i in range(per_class):
            rgba = np.concatenate([rng.integers(0, 256, (24, 24, 3)), np.zeros((24, 24, 1))], -1).astype(np.uint8)
            rgba[6:18, 6:18] = (*colour, 255)
            image = Image.fromarray(rgba)
            if i % 3 == 1:
                image = image.convert("LA")
            elif i % 3 == 2:
                image = image.quantize(colors=64, dither=Image.Dither.NONE)  # palette with a transparent entry
                image.info["transparency"] = image.getpixel((0, 0))
            image.save(root / f"c{label}" / f"{i}.png", transparency=image.info.get("transparency"))
    return root


def test_training_evaluation_and_prediction_decode_every_image_alike(tmp_path):
    folder = make_transparent_folder(tmp_path / "images")
    dataset = from_folder(folder)
    raw = BitImageProcessor(do_resize=False, do_center_crop=False, do_rescale=False, do_normalize=False)
    modes = set()
    for index, path in enumerate(dataset.paths):
        modes.add(Image.open(path).mode)
        served = np.moveaxis(raw(str(path), return_tensors="np")["pixel_values"][0], 0, -1)
        assert np.array_equal(np.asarray(dataset.load(index)), served.astype(np.uint8)), path
    assert {"RGBA", "LA", "P"} <= modes


def test_evaluate_and_predict_agree_on_transparent_photos(upstream, tmp_path, capsys):
    folder = make_transparent_folder(tmp_path / "images")
    run(upstream, folder, tmp_path / "run", steps=8, mixup_alpha=0.0)
    model_dir = str(tmp_path / "run" / "model")
    assert cli(["evaluate", "--model", model_dir, "--data", str(folder), "--json", "--workers", "2"]) == 0
    top1 = json.loads(capsys.readouterr().out)["top1"]
    assert cli(["predict", str(folder), "--model", model_dir, "--top-k", "1", "--json", "--workers", "2"]) == 0
    results = json.loads(capsys.readouterr().out)["results"]
    correct = [r["predictions"][0]["label"] == Path(r["file"]).parent.name for r in results]
    assert len(results) == 10 and sum(correct) / len(correct) == top1


def test_finetune_shots_are_drawn_among_readable_images(upstream, folder, tmp_path):
    """A 3-shot class trains on 3 images that decode, as fewshot draws: the seed's draw hits two broken files."""
    dataset = from_folder(folder)
    drawn_for_a = [i for i in few_shot_subset(dataset.labels, 3, seed=0) if dataset.labels[i] == 0][:2]
    for index in drawn_for_a:
        dataset.paths[index].write_bytes(b"not an image")
    job = fine_tuning_job(str(upstream), str(folder), None, FineTuning(shots=3), seed=0)
    assert len(job.train_set) == 9 and np.bincount(job.train_set.labels).tolist() == [3, 3, 3]
    assert all(job.train_set.load(i).size == (24, 20) for i in range(len(job.train_set)))
    assert sorted(job.plan_details["unreadable_skipped"]) == sorted(str(dataset.paths[i]) for i in drawn_for_a)


def test_finetune_shots_fail_for_a_class_with_too_few_readable_images(upstream, folder):
    for path in sorted((folder / "b").iterdir())[:3]:
        path.write_bytes(b"broken")
    with pytest.raises(ValueError, match="Class 'b' has only 2 examples, fewer than --shots 3"):
        fine_tuning_job(str(upstream), str(folder), None, FineTuning(shots=3), seed=0)


def test_cpu_plan_offers_the_models_own_resolution(tmp_path, capsys):
    """The bundled 32-px model under the rule's 160 → 128: the note names 36 → 32, not a fixed 160 → 128."""
    make_folder(tmp_path / "images", classes=("a", "b"), per_class=3)
    assert cli(["finetune", "--model", "bit-tiny-glyphs", "--data", str(tmp_path / "images"), "--device", "cpu",
                "--dry-run", "--out", str(tmp_path / "run")]) == 0  # fmt: skip
    printed = capsys.readouterr()
    note = " ".join((printed.out + printed.err).split())
    assert "resize 160 → crop 128" in note and "pass --resize 36 --crop 32 (the model's own resolution: 16×" in note
    assert cli(["finetune", "--model", "bit-tiny-glyphs", "--data", str(tmp_path / "images"), "--device", "cpu",
                "--dry-run", "--resize", "36", "--crop", "32", "--out", str(tmp_path / "run")]) == 0  # fmt: skip
    assert "note:" not in "".join(capsys.readouterr())
