"""pipeline(): image classification and feature extraction against transformers' pipelines as the oracle —
same weights, same processor, same options in; same labels, scores and feature shapes out."""

import http.server
import socket
import threading
from functools import partial

import numpy as np
import pytest
import skimage.data
import torch
import transformers
from PIL import Image

import bigtransfer
from bigtransfer import pipeline
from helpers import TINY, randomize_norms

PHOTOS = [Image.fromarray(skimage.data.chelsea()), Image.fromarray(skimage.data.coffee())]
SETTINGS = dict(size={"shortest_edge": 40}, crop_size=32)


def saved_by_transformers(directory, model_class, **config) -> str:
    torch.manual_seed(0)
    model = randomize_norms(model_class(transformers.BitConfig(**{**TINY, **config})))
    model.save_pretrained(directory)
    transformers.BitImageProcessorPil(**SETTINGS).save_pretrained(directory)
    return str(directory)


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory):
    names = {i: name for i, name in enumerate(["cat", "cup", "dog", "car", "tree", "boat", "lamp"])}
    return saved_by_transformers(tmp_path_factory.mktemp("classifier"), transformers.BitForImageClassification,
                                 id2label=names, num_labels=7)  # fmt: skip


def both(directory, task, **options):
    """Our pipeline and transformers', each with its own library's PIL-based processor of the same settings
    (transformers 5's BitImageProcessor is its torchvision one; BitImageProcessorPil is the exact one)."""
    ours = pipeline(task, model=directory, image_processor=bigtransfer.BitImageProcessor(**SETTINGS), **options)
    theirs = transformers.pipeline(task, model=directory, image_processor=transformers.BitImageProcessorPil(**SETTINGS),
                                   device="cpu", **options)  # fmt: skip
    return ours, theirs


def assert_same_ranking(ours, theirs):
    assert [[r["label"] for r in image] for image in ours] == [[r["label"] for r in image] for image in theirs]
    np.testing.assert_allclose([[r["score"] for r in image] for image in ours],
                               [[r["score"] for r in image] for image in theirs], rtol=1e-4, atol=1e-5)  # fmt: skip


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"top_k": None},
        {"top_k": 2},
        {"top_k": 100},
        {"function_to_apply": "sigmoid"},
        {"function_to_apply": "NONE", "top_k": 3},
        {"function_to_apply": "softmax", "top_k": 7},
    ],
)
def test_classification_options_match_transformers(classifier_dir, options):
    ours, theirs = both(classifier_dir, "image-classification")
    assert_same_ranking(ours(PHOTOS, **options), theirs(PHOTOS, **options))


@pytest.mark.parametrize("config", [{"problem_type": "multi_label_classification"}, {"num_labels": 1}])
def test_default_score_function_follows_the_head_as_in_transformers(tmp_path, config):
    directory = saved_by_transformers(tmp_path, transformers.BitForImageClassification, **config)
    ours, theirs = both(directory, "image-classification")
    assert_same_ranking(ours(PHOTOS), theirs(PHOTOS))
    assert all(0 < r["score"] < 1 for image in ours(PHOTOS) for r in image)


def test_options_given_at_construction_are_call_defaults(classifier_dir):
    classify = pipeline("image-classification", model=classifier_dir, top_k=2, function_to_apply="none")
    assert len(classify(PHOTOS[0])) == 2
    assert len(classify(PHOTOS[0], top_k=4)) == 4
    with pytest.raises(TypeError, match="does not take pool: its options are top_k, function_to_apply, timeout"):
        classify(PHOTOS[0], pool=True)
    with pytest.raises(ValueError, match="function_to_apply='softplus': use one of softmax, sigmoid, none"):
        classify(PHOTOS[0], function_to_apply="softplus")


def test_the_image_processor_given_is_the_one_used(classifier_dir):
    larger = transformers.BitImageProcessorPil(size={"shortest_edge": 72}, crop_size=64)
    ours = pipeline("image-classification", model=classifier_dir,
                    image_processor=bigtransfer.BitImageProcessor(size={"shortest_edge": 72}, crop_size=64))  # fmt: skip
    theirs = transformers.pipeline("image-classification", model=classifier_dir, image_processor=larger, device="cpu")
    default = pipeline("image-classification", model=classifier_dir)
    assert_same_ranking(ours(PHOTOS), theirs(PHOTOS))
    assert ours(PHOTOS[0])[0]["score"] != pytest.approx(default(PHOTOS[0])[0]["score"], abs=1e-4)
    with pytest.raises(ValueError, match="Pass the preprocessing once"):
        pipeline("image-classification", model=classifier_dir, image_processor=larger, processor=default.processor)


@pytest.mark.parametrize(
    "options",
    [{}, {"pool": True}, {"pool": True, "return_tensors": True}, {"image_processor_kwargs": {"crop_size": 48}}],
)
def test_feature_extraction_matches_transformers(tmp_path, options):
    directory = saved_by_transformers(tmp_path, transformers.BitModel)
    ours, theirs = both(directory, "image-feature-extraction")
    for images in (PHOTOS[0], PHOTOS):
        expected, got = theirs(images, **options), ours(images, **options)
        if options.get("return_tensors"):
            tensors = [got] if images is PHOTOS[0] else got
            assert all(isinstance(t, torch.Tensor) and t.shape == (1, 64, 1, 1) for t in tensors)
        np.testing.assert_allclose(np.asarray(got, dtype=np.float32), np.asarray(expected, dtype=np.float32),
                                   rtol=1e-4, atol=1e-5)  # fmt: skip


def test_feature_extraction_of_a_classifier_gives_its_base_models_features(classifier_dir):
    from_directory = pipeline("image-feature-extraction", model=classifier_dir)
    model = bigtransfer.BitForImageClassification.from_pretrained(classifier_dir)
    from_object = pipeline("image-feature-extraction", model=model, image_processor=from_directory.processor)
    pooled = from_object(PHOTOS[1], pool=True)
    assert np.asarray(pooled).shape == (1, 64, 1, 1)
    np.testing.assert_allclose(pooled, from_directory(PHOTOS[1], pool=True), atol=1e-6)


@pytest.fixture
def served_photo(tmp_path):
    PHOTOS[0].save(tmp_path / "cat.png")
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield tmp_path / "cat.png", f"http://127.0.0.1:{server.server_address[1]}/cat.png"
    server.shutdown()


def test_urls_are_fetched_and_a_silent_server_times_out(classifier_dir, served_photo):
    path, url = served_photo
    classify = pipeline("image-classification", model=classifier_dir)
    assert classify(url, timeout=10) == classify(str(path))
    silent = socket.create_server(("127.0.0.1", 0))  # accepts connections, never answers
    try:
        with pytest.raises(OSError, match=r"/x\.jpg \(the download took longer than 0\.5 s"):
            classify(f"http://127.0.0.1:{silent.getsockname()[1]}/x.jpg", timeout=0.5)
    finally:
        silent.close()


def test_device_minus_one_is_the_cpu_as_in_transformers(classifier_dir):
    assert pipeline("image-classification", model=classifier_dir, device=-1).device == torch.device("cpu")


@pytest.mark.parametrize("task", ["image-classification", "image-feature-extraction"])
def test_a_model_object_stays_where_it_is_without_a_device(classifier_dir, task, monkeypatch):
    model = bigtransfer.BitForImageClassification.from_pretrained(classifier_dir)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a machine whose default device is a GPU
    run = pipeline(task, model=model, image_processor=bigtransfer.BitImageProcessor(**SETTINGS))
    assert run.device == model.device == torch.device("cpu") and run(PHOTOS[0])
