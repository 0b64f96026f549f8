"""The opt-in knobs of a training run — label smoothing, class weights, pushing model/ to the Hub — each checked
against its formula or its reader, and absent by default: a run that names none trains as it did before."""

import json
import math
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import transformers
from huggingface_hub import constants
from safetensors.torch import load_file
from sklearn.utils.class_weight import compute_class_weight
from timm.loss import BinaryCrossEntropy, LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from transformers.trainer_pt_utils import LabelSmoother

import bigtransfer.train.loop as loop
from bigtransfer import BitConfig, BitForImageClassification
from bigtransfer.cli import main as cli
from bigtransfer.data.datasets import ImageDataset, write_idx
from bigtransfer.train import FineTuning, Pretraining, RunOptions, Speed, finetune, pretrain
from bigtransfer.train.batches import MicroBatch
from bigtransfer.train.fine_tuning import fine_tuning_job
from bigtransfer.train.losses import class_weights_for
from helpers import TINY

CLASSES = ["cat", "dog", "cup"]


def pictures(counts=(6, 3, 3), seed=0) -> ImageDataset:
    """Random 24×24 photos in memory, `counts[c]` of class c: imbalanced by default."""
    labels = np.repeat(np.arange(len(counts)), counts)
    arrays = np.random.default_rng(seed).integers(0, 256, (len(labels), 24, 24, 3), dtype=np.uint8)
    return ImageDataset(labels, CLASSES[: len(counts)], "pictures", arrays=arrays)


def multi_label_pictures() -> ImageDataset:
    labels = np.array([[1, 0, 0], [1, 1, 0], [1, 0, 1], [1, 0, 0], [0, 1, 0], [0, 0, 1]])
    return ImageDataset(labels, CLASSES, "tagged pictures", arrays=pictures((2, 2, 2)).arrays)


def upstream() -> BitForImageClassification:
    torch.manual_seed(0)
    return BitForImageClassification(BitConfig(**TINY))


def tune(out, data, run=None, **recipe) -> dict:
    """One full-batch step (every example once) at 24 → 20 px, in this process."""
    recipe = FineTuning(**{"batch_size": len(data), "steps": 1, "resize": 24, "crop": 20, **recipe})
    options = RunOptions(out=out, progress=False, speed=Speed(workers=0), **(run or {}))
    return finetune(upstream(), data, recipe=recipe, run=options)


def head_bias(out) -> torch.Tensor:
    return load_file(out / "model" / "model.safetensors")["classifier.1.bias"].double()


def first_lr(out) -> float:
    return json.loads((out / "metrics.jsonl").read_text().splitlines()[0])["lr"]


# -- the formulas, on small logits -------------------------------------------------------------------------

LOGITS = torch.tensor([[2.0, -1.0, 0.5, 0.0], [0.1, 0.2, 3.0, -2.0], [-1.0, 1.5, 0.0, 0.3]])
LABELS = torch.tensor([0, 2, 1])


def hand_smoothed_ce(logits, labels, eps, weights=None):
    """Σ_i (1-ε)·w[y]·(-log p[y]) + ε/C·Σ_c w[c]·(-log p[c]), in float64 from the definition."""
    logits = logits.double()
    weights = torch.ones(logits.shape[1], dtype=torch.float64) if weights is None else weights.double()
    minus_log_p = torch.logsumexp(logits, 1, keepdim=True) - logits
    target = minus_log_p.gather(1, labels[:, None])[:, 0]
    return float(((1 - eps) * weights[labels] * target + eps / logits.shape[1] * (minus_log_p * weights).sum(1)).sum())


def batch_of(labels, partners=None, lam=1.0) -> MicroBatch:
    return MicroBatch(torch.zeros(len(labels), 3, 2, 2), labels, partners, lam)


