"""Multi-label data (several classes per image): reading it, training with sigmoid + binary cross-entropy and
label-vector MixUp, its metrics (mAP, F1), and predicting every label above a threshold."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from bigtransfer.data.sources import load_dataset

# image name → the classes it shows; every class has a positive and a negative
SCENES = {
    "0.png": "cat", "1.png": "cat;dog", "2.png": "dog", "3.png": "dog;bird", "4.png": "bird", "5.png": "cat;bird",
    "6.png": "cat", "7.png": "cat;dog;bird", "8.png": "dog", "9.png": "bird", "10.png": "cat;dog", "11.png": "bird",
}  # fmt: skip


def write_images(folder, names, size=(20, 24)):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name in names:
        Image.fromarray(rng.integers(0, 255, size + (3,), dtype=np.uint8)).save(folder / name)


@pytest.fixture
def multi_label_csv(tmp_path):
    write_images(tmp_path / "images", SCENES)
    rows = "".join(f"images/{name},{labels}\n" for name, labels in SCENES.items())
    (tmp_path / "train.csv").write_text("path,label\n" + rows)
    return tmp_path / "train.csv"


def test_a_csv_with_semicolons_reads_as_a_multi_hot_matrix(multi_label_csv):
    dataset = load_dataset(multi_label_csv, multi_label=True)
    assert dataset.multi_label and dataset.classes == ["bird", "cat", "dog"]
    assert dataset.labels.shape == (12, 3) and dataset.labels.dtype == np.uint8
    assert dataset.labels[1].tolist() == [0, 1, 1] and dataset.labels[7].tolist() == [1, 1, 1]
    assert dataset.positives_per_class().tolist() == [6, 6, 6]
    assert dataset.typical_image_size()[:2] == (20, 24)
    dataset.check_trainable()


def test_semicolons_without_the_flag_are_an_error_naming_it(multi_label_csv):
    with pytest.raises(ValueError, match=r"line 3: the label 'cat;dog' lists several classes.*--multi-label"):
        load_dataset(multi_label_csv)


def test_a_folder_with_one_image_in_several_class_folders_is_one_multi_label_image(tmp_path):
    write_images(tmp_path / "data" / "cat", ["a.png", "b.png"])
    write_images(tmp_path / "data" / "dog", ["b.png", "c.png"])
    write_images(tmp_path / "data" / "dog" / "inside", ["a.png"])  # another name: inside/a.png
    dataset = load_dataset(tmp_path / "data", multi_label=True)
    assert [str(p.relative_to(tmp_path / "data")) for p in dataset.paths] == [
        "cat/a.png", "cat/b.png", "dog/c.png", "dog/inside/a.png"
    ]  # fmt: skip
    assert dataset.labels.tolist() == [[1, 0], [1, 1], [0, 1], [0, 1]]
    assert len(load_dataset(tmp_path / "data")) == 5  # single-label: every file is an example, as before


def test_subset_and_select_classes_keep_the_matrix_form(multi_label_csv):
    dataset = load_dataset(multi_label_csv, multi_label=True)
    assert dataset.subset(np.array([1, 4])).labels.tolist() == [[0, 1, 1], [1, 0, 0]]
    chosen = dataset.select_classes(["dog", "cat"])
    assert chosen.classes == ["dog", "cat"] and len(chosen) == 9  # the three bird-only images drop out
    assert chosen.labels[:2].tolist() == [[0, 1], [1, 1]]


def test_a_class_with_no_positives_is_refused(multi_label_csv):
    dataset = load_dataset(multi_label_csv, multi_label=True)
    dataset.labels[:, 0] = 0
    with pytest.raises(ValueError, match="classes 'bird' have no images"):
        dataset.check_trainable()


def test_idx_files_refuse_the_flag(tmp_path):
    from bigtransfer.data.datasets import write_idx

    write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((2, 4, 4)))
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.array([0, 1]))
    with pytest.raises(ValueError, match="one class per image"):
        load_dataset(tmp_path / "train-images-idx3-ubyte", multi_label=True)


# -- training ----------------------------------------------------------------------------------------------


def test_mixup_mixes_the_label_vectors_of_partners():
    import torch

    from bigtransfer.data.workers import LoadedImages
    from bigtransfer.train.augment import eval_processor
    from bigtransfer.train.batches import MicroBatchPlan, assemble

    labels = [[1, 0, 0], [0, 1, 1], [0, 0, 1], [1, 1, 0]]
    loaded = LoadedImages(torch.zeros(4, 4, 4, 3, dtype=torch.uint8), [0, 1, 2, 3], labels, [])
    plan = MicroBatchPlan(0, range(4), np.arange(4), (0.25, np.array([1, 0, 3, 2])))
    batch = assemble(plan, [loaded], torch.device("cpu"), False, eval_processor(4).eval_transform())
    expected = 0.25 * torch.tensor(labels, dtype=torch.float32) + 0.75 * torch.tensor([labels[i] for i in (1, 0, 3, 2)])
    assert batch.partner_labels is None and torch.equal(batch.labels, expected)
    assert batch.labels[1].tolist() == [0.75, 0.25, 0.25]


@pytest.fixture
def upstream(tmp_path):
    import torch

    from bigtransfer import BitConfig, BitForImageClassification
    from helpers import TINY

    torch.manual_seed(0)
    BitForImageClassification(BitConfig(**TINY)).save_pretrained(tmp_path / "upstream")
    return tmp_path / "upstream"


def finetune_tiny(upstream, data, out, resume=False, batch_split=1, **options):
    from bigtransfer.train import FineTuning, RunOptions, Speed, finetune

    recipe = FineTuning(**{**dict(batch_size=6, steps=6, resize=24, crop=20, mixup_alpha=0.4), **options})
    run = RunOptions(out=out, seed=1, resume=resume, progress=False, speed=Speed(workers=0, batch_split=batch_split))
    return finetune(str(upstream), data, recipe=recipe, run=run)


def logged(out):
    import json

    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_fine_tuning_multi_label_data_trains_a_sigmoid_head_with_binary_cross_entropy(upstream, multi_label_csv,
                                                                                      tmp_path):  # fmt: skip
    from bigtransfer import BitForImageClassification

    finetune_tiny(upstream, load_dataset(multi_label_csv, multi_label=True), tmp_path / "run", base_lr=0.1)
    model = BitForImageClassification.from_pretrained(tmp_path / "run" / "model")
    assert model.config.problem_type == "multi_label_classification"
    assert model.config.id2label == {0: "bird", 1: "cat", 2: "dog"}
    losses = [row["loss"] for row in logged(tmp_path / "run")]
    # the zero-initialised head gives every class p = 0.5: BCE is ln 2 per class, summed over the 3 classes
    # (softmax cross-entropy would give ln 3)
    assert losses[0] == pytest.approx(3 * np.log(2), abs=1e-5)
    assert losses[-1] < losses[0]


def test_an_interrupted_multi_label_run_resumes_to_the_same_weights(upstream, multi_label_csv, tmp_path,
                                                                   monkeypatch):  # fmt: skip
    import os
    import signal

    import torch
    from safetensors.torch import load_file

    import bigtransfer.train.loop as loop

    data = load_dataset(multi_label_csv, multi_label=True)
    finetune_tiny(upstream, data, tmp_path / "straight")
    original = loop.TrainingRun.train_step

    def ctrl_c_at_step_3(self, *args):
        if self.step == 3:
            os.kill(os.getpid(), signal.SIGINT)
        return original(self, *args)

    with monkeypatch.context() as patch:
        patch.setattr(loop.TrainingRun, "train_step", ctrl_c_at_step_3)
        with pytest.raises(KeyboardInterrupt, match="interrupted at step 4"):
            finetune_tiny(upstream, data, tmp_path / "resumed")
    finetune_tiny(upstream, data, tmp_path / "resumed", resume=True)
    straight, resumed = (load_file(tmp_path / name / "model" / "model.safetensors") for name in ("straight", "resumed"))
    assert all(torch.equal(straight[key], resumed[key]) for key in straight)


def test_few_shot_subsets_need_single_label_data(upstream, multi_label_csv, tmp_path):
    with pytest.raises(ValueError, match="--shots needs single-label data"):
        finetune_tiny(upstream, load_dataset(multi_label_csv, multi_label=True), tmp_path / "run", shots=2)


# -- metrics -----------------------------------------------------------------------------------------------

# four images, three classes; "c" has no positive, class "b" ties a positive with a negative at 0.6
SCORES = np.array([[0.9, 0.2, 0.7], [0.8, 0.6, 0.1], [0.3, 0.6, 0.2], [0.1, 0.4, 0.3]])
TRUTH = np.array([[1, 0, 0], [0, 1, 0], [1, 0, 0], [0, 0, 0]])


def test_average_precision_and_f1_on_a_hand_computed_example():
    from bigtransfer.inference.metrics import multi_label_metrics

    metrics = multi_label_metrics(SCORES, TRUTH, ["a", "b", "c"])
    # a: positives ranked 1st (precision 1) and 3rd (2/3): AP 5/6. b: the tie at 0.6 is one threshold, where
    # precision is 1/2 and recall 1: AP 1/2. c has no positive and stays out of the mean.
    assert metrics["per_class"]["a"]["ap"] == pytest.approx(5 / 6)
    assert metrics["per_class"]["b"]["ap"] == pytest.approx(1 / 2)
    assert "c" not in metrics["per_class"] and metrics["map"] == pytest.approx(2 / 3)
    # all twelve pairs ranked: positives reached at precision 1 (1 of 1), 2/5 and 3/8, a third of recall each
    assert metrics["micro_ap"] == pytest.approx((1 + 2 / 5 + 3 / 8) / 3)
    # at 0.5: a predicted for images 0, 1 (TP 1 of 2 true): F1 1/2; b for 1, 2 (TP 1, 1 true): F1 2/3;
    # c for image 0 (a false positive): counted in micro F1 = 2·2 / (5 predicted + 3 true)
    assert metrics["per_class"]["a"]["f1"] == pytest.approx(1 / 2)
    assert metrics["per_class"]["b"]["f1"] == pytest.approx(2 / 3)
    assert metrics["macro_f1"] == pytest.approx(7 / 12) and metrics["micro_f1"] == pytest.approx(1 / 2)
    assert metrics["per_class"]["a"]["positives"] == 2 and metrics["examples"] == 4


def test_average_precision_agrees_with_scikit_learn():
    import sklearn.metrics as sklearn_metrics  # part of the [test] extra: a missing install fails here

    from bigtransfer.inference.metrics import average_precision

    rng = np.random.default_rng(0)
    scores, truth = rng.integers(0, 6, (50, 4)) / 5, rng.integers(0, 2, (50, 4))  # many ties
    for c in range(4):
        expected = sklearn_metrics.average_precision_score(truth[:, c], scores[:, c])
        assert average_precision(scores[:, c], truth[:, c]) == pytest.approx(expected)
    expected = sklearn_metrics.average_precision_score(truth, scores, average="micro")
    assert average_precision(scores.ravel(), truth.ravel()) == pytest.approx(expected)


def test_finetune_and_evaluate_report_map_and_f1(upstream, multi_label_csv, tmp_path, capsys):
    import json

    from bigtransfer.cli import main as cli

    code = cli(["finetune", "--model", str(upstream), "--data", str(multi_label_csv), "--multi-label",
                "--eval-data", str(multi_label_csv), "--batch-size", "6", "--steps", "3", "--resize", "24",
                "--crop", "20", "--eval-every", "2", "--workers", "0", "--out", str(tmp_path / "run"), "--json",
                "--quiet"])  # fmt: skip
    reported = json.loads(capsys.readouterr().out)["eval"]
    assert code == 0 and {"map", "micro_ap", "macro_f1", "micro_f1"} <= set(reported) and "top1" not in reported
    assert set(reported["per_class"]) == {"bird", "cat", "dog"} and 0 < reported["map"] <= 1
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["eval"]["map"] == reported["map"]
    assert [row["step"] for row in logged(tmp_path / "run") if "eval_map" in row] == [2, 3]
    assert (tmp_path / "run" / "curves.png").is_file() and not (tmp_path / "run" / "confusion.png").exists()
    assert "mAP" in (tmp_path / "run" / "model" / "README.md").read_text()
    model = str(tmp_path / "run" / "model")
    assert cli(["evaluate", "--model", model, "--data", str(multi_label_csv), "--multi-label", "--workers", "0"]) == 0
    printed = capsys.readouterr().out
    assert f"mAP {reported['map']:.4f}" in printed and "AP " in printed and "cat (6 images)" in printed


# -- prediction --------------------------------------------------------------------------------------------


@pytest.fixture
def multi_label_model(tmp_path):
    """A multi-label head whose scores are the same for every image: sigmoid(bias) = 0.88, 0.12, 0.52."""
    import torch

    from bigtransfer import BitConfig, BitForImageClassification
    from bigtransfer.train.augment import eval_processor
    from helpers import TINY

    config = BitConfig(**{**TINY, "problem_type": "multi_label_classification",
                          "id2label": {0: "bird", 1: "cat", 2: "dog"}})  # fmt: skip
    model = BitForImageClassification(config)
    with torch.no_grad():
        model.classifier[1].weight.zero_()
        model.classifier[1].bias.copy_(torch.tensor([2.0, -2.0, 0.1]))
    model.save_pretrained(tmp_path / "model")
    eval_processor(20).save_pretrained(tmp_path / "model")
    write_images(tmp_path / "photos", ["a.png", "b.png"])
    return tmp_path / "model"


def predicted(model, capsys, *options):
    """predict's JSON for the two photos beside `model`: (label, score) pairs per image."""
    import json

    from bigtransfer.cli import main as cli

    assert (
        cli(["predict", str(model.parent / "photos"), "--model", str(model), "--json", "--workers", "0", *options]) == 0
    )
    results = json.loads(capsys.readouterr().out)["results"]
    return [[(p["label"], round(p["score"], 2)) for p in result["predictions"]] for result in results]


