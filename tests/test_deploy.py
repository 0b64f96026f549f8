"""Export (ONNX, OpenVINO, torch.export, int8) and running export directories: parity with eager, checks, errors."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image

from bigtransfer import BitConfig, BitForImageClassification, BitImageProcessor, pipeline
from bigtransfer.cli import main as cli
from bigtransfer.deploy.export import ExportCheckError, export
from bigtransfer.deploy.fold import fold_weight_standardization
from bigtransfer.models.layers import WeightStandardizedConv2d
from bigtransfer.runtime.exported import ExportedClassifier
from helpers import HYBRID, TINY, randomize_norms

PHOTOS = ["chelsea", "coffee", "astronaut"]
LAYOUTS = {
    "default": TINY,
    "hybrid_same": {**TINY, **HYBRID, "depths": [1, 1, 1], "out_features": None, "num_groups": 4},
    "width_factor_2": {**TINY, "width_factor": 2, "num_groups": 4},
    "dilated": {**TINY, "output_stride": 8},
}
BUNDLED = Path(__import__("bigtransfer").__file__).parent / "bundled" / "bit-tiny-fashion5"
FASHION_TEST = "/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz"


def tiny_classifier(layout: str) -> BitForImageClassification:
    torch.manual_seed(0)
    return randomize_norms(BitForImageClassification(BitConfig(**LAYOUTS[layout])).eval())


def photos(processor: BitImageProcessor, count: int) -> torch.Tensor:
    images = [getattr(skimage.data, name)() for name in PHOTOS[:count]]
    return processor([Image.fromarray(image).convert("RGB") for image in images], return_tensors="pt")["pixel_values"]


PROCESSOR = BitImageProcessor(size={"shortest_edge": 72}, crop_size={"height": 64, "width": 64})


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("format", ["onnx", "openvino", "pt2"])
def test_export_matches_eager_on_real_photos(layout, format, tmp_path):
    model = tiny_classifier(layout)
    report = export(model, PROCESSOR, tmp_path / "out", format=format)
    assert report.max_abs_logit_difference <= 1e-4
    exported = ExportedClassifier(tmp_path / "out")
    for batch in (1, 3):
        pixel_values = photos(PROCESSOR, batch)
        with torch.inference_mode():
            expected = model(pixel_values).logits
        assert (exported(pixel_values).logits - expected).abs().max() <= 1e-4


def test_export_directory_is_self_contained_and_takes_any_batch(tmp_path):
    import onnx

    model = tiny_classifier("default")
    export(model, PROCESSOR, tmp_path / "out")
    assert {p.name for p in (tmp_path / "out").iterdir()} == {
        "model.onnx", "config.json", "preprocessor_config.json", "export.json"}  # fmt: skip
    graph = onnx.load(str(tmp_path / "out" / "model.onnx")).graph
    convolutions = [node for node in graph.node if node.op_type == "Conv"]
    assert len(convolutions) == sum(isinstance(m, WeightStandardizedConv2d) for m in model.modules())
    stored = {tensor.name for tensor in graph.initializer}
    assert all(node.input[1] in stored for node in convolutions), "kernels must be stored standardised"
    info = json.loads((tmp_path / "out" / "export.json").read_text())
    assert info["input_size"] == [64, 64] and info["precision"] == "float32"
    pixel_values = torch.randn(5, 3, 64, 64)
    with torch.inference_mode():
        assert (
            ExportedClassifier(tmp_path / "out")(pixel_values).logits - model(pixel_values).logits
        ).abs().max() < 1e-4


def test_folding_standardises_once_and_leaves_the_original_alone(tmp_path):
    model = tiny_classifier("hybrid_same")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    folded = fold_weight_standardization(model)
    assert not any(isinstance(m, WeightStandardizedConv2d) for m in folded.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    pixel_values = photos(PROCESSOR, 2)
    with torch.inference_mode():
        assert (folded(pixel_values).logits - model(pixel_values).logits).abs().max() < 1e-5


def test_failed_check_writes_nothing_and_existing_output_is_kept(tmp_path):
    model = tiny_classifier("default")
    with pytest.raises(ExportCheckError, match="nothing was written"):
        export(model, PROCESSOR, tmp_path / "out", tolerance=0.0)
    assert not (tmp_path / "out").exists() and list(tmp_path.iterdir()) == []
    export(model, PROCESSOR, tmp_path / "out", format="pt2")
    with pytest.raises(FileExistsError, match="--overwrite"):
        export(model, PROCESSOR, tmp_path / "out")
    assert (tmp_path / "out" / "model.pt2").exists()
    export(model, PROCESSOR, tmp_path / "out", overwrite=True)
    assert {p.name for p in tmp_path.iterdir()} == {"out"} and not (tmp_path / "out" / "model.pt2").exists()


def test_export_rejects_the_wrong_input_size_and_loading_as_weights(tmp_path):
    export(tiny_classifier("default"), PROCESSOR, tmp_path / "out")
    with pytest.raises(ValueError, match=r"takes 64×64 images.*preprocessor_config.json"):
        ExportedClassifier(tmp_path / "out")(torch.zeros(1, 3, 96, 96))
    with pytest.raises(FileNotFoundError, match="export directory.*run it with predict"):
        BitForImageClassification.from_pretrained(tmp_path / "out")


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    for name in PHOTOS + ["rocket", "camera"]:
        Image.fromarray(getattr(skimage.data, name)()).save(folder / f"{name}.png")
    return folder


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    directory = tmp_path_factory.mktemp("model")
    model = tiny_classifier("default")
    model.config.id2label = {0: "cat", 1: "cup", 2: "person"}
    model.save_pretrained(directory)
    PROCESSOR.save_pretrained(directory)
    return directory


def test_cli_export_then_predict_gives_the_original_top_k(saved_model, photo_folder, tmp_path, capsys):
    out = tmp_path / "exported"
    assert cli(["export", str(saved_model), str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["max_abs_logit_difference"] <= 1e-4
    results = {}
    for model in (saved_model, out):
        assert (
            cli(["predict", str(photo_folder), "--model", str(model), "--top-k", "3", "--json", "--workers", "0"]) == 0
        )
        results[model] = json.loads(capsys.readouterr().out)["results"]
    original, exported = results[saved_model], results[out]
    assert [r["file"] for r in original] == [r["file"] for r in exported] and len(original) == 5
    for a, b in zip(original, exported):
        assert [p["label"] for p in a["predictions"]] == [p["label"] for p in b["predictions"]]
        assert np.allclose([p["score"] for p in a["predictions"]], [p["score"] for p in b["predictions"]], atol=1e-5)


def test_pipeline_runs_an_export_directory(saved_model, photo_folder, tmp_path):
    export(BitForImageClassification.from_pretrained(saved_model), PROCESSOR, tmp_path / "out")
    files = sorted(str(p) for p in photo_folder.iterdir())
    original = pipeline("image-classification", model=saved_model)(files, top_k=2)
    exported = pipeline("image-classification", model=tmp_path / "out")(files, top_k=2)
    assert [[p["label"] for p in r] for r in original] == [[p["label"] for p in r] for r in exported]
    with pytest.raises(ValueError, match="export directory.*compile"):
        pipeline("image-classification", model=tmp_path / "out", compile=True)


def test_missing_onnxruntime_says_how_to_install_it(saved_model, photo_folder, tmp_path, capsys, monkeypatch):
    export(BitForImageClassification.from_pretrained(saved_model), PROCESSOR, tmp_path / "out")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    assert cli(["predict", str(photo_folder), "--model", str(tmp_path / "out")]) == 2
    assert "pip install -e '.[onnx]'" in capsys.readouterr().err


def test_int8_needs_calibration_data(saved_model, tmp_path, capsys):
    assert cli(["export", str(saved_model), str(tmp_path / "out"), "--int8"]) == 2
    assert "--int8 needs --data DATA" in capsys.readouterr().err
    assert cli(["export", str(saved_model), str(tmp_path / "out"), "--format", "pt2", "--int8", "--calibration",
                FASHION_TEST]) == 2  # fmt: skip
    assert "use --format onnx or openvino with --int8" in capsys.readouterr().err


def test_int8_bundled_model_keeps_fashion_mnist_top1_within_one_point(tmp_path, capsys):
    classes = "T-shirt/top,Trouser,Pullover,Dress,Coat"  # the five the bundled model was trained on
    out = tmp_path / "int8"
    assert cli(["export", str(BUNDLED), str(out), "--int8", "--calibration", FASHION_TEST, "--classes", classes,
                "--heldout-size", "2000", "--json"]) == 0  # fmt: skip
    report = json.loads(capsys.readouterr().out)["int8"]
    assert report["calibration_images"] == 128 and report["heldout_images"] == 2000
    assert abs(report["float32_top1"] - report["int8_top1"]) <= 0.01 and report["top1_agreement"] >= 0.97
    scores = {}
    for model in (BUNDLED, out):
        assert cli(["evaluate", "--model", str(model), "--data", FASHION_TEST, "--classes", classes, "--json"]) == 0
        scores[model] = json.loads(capsys.readouterr().out)["top1"]
    assert scores[BUNDLED] > 0.6 and abs(scores[BUNDLED] - scores[out]) <= 0.01
    assert json.loads((out / "export.json").read_text())["precision"] == "int8"


def test_export_traces_and_checks_with_inputs_on_the_models_device():
    from bigtransfer.deploy.export import model_sample, sample_pixel_values

    model = tiny_classifier("default")
    assert torch.equal(model_sample(model, PROCESSOR, 2), sample_pixel_values(PROCESSOR, 2))
    assert model_sample(model.to("meta"), PROCESSOR, 2).device.type == "meta"  # as a CUDA model's are on CUDA


def test_int8_accuracy_on_multi_label_data_counts_a_top1_among_the_image_classes(tmp_path):
    from bigtransfer.data.sources import load_dataset
    from bigtransfer.deploy.quantize import Calibration
    from test_multi_label import SCENES, write_images

    write_images(tmp_path / "images", SCENES)
    (tmp_path / "train.csv").write_text("path,label\n" + "".join(f"images/{n},{c}\n" for n, c in SCENES.items()))
    dataset = load_dataset(tmp_path / "train.csv", multi_label=True)  # classes bird, cat, dog
    processor = BitImageProcessor(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16})
    calibration = Calibration(dataset, processor, size=2, heldout=10, workers=0)
    config = BitConfig(**TINY, id2label={0: "cat", 1: "dog", 2: "bird"})

    def always_cat(pixel_values):
        return np.tile(np.float32([1, 0, 0]), (len(pixel_values), 1))

    report = calibration.agreement(always_cat, always_cat, config)
    with_a_cat = dataset.labels[calibration.heldout_indices, dataset.classes.index("cat")].mean()
    assert report["heldout_images"] == 10 and report["top1_agreement"] == 1.0
    assert report["float32_top1"] == report["int8_top1"] == pytest.approx(with_a_cat)


def test_large_models_keep_weights_beside_the_graph_and_still_quantize(monkeypatch, tmp_path):
    import bigtransfer.deploy.export as export_module
    from bigtransfer.data.sources import load_dataset
    from bigtransfer.deploy.quantize import Calibration

    monkeypatch.setattr(export_module, "EXTERNAL_DATA_BYTES", 0)  # as if it were beyond protobuf's 2 GiB
    model = BitForImageClassification.from_pretrained(BUNDLED)
    processor = BitImageProcessor.from_pretrained(BUNDLED)
    report = export(model, processor, tmp_path / "float32")
    assert (tmp_path / "float32" / "model.onnx.data").stat().st_size > 4 * sum(
        p.numel() for p in model.parameters()
    ) * 0.9
    assert report.max_abs_logit_difference <= 1e-4
    fashion = load_dataset(FASHION_TEST).select_classes(["T-shirt/top", "Trouser"])
    report = export(model, processor, tmp_path / "int8", int8=Calibration(fashion, processor, size=16, heldout=64))
    assert report.int8["top1_agreement"] >= 0.9
    pixel_values = processor([np.asarray(fashion.load(i)) for i in range(3)], return_tensors="pt")["pixel_values"]
    assert ExportedClassifier(tmp_path / "int8")(pixel_values).logits.shape == (3, 5)


@pytest.mark.slow
def test_predict_compiled_and_bf16_keep_the_eager_labels(saved_model, photo_folder, capsys):
    labels = {}
    for options in ([], ["--compile"], ["--bf16"]):
        command = [
            "predict",
            str(photo_folder),
            "--model",
            str(saved_model),
            "--top-k",
            "1",
            "--json",
            "--workers",
            "0",
        ]
        assert cli(command + options) == 0
        results = json.loads(capsys.readouterr().out)["results"]
        labels[tuple(options)] = [r["predictions"][0]["label"] for r in results]
    assert labels[("--compile",)] == labels[()]
    assert sum(a == b for a, b in zip(labels[("--bf16",)], labels[()])) >= 4


def test_pipeline_bf16_autocasts_and_keeps_the_labels(saved_model, photo_folder, monkeypatch):
    dtypes = []
    files = sorted(str(p) for p in photo_folder.iterdir())
    classify = pipeline("image-classification", model=saved_model, bf16=True, batch_size=4)
    convolution = classify.model.bit.embedder.convolution
    monkeypatch.setattr(
        convolution, "forward", lambda x, forward=convolution.forward: dtypes.append(forward(x).dtype) or forward(x)
    )
    bf16 = classify(files, top_k=1)
    float32 = pipeline("image-classification", model=saved_model)(files, top_k=1)
    assert dtypes == [torch.bfloat16, torch.bfloat16]  # 4 images, then 1
    assert sum(a[0]["label"] == b[0]["label"] for a, b in zip(bf16, float32)) >= 4


def test_export_leaves_the_callers_model_as_it_was(tmp_path):
    model = tiny_classifier("default").to(torch.bfloat16).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = export(model, PROCESSOR, tmp_path / "out", format="pt2", tolerance=1.0)
    assert model.training and next(model.parameters()).dtype == torch.bfloat16
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert report.precision == "float32" and report.seconds > 0
