"""Hugging Face `datasets` as they come: images of any size read lazily, splits and columns chosen, string labels,
a held-out validation split, and a dataset given by name."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from bigtransfer import BitConfig, BitForImageClassification
from bigtransfer.cli import main as cli
from bigtransfer.data.datasets import hold_out
from bigtransfer.data.sources import load_dataset

SIZES = [(20, 30), (36, 24), (28, 28)]  # (width, height): three sizes, as photo datasets have


def photos(count: int, seed: int) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        for w, h in (SIZES[i % 3] for i in range(count))
    ]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A DatasetDict with train/validation/test splits, mixed image sizes and a ClassLabel."""
    root = tmp_path_factory.mktemp("hf") / "ds"
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["cat", "dog"])})

    def split(count, seed):
        return datasets.Dataset.from_dict(
            {"image": photos(count, seed), "label": [i % 2 for i in range(count)]}, features=features
        )

    datasets.DatasetDict({"train": split(12, 0), "validation": split(6, 1), "test": split(4, 2)}).save_to_disk(root)
    return root


def test_images_of_any_size_stay_in_the_table_until_a_worker_decodes_one(saved):
    train = load_dataset(saved)
    assert train.arrays is None and train.table is not None and train.source.endswith("[train]")
    assert train.classes == ["cat", "dog"] and len(train) == 12 and list(train.labels[:4]) == [0, 1, 0, 1]
    assert [train.load(i).size for i in range(3)] == SIZES and train.load(0).mode == "RGB"
    assert train.subset(np.array([1, 4])).load(1).size == SIZES[1]  # a subset addresses its own rows
    size = train.typical_image_size()  # headers of a seeded sample, nothing decoded
    assert (size.height, size.width) == (28, 28) and "headers" in size.statistic


def test_evaluation_reads_validation_then_test_never_silently_train(saved, tmp_path):
    assert load_dataset(saved, for_eval=True).source.endswith("[validation]")
    assert len(load_dataset(saved, split="test")) == 4
    with pytest.raises(ValueError, match=r"splits \['train', 'validation', 'test'\], not 'dev': pick one with --split"):
        load_dataset(saved, split="dev")
    only_train = datasets.load_from_disk(str(saved))
    datasets.DatasetDict({"train": only_train["train"], "extra": only_train["test"]}).save_to_disk(tmp_path / "two")
    with pytest.raises(ValueError, match="none is validation or valid or val or test: pick one with --eval-split"):
        load_dataset(tmp_path / "two", for_eval=True)


def test_a_split_asked_of_a_dataset_without_splits_is_refused(saved, tmp_path):
    single = datasets.load_from_disk(str(saved))["train"]
    single.save_to_disk(tmp_path / "plain")
    with pytest.raises(ValueError, match=r"a single dataset, not a DatasetDict of splits, so it has no split "
                       r"'validation': drop --split\.$"):  # fmt: skip
        load_dataset(tmp_path / "plain", split="validation")
    assert len(load_dataset(tmp_path / "plain")) == 12
    named = datasets.Dataset.from_dict(single.to_dict(), features=single.features, split="train")
    named.save_to_disk(tmp_path / "train-only")  # it knows the split it was made from: that one name is accepted
    assert len(load_dataset(tmp_path / "train-only", split="train")) == 12
    with pytest.raises(ValueError, match=r"drop --eval-split, or --eval-split train \(the split it was saved from\)"):
        load_dataset(tmp_path / "train-only", split="test", for_eval=True)


def test_named_columns_and_string_labels(tmp_path):
    table = {"photo": photos(4, 0), "kind": ["tabby", "collie", "tabby", "beagle"], "note": ["x"] * 4}
    datasets.Dataset.from_dict(table).save_to_disk(tmp_path / "ds")
    with pytest.raises(ValueError, match="no image column .*--image-column"):
        load_dataset(tmp_path / "ds")
    with pytest.raises(ValueError, match="column 'note' holds .* not images"):
        load_dataset(tmp_path / "ds", image_column="note", label_column="kind")
    loaded = load_dataset(tmp_path / "ds", image_column="photo", label_column="kind")
    assert loaded.classes == ["beagle", "collie", "tabby"] and list(loaded.labels) == [2, 1, 2, 0]
    numbered = datasets.Dataset.from_dict({"image": photos(3, 0), "label": ["12", "3", "0"]})
    numbered.save_to_disk(tmp_path / "numbered")
    assert load_dataset(tmp_path / "numbered").classes == ["0", "3", "12"]  # integer text: as a CSV's, by value


