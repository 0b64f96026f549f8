"""The settings objects of inference (`InferenceSettings`, `FewShotProtocol`): checked on construction with one
line naming the value, keyword-only, and 0.x's separate keywords still accepted for one release with a
DeprecationWarning, giving the same numbers."""

import dataclasses
import warnings

import numpy as np
import pytest
from PIL import Image

from bigtransfer.data.datasets import ImageDataset
from bigtransfer.inference.few_shot import FewShotProtocol, fewshot
from bigtransfer.inference.pipelines import pipeline
from bigtransfer.inference.predict import evaluate, pooled_features, predict_logits
from bigtransfer.processing.exact import BitImageProcessor
from bigtransfer.runtime.classifier import load_classifier
from bigtransfer.runtime.settings import InferenceSettings

MODEL = "bit-tiny-fashion5"
IN_PROCESS = InferenceSettings(device="cpu", batch_size=4, workers=0)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Ten small labelled pictures, two per class of the bundled model."""
    folder = tmp_path_factory.mktemp("images")
    classes = list(load_classifier(MODEL, IN_PROCESS).config.id2label.values())
    paths, labels = [], []
    for index in range(10):
        path = folder / f"{index}.png"
        Image.fromarray(np.random.default_rng(index).integers(0, 256, (28, 28, 3), dtype=np.uint8)).save(path)
        paths.append(path)
        labels.append(index % 5)
    return ImageDataset(np.array(labels), classes, "ten pictures", paths=paths)


@pytest.mark.parametrize(
    ("values", "named"),
    [
        ({"batch_size": 0}, "batch_size must be a whole number ≥ 1, got 0"),
        ({"batch_size": 8.0}, "batch_size must be a whole number ≥ 1, got 8.0"),
        ({"workers": -1}, "workers must be a whole number ≥ 0"),
        ({"bf16": "yes"}, "bf16 must be True or False, got 'yes'"),
        ({"compile": 1}, "compile must be True or False, got 1"),
        ({"channels_last": "auto"}, "channels_last must be True or False, got 'auto'"),
        ({"device": "gpu"}, "'gpu' is not a device: use cpu, cuda or cuda:N"),
    ],
)
def test_inference_settings_refuse_a_bad_value_in_one_line(values, named):
    with pytest.raises(ValueError, match=named) as raised:
        InferenceSettings(**values)
    assert "\n" not in str(raised.value)


def test_inference_settings_take_keywords_only_and_stay_as_made():
    with pytest.raises(TypeError):
        InferenceSettings(64)  # type: ignore[misc]  (keyword-only)
    settings = InferenceSettings(device="cuda:1", workers=0)  # a device this machine lacks is fine until it is used
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.workers = 2  # type: ignore[misc]
    assert dataclasses.replace(settings, bf16=True) == InferenceSettings(device="cuda:1", workers=0, bf16=True)


@pytest.mark.parametrize(
    ("values", "named"),
    [
        ({"shots": ()}, "shots must be counts ≥ 1"),
        ({"shots": (0, 5)}, "shots must be counts ≥ 1"),
        ({"shots": 5}, "shots must be counts ≥ 1"),
        ({"seeds": 0}, "seeds must be a whole number ≥ 1"),
        ({"l2_reg": 0.0}, "l2_reg must be a number > 0"),
        ({"l2_reg": float("nan")}, "l2_reg must be a number > 0"),
    ],
)
def test_a_few_shot_protocol_refuses_a_bad_value_in_one_line(values, named):
    with pytest.raises(ValueError, match=named) as raised:
        FewShotProtocol(**values)
    assert "\n" not in str(raised.value)


def test_a_few_shot_protocol_keeps_each_shot_count_once_in_order():
    assert FewShotProtocol(shots=[10, 1, 5, 1]).shots == (1, 5, 10)
    assert FewShotProtocol(shots=np.array([5, 2])).shots == (2, 5)  # the counts NumPy gives work too


def test_predict_logits_pooled_features_and_evaluate_take_the_settings_and_0x_keywords_alike(images):
    model = load_classifier(MODEL, IN_PROCESS)
    processor = BitImageProcessor.from_pretrained(MODEL)
    logits = predict_logits(model, images, processor, IN_PROCESS).rows
    pooled = pooled_features(model, images, processor, IN_PROCESS).rows
    metrics = evaluate(model, images, processor, IN_PROCESS)
    with pytest.warns(DeprecationWarning, match=r"predict_logits\(batch_size=, workers=\) is deprecated: pass "
                      r"settings=InferenceSettings\(batch_size=…, workers=…\)") as caught:  # fmt: skip
        old_logits = predict_logits(model, images, processor, 4, workers=0).rows  # 0.x: batch_size fourth
    assert caught[0].filename == __file__  # the warning points at the caller's line
    with pytest.warns(DeprecationWarning, match="pooled_features"):
        old_pooled = pooled_features(model, images, processor, batch_size=4, workers=0).rows
    with pytest.warns(DeprecationWarning, match="evaluate"):
        old_metrics = evaluate(model, images, processor, batch_size=4, workers=0, bf16=False)
    assert np.array_equal(old_logits, logits) and np.array_equal(old_pooled, pooled) and old_metrics == metrics


def test_keywords_0x_never_took_are_refused_as_python_refuses_them(images):
    model = load_classifier(MODEL, IN_PROCESS)
    with pytest.raises(TypeError, match="evaluate\\(\\) got an unexpected keyword argument 'compile'"):
        evaluate(model, images, BitImageProcessor.from_pretrained(MODEL), compile=True)
    with pytest.raises(TypeError, match="pass InferenceSettings\\(device='cpu'"):
        load_classifier(MODEL, "cpu")  # 0.x's positional device


def test_fewshot_takes_a_protocol_and_settings_and_0x_keywords_alike(images):
    new = fewshot(MODEL, images, images, protocol=FewShotProtocol(shots=(1, 2), seeds=2, l2_reg=8.0),
                  settings=IN_PROCESS, progress=False)  # fmt: skip
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        old = fewshot(MODEL, images, images, shots=[2, 1], seeds=2, l2_reg=8.0, batch_size=4, device="cpu", workers=0,
                      progress=False)  # fmt: skip
    assert [warning.category for warning in caught] == [DeprecationWarning]
    assert "protocol=FewShotProtocol(shots=…, seeds=…, l2_reg=…), settings=InferenceSettings(" in str(caught[0].message)
    new.pop("seconds"), old.pop("seconds")
    assert old == new and list(new["shots"]) == ["1", "2"] and new["seeds"] == 2 and new["l2_reg"] == 8.0


def test_pipeline_refuses_a_batch_size_of_zero_when_made_not_when_called():
    with pytest.raises(ValueError, match="batch_size must be a whole number ≥ 1, got 0"):
        pipeline("image-classification", model=MODEL, device="cpu", batch_size=0)