def test_label_smoothing_is_torchs_formula_which_timm_and_trainer_compute_too():
    loss = loop.softmax_loss_sum(LOGITS, batch_of(LABELS), smoothing=0.1)
    assert math.isclose(float(loss), hand_smoothed_ce(LOGITS, LABELS, 0.1), rel_tol=1e-6)
    timm = LabelSmoothingCrossEntropy(smoothing=0.1)(LOGITS, LABELS) * len(LABELS)  # a mean: times the batch
    trainer = LabelSmoother(epsilon=0.1)({"logits": LOGITS}, LABELS) * len(LABELS)
    assert torch.allclose(loss, timm) and torch.allclose(loss, trainer)


def test_with_mixup_both_terms_are_smoothed():
    partners, lam, eps = torch.tensor([1, 0, 2]), 0.7, 0.2
    loss = loop.softmax_loss_sum(LOGITS, batch_of(LABELS, partners, lam), smoothing=eps)
    expected = lam * hand_smoothed_ce(LOGITS, LABELS, eps) + (1 - lam) * hand_smoothed_ce(LOGITS, partners, eps)
    assert math.isclose(float(loss), expected, rel_tol=1e-6)
    smooth = F.one_hot(LABELS, 4) * (1 - eps) + eps / 4, F.one_hot(partners, 4) * (1 - eps) + eps / 4
    mixed_target = lam * smooth[0] + (1 - lam) * smooth[1]  # the same as smoothing the mixed target
    assert torch.allclose(loss, SoftTargetCrossEntropy()(LOGITS, mixed_target) * 3)


def test_class_weights_weight_each_example_by_its_class_and_the_loss_stays_a_sum():
    weights = torch.tensor([0.5, 2.0, 1.0, 4.0])
    loss = loop.softmax_loss_sum(LOGITS, batch_of(LABELS), weights=weights)
    nll = torch.logsumexp(LOGITS.double(), 1) - LOGITS.double().gather(1, LABELS[:, None])[:, 0]
    assert math.isclose(float(loss), float((weights[LABELS].double() * nll).sum()), rel_tol=1e-6)  # not ÷ Σ w
    smoothed = loop.softmax_loss_sum(LOGITS, batch_of(LABELS), smoothing=0.1, weights=weights)
    assert math.isclose(float(smoothed), hand_smoothed_ce(LOGITS, LABELS, 0.1, weights), rel_tol=1e-6)


def test_sigmoid_targets_move_towards_one_half_as_timms_dense_smoothing():
    targets = torch.tensor([[1.0, 0.0, 1.0, 0.0], [0.0, 0.0, 1.0, 0.0], [0.3, 0.7, 0.0, 1.0]])  # the last: MixUp
    weights = torch.tensor([0.5, 2.0, 1.0, 4.0])
    loss = loop.multi_label_loss_sum(LOGITS, targets, smoothing=0.1, weights=weights)
    y, x = targets.double() * 0.9 + 0.05, LOGITS.double()
    by_hand = weights.double() * (torch.log1p(torch.exp(-x)) * y + torch.log1p(torch.exp(x)) * (1 - y))
    assert math.isclose(float(loss), float(by_hand.sum()), rel_tol=1e-6)
    timm = BinaryCrossEntropy(smoothing=0.1, smooth_dense=True, weight=weights, reduction="sum")(LOGITS, targets)
    assert torch.allclose(loss, timm)


# -- class weights: balanced, from a file, in the run ----------------------------------------------------------


def test_balanced_weights_are_scikit_learns_on_the_training_set_used():
    data = pictures((6, 3, 2))
    expected = compute_class_weight("balanced", classes=np.arange(3), y=data.labels)
    assert np.allclose(class_weights_for("balanced", data), expected, rtol=0, atol=1e-12)
    picked = data.select_classes(["dog", "cat"])
    assert class_weights_for("balanced", picked) == (9 / (2 * 3), 9 / (2 * 6))  # --classes dog,cat: 3 and 6 images
    job = fine_tuning_job(upstream(), data, None, FineTuning(shots=2, class_weights="balanced"), seed=0)
    assert job.regime.class_weights == (1.0, 1.0, 1.0) and job.fingerprint["class_weights"] == dict.fromkeys(
        CLASSES, 1.0
    )