def test_predict_lists_every_label_at_or_above_the_threshold(multi_label_model, capsys):
    assert predicted(multi_label_model, capsys) == [[("bird", 0.88), ("dog", 0.52)]] * 2  # default 0.5
    assert predicted(multi_label_model, capsys, "--threshold", "0.1") == [[("bird", 0.88), ("dog", 0.52),
                                                                           ("cat", 0.12)]] * 2  # fmt: skip
    assert predicted(multi_label_model, capsys, "--threshold", "0.9") == [[]] * 2
    assert predicted(multi_label_model, capsys, "--threshold", "0.1", "--top-k", "1") == [[("bird", 0.88)]] * 2


def test_a_single_label_model_keeps_its_top_k_softmax(multi_label_model, capsys):
    import json

    config = json.loads((multi_label_model / "config.json").read_text())
    (multi_label_model / "config.json").write_text(json.dumps({**config, "problem_type": None}))
    softmax = np.exp([2.0, -2.0, 0.1]) / np.exp([2.0, -2.0, 0.1]).sum()
    expected = [("bird", round(softmax[0], 2)), ("dog", round(softmax[2], 2)), ("cat", round(softmax[1], 2))]
    assert predicted(multi_label_model, capsys) == [expected] * 2


def test_the_pipeline_gives_a_multi_label_model_sigmoid_scores(multi_label_model):
    from bigtransfer import pipeline

    classify = pipeline("image-classification", model=str(multi_label_model), device="cpu")
    scores = classify(str(multi_label_model.parent / "photos" / "a.png"))
    assert [(s["label"], round(s["score"], 2)) for s in scores] == [("bird", 0.88), ("dog", 0.52), ("cat", 0.12)]