def test_unlabelled_rows_are_refused(tmp_path):
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b"])})
    datasets.Dataset.from_dict({"image": photos(2, 0), "label": [0, -1]}, features=features).save_to_disk(tmp_path)
    with pytest.raises(ValueError, match="1 rows without a label"):
        load_dataset(tmp_path)


def test_hold_out_is_seeded_disjoint_and_per_class(saved):
    data = load_dataset(saved)
    data.paths = [f"row{i}" for i in range(len(data))]  # names to compare the two parts by
    training, held = hold_out(data, 0.25, seed=3)
    again, held_again = hold_out(data, 0.25, seed=3)
    assert held.paths == held_again.paths and training.paths == again.paths
    assert not set(held.paths) & set(training.paths) and len(held) + len(training) == 12
    assert sorted(np.bincount(held.labels)) == [2, 2] and "held out (--val-split 0.25, seed 3)" in held.source
    assert hold_out(data, 0.25, seed=4)[1].paths != held.paths


def test_finetune_and_evaluate_on_a_saved_dataset_of_mixed_sizes(saved, tmp_path, capsys):
    torch.manual_seed(0)
    config = BitConfig(hidden_sizes=[16, 32], depths=[1, 1], num_groups=4, embedding_size=16, num_labels=3)
    BitForImageClassification(config).save_pretrained(tmp_path / "upstream")
    code = cli(["finetune", "--model", str(tmp_path / "upstream"), "--data", str(saved), "--val-split", "0.25",
                "--batch-size", "4", "--steps", "2", "--resize", "24", "--crop", "20", "--out", str(tmp_path / "run"),
                "--workers", "2", "--json"])  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0 and json.loads(captured.out)["train_examples"] == 8
    assert "from " + str(saved) + " [train]; evaluate on 4 from " in captured.err
    assert cli(["evaluate", "--model", str(tmp_path / "run" / "model"), "--data", str(saved), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["examples"] == 6  # the validation split
    with pytest.raises(SystemExit):
        cli(["finetune", "--model", "m", "--data", str(saved), "--val-split", "1.5"])
    assert "is not a fraction" in capsys.readouterr().err


def test_a_dataset_name_goes_to_datasets_load_dataset(monkeypatch):
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b"])})
    splits = datasets.DatasetDict(
        {name: datasets.Dataset.from_dict({"image": photos(2, 0), "label": [0, 1]}, features=features)
         for name in ("train", "test")}
    )  # fmt: skip
    calls = []

    def fake_load_dataset(name, split=None):
        calls.append((name, split))
        return splits[split] if split else splits

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    assert load_dataset("someone/pets").source == "someone/pets [train]"
    assert load_dataset("someone/pets", for_eval=True).source == "someone/pets [test]"
    assert load_dataset("someone/pets", split="test").source == "someone/pets [test]"
    assert calls == [("someone/pets", None), ("someone/pets", None), ("someone/pets", "test")]


def test_an_unknown_name_offline_says_what_was_tried(tmp_path):
    """A real `datasets.load_dataset` with the Hub off and an empty cache: the error names both readings."""
    code = "from bigtransfer.data.sources import load_dataset\nload_dataset('no-such-dataset-anywhere')"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_CACHE": str(tmp_path), "HF_HOME": str(tmp_path)}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 1
    assert "No dataset at 'no-such-dataset-anywhere': not a local path" in result.stderr
    assert "HF_HUB_OFFLINE=1" in result.stderr


def test_label_lists_are_multi_label_data(tmp_path):
    names = ["cat", "dog", "sofa"]
    features = datasets.Features(
        {"image": datasets.Image(), "labels": datasets.Sequence(datasets.ClassLabel(names=names))}
    )
    datasets.Dataset.from_dict({"image": photos(3, 0), "labels": [[0, 2], [1], []]}, features=features).save_to_disk(
        tmp_path / "ids"
    )
    with pytest.raises(ValueError, match="labels are lists .*pass --multi-label"):
        load_dataset(tmp_path / "ids")
    loaded = load_dataset(tmp_path / "ids", multi_label=True)
    assert loaded.classes == names and loaded.labels.tolist() == [[1, 0, 1], [0, 1, 0], [0, 0, 0]]
    datasets.Dataset.from_dict({"image": photos(2, 0), "labels": [["sofa", "cat"], ["cat"]]}).save_to_disk(
        tmp_path / "strings"
    )
    strings = load_dataset(tmp_path / "strings", multi_label=True)
    assert strings.classes == ["cat", "sofa"] and strings.labels.tolist() == [[1, 1], [1, 0]]
    with pytest.raises(ValueError, match="needs a column of label lists"):
        load_dataset(tmp_path / "ids", multi_label=True, label_column="image")