def test_balanced_multi_label_weights_are_scikit_learns_on_the_flattened_labels():
    data = multi_label_pictures()  # positives 4, 2, 2
    flattened = np.nonzero(data.labels)[1]
    expected = compute_class_weight("balanced", classes=np.arange(3), y=flattened)
    assert np.allclose(class_weights_for("balanced", data), expected) and np.allclose(expected, [2 / 3, 4 / 3, 4 / 3])


def test_balanced_weights_cancel_the_imbalance_in_the_first_gradient(tmp_path):
    """At the zero-initialised head every logit is 0, so after one full-batch step the head's bias is
    -lr·(1/N)·Σ_i w[y_i]·(1/C − [c = y_i]): 1/C − share_c unweighted, and 0 for every class when balanced."""
    data = pictures((6, 3, 3))
    tune(tmp_path / "plain", data)
    tune(tmp_path / "balanced", data, class_weights="balanced")
    share = torch.tensor([6, 3, 3], dtype=torch.float64) / 12
    lr = first_lr(tmp_path / "plain")
    assert torch.allclose(head_bias(tmp_path / "plain"), -lr * (1 / 3 - share), atol=1e-7)
    assert torch.allclose(head_bias(tmp_path / "balanced"), torch.zeros(3, dtype=torch.float64), atol=1e-7)
    (tmp_path / "w.json").write_text(json.dumps({"cat": 1.0, "dog": 4.0, "cup": 0.5}))
    tune(tmp_path / "file", data, class_weights=str(tmp_path / "w.json"))
    counts, weights = torch.tensor([6.0, 3, 3], dtype=torch.float64), torch.tensor([1.0, 4, 0.5], dtype=torch.float64)
    gradient = ((counts * weights).sum() / 3 - counts * weights) / 12
    assert torch.allclose(head_bias(tmp_path / "file"), -lr * gradient, atol=1e-7)


def test_label_smoothing_scales_the_first_gradient_by_one_minus_eps(tmp_path):
    """At the zero head, p = 1/C: the smoothed target's gradient is (1-ε) times the plain one."""
    data = pictures((6, 3, 3))
    tune(tmp_path / "plain", data)
    tune(tmp_path / "smooth", data, label_smoothing=0.25)
    assert torch.allclose(head_bias(tmp_path / "smooth"), 0.75 * head_bias(tmp_path / "plain"), atol=1e-8)


def todays_softmax(logits, batch, *unused):
    """The loss before the knobs existed, as train/loop.py computed it."""
    loss_sum = F.cross_entropy(logits, batch.labels, reduction="sum")
    if batch.partner_labels is not None:
        partner_sum = F.cross_entropy(logits, batch.partner_labels, reduction="sum")
        loss_sum = batch.mixup_lambda * loss_sum + (1 - batch.mixup_lambda) * partner_sum
    return loss_sum


def todays_sigmoid(logits, targets, *unused):
    return F.binary_cross_entropy_with_logits(logits, targets, reduction="sum")


@pytest.mark.parametrize("data", [pictures(), multi_label_pictures()], ids=["softmax-mixup", "multi-label"])
def test_off_by_default_the_weights_are_todays_bit_for_bit(tmp_path, monkeypatch, data):
    settings = dict(steps=3, batch_size=4, mixup_alpha=0.4)
    tune(tmp_path / "default", data, **settings)
    tune(tmp_path / "zero", data, label_smoothing=0.0, class_weights=None, **settings)
    monkeypatch.setattr(loop, "softmax_loss_sum", todays_softmax)
    monkeypatch.setattr(loop, "multi_label_loss_sum", todays_sigmoid)
    tune(tmp_path / "today", data, **settings)
    weights = [(tmp_path / name / "model" / "model.safetensors").read_bytes() for name in ("default", "zero", "today")]
    assert weights[0] == weights[1] == weights[2]
    assert "class_weights" not in json.loads((tmp_path / "default" / "metrics.json").read_text())


