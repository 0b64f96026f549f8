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