def test_semicolons_in_the_cli_without_the_flag_name_it(upstream, multi_label_csv, tmp_path, capsys):
    from bigtransfer.cli import main as cli

    code = cli(["finetune", "--model", str(upstream), "--data", str(multi_label_csv), "--out", str(tmp_path / "run")])
    assert code == 2 and "pass --multi-label" in capsys.readouterr().err


def test_batch_split_gives_the_same_multi_label_update(upstream, multi_label_csv, tmp_path):
    from safetensors.torch import load_file

    data = load_dataset(multi_label_csv, multi_label=True)
    finetune_tiny(upstream, data, tmp_path / "whole", steps=3)
    finetune_tiny(upstream, data, tmp_path / "split", steps=3, batch_split=3)
    whole, split = (load_file(tmp_path / name / "model" / "model.safetensors") for name in ("whole", "split"))
    assert max(float((whole[key] - split[key]).abs().max()) for key in whole) < 1e-6


# -- pre-training with BiT's upstream objective ------------------------------------------------------------


def test_sigmoid_targets_of_class_ids_are_one_hot_rows_mixed_like_the_pixels():
    import torch

    from bigtransfer.train.batches import MicroBatch
    from bigtransfer.train.loop import one_hot_targets

    batch = MicroBatch(torch.zeros(2, 3, 4, 4), torch.tensor([0, 2]), torch.tensor([1, 2]), 0.25)
    assert one_hot_targets(batch, 3).tolist() == [[0.25, 0.75, 0.0], [0.0, 0.0, 1.0]]
    batch = MicroBatch(torch.zeros(2, 3, 4, 4), torch.tensor([0, 2]), None, 1.0)
    assert one_hot_targets(batch, 3).tolist() == [[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]


def pretrain_tiny(data, out, **recipe):
    from bigtransfer import BitConfig
    from bigtransfer.train import Pretraining, RunOptions, Speed, pretrain
    from helpers import TINY

    recipe = Pretraining(**{**dict(epochs=1, warmup_epochs=0.5, batch_size=4, crop=16), **recipe})
    run = RunOptions(out=out, progress=False, speed=Speed(workers=0))
    return pretrain(data, BitConfig(**TINY), recipe=recipe, run=run)


def test_pretrain_with_the_sigmoid_loss_trains_on_one_hot_targets(tmp_path, monkeypatch):
    import torch
    import torch.nn.functional as F

    import bigtransfer.train.loop as loop

    for name in ("cat", "dog", "bird"):
        write_images(tmp_path / "images" / name, ["0.png", "1.png", "2.png", "3.png"])
    seen = []
    original = loop.multi_label_loss_sum

    def recorded(logits, targets, *loss_options):  # label smoothing and class weights, off here
        seen.append((logits.detach(), targets))
        return original(logits, targets, *loss_options)

    monkeypatch.setattr(loop, "multi_label_loss_sum", recorded)
    metrics = pretrain_tiny(str(tmp_path / "images"), tmp_path / "up", loss="sigmoid")
    assert metrics["objective"] == "sigmoid" and metrics["steps"] == len(seen) == 3
    for _, targets in seen:  # each row one class, no MixUp upstream
        assert torch.equal(targets.sum(-1), torch.ones(4)) and set(targets.unique().tolist()) == {0.0, 1.0}
    logits, targets = seen[0]  # the first step's loss, by hand: BCE summed over classes, averaged over images
    manual = sum(-(t * F.logsigmoid(x) + (1 - t) * F.logsigmoid(-x)).sum() for x, t in zip(logits, targets)) / 4
    assert logged(tmp_path / "up")[0]["loss"] == pytest.approx(float(manual), rel=1e-5)
    assert pretrain_tiny(str(tmp_path / "images"), tmp_path / "softmax")["objective"] == "softmax" and len(seen) == 3


def test_pretrain_on_multi_label_data_uses_the_sigmoid_loss_and_a_multi_label_head(multi_label_csv, tmp_path):
    from bigtransfer import BitForImageClassification

    data = load_dataset(multi_label_csv, multi_label=True)
    assert pretrain_tiny(data, tmp_path / "up")["objective"] == "sigmoid"
    model = BitForImageClassification.from_pretrained(tmp_path / "up" / "model")
    assert model.config.problem_type == "multi_label_classification"
    with pytest.raises(ValueError, match="Multi-label data trains with --loss sigmoid"):
        pretrain_tiny(data, tmp_path / "softmax", loss="softmax")