def test_a_csv_of_weights_reads_as_the_json_does(tmp_path):
    data = pictures()
    (tmp_path / "w.json").write_text(json.dumps({"dog": 2, "cat": 0.5, "cup": 1.25}))
    (tmp_path / "w.csv").write_text("class,weight\ndog,2\ncat,0.5\ncup,1.25\n")
    (tmp_path / "bare.csv").write_text("cup,1.25\ncat,0.5\ndog,2\n")
    read = [class_weights_for(str(tmp_path / name), data) for name in ("w.json", "w.csv", "bare.csv")]
    assert read[0] == read[1] == read[2] == (0.5, 2.0, 1.25)


@pytest.fixture
def idx_data(tmp_path):
    """pictures() as an IDX file, the classes named 0, 1, 2; and a saved upstream model."""
    data = pictures()
    write_idx(tmp_path / "train-images-idx3-ubyte", data.arrays[..., 0])
    write_idx(tmp_path / "train-labels-idx1-ubyte", data.labels)
    upstream().save_pretrained(tmp_path / "upstream")
    return tmp_path / "train-images-idx3-ubyte", tmp_path / "upstream"


def finetune_command(idx_data, out, *options):
    data, model = idx_data
    return ["finetune", "--model", str(model), "--data", str(data), "--batch-size", "4", "--steps", "2", "--resize",
            "24", "--crop", "20", "--workers", "0", "--quiet", "--out", str(out), *options]  # fmt: skip


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"0": 1, "1": 2}', r"w\.json lacks the classes '2': name each of the data's 3 classes once \('0', '1', '2'\)"),
        ('{"0": 1, "1": 2, "2": 1, "zebra": 3}', r"names 'zebra', not classes of the training data"),
        ('{"0": 1, "1": 0, "2": -2}', r"'1': 0, '2': -2 — each weight must be a positive finite number"),
        ('{"0": 1, "1": NaN, "2": "heavy"}', r"'1': nan, '2': 'heavy' — each weight must be a positive finite"),
        ('[1, 2, 3]', r"w\.json holds a list: give a JSON file \{\"class name\": weight, …\} or a CSV file"),
        ("{not json", r"w\.json is not valid JSON .*: give a JSON file"),
        (None, r"w\.json does not exist: give 'balanced' or a JSON file"),
    ],
)  # fmt: skip
def test_a_bad_weights_file_is_one_line_naming_it_and_the_fix(idx_data, tmp_path, capsys, content, message):
    if content is not None:
        (tmp_path / "w.json").write_text(content)
    code = cli(finetune_command(idx_data, tmp_path / "run", "--class-weights", str(tmp_path / "w.json")))
    error = capsys.readouterr().err
    assert code == 2 and error.count("\n") == 1 and error.startswith("bigtransfer finetune: --class-weights")
    assert re.search(message, error), error
    assert not (tmp_path / "run").exists()


def test_out_of_range_knobs_are_refused_in_one_line(idx_data, tmp_path, capsys):
    with pytest.raises(ValueError, match=r"FineTuning: label_smoothing=1\.0 out of range \(.*0 ≤ label_smoothing < 1"):
        FineTuning(label_smoothing=1.0)
    with pytest.raises(ValueError, match=r"Pretraining: label_smoothing=-0\.1, class_weights=3 out of range"):
        Pretraining(label_smoothing=-0.1, class_weights=3)
    with pytest.raises(SystemExit, match="2"):  # argparse's exit, its one line on stderr
        cli(finetune_command(idx_data, tmp_path / "run", "--label-smoothing", "1"))
    assert "argument --label-smoothing: 1 is out of range: give a number ≥ 0 and < 1" in capsys.readouterr().err


