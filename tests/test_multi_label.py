"""Multi-label data (several classes per image): reading it, training with sigmoid + binary cross-entropy and
label-vector MixUp, its metrics (mAP, F1), and predicting every label above a threshold."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from bigtransfer.data.datasets import load_dataset

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


def finetune_tiny(upstream, data, out, resume=False, **options):
    from bigtransfer.train import FineTuning, RunOptions, Speed, finetune

    recipe = FineTuning(**{**dict(batch_size=6, steps=6, resize=24, crop=20, mixup_alpha=0.4), **options})
    run = RunOptions(out=out, seed=1, resume=resume, progress=False, speed=Speed(workers=0))
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