def test_the_plan_shows_the_knobs_and_resume_refuses_other_weights(idx_data, tmp_path, capsys):
    out = tmp_path / "run"
    assert cli(finetune_command(idx_data, out, "--label-smoothing", "0.1", "--class-weights", "balanced",
                                "--dry-run")) == 0  # fmt: skip
    assert "  loss: label smoothing 0.1; class weights 0 0.6667, 1 1.333, 2 1.333\n" in capsys.readouterr().out
    assert cli(finetune_command(idx_data, out, "--class-weights", "balanced", "--json")) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["class_weights"] == {"0": 2 / 3, "1": 4 / 3, "2": 4 / 3} and "label_smoothing" not in metrics
    card = (out / "model" / "README.md").read_text()  # the card says the run was no plain HyperRule fine-tune
    assert "| class weights | 0 0.667, 1 1.33, 2 1.33 |" in card and "label smoothing" not in card
    (tmp_path / "w.csv").write_text("0,1\n1,1\n2,2\n")
    assert cli(finetune_command(idx_data, out, "--class-weights", str(tmp_path / "w.csv"), "--resume")) == 2
    error = capsys.readouterr().err
    assert "comes from a different run" in error and f"--class-weights balanced → {tmp_path / 'w.csv'}" in error
    assert cli(finetune_command(idx_data, out, "--resume")) == 2
    assert "--class-weights balanced → unset" in capsys.readouterr().err


def test_pretrain_takes_the_knobs_with_its_sigmoid_loss(tmp_path, capsys):
    data, out = multi_label_pictures(), tmp_path / "up"
    config = BitConfig(depths=[1, 1], hidden_sizes=[16, 32], embedding_size=8, num_groups=4)
    recipe = Pretraining(
        epochs=1, warmup_epochs=0, batch_size=6, crop=16, label_smoothing=0.1, class_weights="balanced"
    )
    metrics = pretrain(data, config, recipe=recipe, run=RunOptions(out=out, progress=False, speed=Speed(workers=0)))
    assert metrics["objective"] == "sigmoid" and metrics["label_smoothing"] == 0.1
    assert metrics["class_weights"] == pytest.approx({"cat": 2 / 3, "dog": 4 / 3, "cup": 4 / 3})
    assert BitForImageClassification.from_pretrained(out / "model").config.problem_type == "multi_label_classification"


# -- pushing model/ to the Hub ------------------------------------------------------------------------------------


@pytest.fixture
def token(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_from_the_environment")


def test_a_run_pushes_its_model_folder_card_included(hub, token, tmp_path):
    remote, calls = hub
    out = tmp_path / "run"
    metrics = tune(out, pictures(), run={"push_to_hub": "me/bit-cats", "hub_private_repo": True})
    pushed = remote / "me" / "bit-cats"
    local = {path.name: path.read_bytes() for path in (out / "model").iterdir()}
    assert {path.name: path.read_bytes() for path in pushed.iterdir()} == local  # what arrives is model/ itself
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "training.json", "README.md"} <= set(local)
    card = (pushed / "README.md").read_text()
    assert 'BitForImageClassification.from_pretrained("me/bit-cats")' in card and "## Training" in card
    assert calls[0] == ("create_repo", "me/bit-cats", {"private": True, "exist_ok": True, "token": None})
    assert calls[-1][2]["commit_message"] == "bigtransfer run run: 1 step on 12 images"
    url = "https://huggingface.co/me/bit-cats/commit/0123abc"
    assert metrics["push_to_hub"] == {"repo": "me/bit-cats", "url": url}
    assert json.loads((out / "metrics.json").read_text())["push_to_hub"]["url"] == url
    pixels = torch.randn(2, 3, 20, 20)
    with torch.no_grad():
        ours = BitForImageClassification.from_pretrained(pushed)(pixels).logits
        theirs = transformers.BitForImageClassification.from_pretrained(pushed).eval()(pixels).logits
    assert torch.allclose(ours, theirs, atol=1e-5)


def test_the_push_command_prints_where_it_went(hub, token, idx_data, tmp_path, capsys):
    remote, _ = hub
    assert cli(finetune_command(idx_data, tmp_path / "run", "--push-to-hub", "bit-digits", "--eval-data",
                                str(idx_data[0]))) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert "pushed to the Hub as bit-digits: https://huggingface.co/me/bit-digits/commit/0123abc" in printed
    assert 'from_pretrained("me/bit-digits")' in (remote / "me" / "bit-digits" / "README.md").read_text()


def test_without_a_token_the_run_is_kept_and_the_line_says_how_to_push_later(hub, idx_data, tmp_path, capsys,
                                                                            monkeypatch):  # fmt: skip
    _, calls = hub
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    out = tmp_path / "run"
    assert cli(finetune_command(idx_data, out, "--push-to-hub", "me/bit-digits", "--dry-run")) == 0
    assert "then push model/ to the Hugging Face Hub as me/bit-digits (no token found yet" in capsys.readouterr().out
    assert cli(finetune_command(idx_data, out, "--push-to-hub", "me/bit-digits")) == 2
    printed, error = capsys.readouterr()
    assert f"model saved to {out / 'model'}" in printed and error.count("\n") == 1
    assert error == (f"bigtransfer finetune: the run is saved ({out / 'model'}, {out / 'metrics.json'}) but the push "
                     "to 'me/bit-digits' failed (OSError: no Hugging Face token: set HF_TOKEN or run `hf auth login`); "
                     f"push it later with `hf upload me/bit-digits {out / 'model'}`.\n")  # fmt: skip
    assert calls == [] and BitForImageClassification.from_pretrained(out / "model").config.num_labels == 3
    recorded = json.loads((out / "metrics.json").read_text())
    assert recorded["steps"] == 2 and recorded["push_to_hub"]["error"].startswith("OSError: no Hugging Face token")
    assert 'from_pretrained("me/bit-digits")' in (out / "model" / "README.md").read_text()  # `hf upload` sends it


def test_an_unreachable_hub_keeps_the_run_and_its_card_names_the_repo(hub, token, tmp_path, monkeypatch):
    from huggingface_hub import HfApi

    def offline(self, *args, **kwargs):
        raise ConnectionError("Name or service not known")

    monkeypatch.setattr(HfApi, "create_repo", offline)
    out = tmp_path / "run"
    with pytest.raises(OSError, match=r"push to 'me/cats' failed \(ConnectionError: Name or service not known\); "
                       r"push it later with `hf upload me/cats .*run/model`") as failure:  # fmt: skip
        tune(out, pictures(), run={"push_to_hub": "me/cats"})
    assert failure.value.metrics["push_to_hub"] == {
        "repo": "me/cats",
        "error": "ConnectionError: Name or service not known",
    }
    assert 'from_pretrained("me/cats")' in (out / "model" / "README.md").read_text()  # `hf upload` sends it as it is


def test_a_repo_name_the_hub_refuses_fails_before_the_run(idx_data, tmp_path, capsys):
    with pytest.raises(ValueError, match=r"--push-to-hub 'me/bad\.\.name' is not a Hub repo name .*OWNER/NAME"):
        RunOptions(push_to_hub="me/bad..name")
    assert cli(finetune_command(idx_data, tmp_path / "run", "--push-to-hub", "a/b/c")) == 2
    error = capsys.readouterr().err
    assert (
        error.startswith("bigtransfer finetune: --push-to-hub 'a/b/c' is not a Hub repo name")
        and error.count("\n") == 1
    )
    assert not (tmp_path / "run").exists()


def test_several_seeds_would_overwrite_one_repo_so_they_are_refused(idx_data, tmp_path, capsys):
    assert cli(finetune_command(idx_data, tmp_path / "runs", "--runs", "2", "--push-to-hub", "me/digits")) == 2
    error = capsys.readouterr().err
    assert error.startswith("bigtransfer finetune: --push-to-hub with --runs 2: every run would replace the last one")
    assert not (tmp_path / "runs").exists()
