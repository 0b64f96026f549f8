"""`bigtransfer export --format triton`: a model repository whose config.pbtxt Triton's own schema accepts and
which describes the ONNX graph beside it exactly; labels, parity with eager, int8, names, refusing to overwrite."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import skimage.data
import torch
from google.protobuf import text_format
from PIL import Image
from tritonclient.grpc import model_config_pb2

from bigtransfer import BitConfig, BitForImageClassification, BitImageProcessor
from bigtransfer.checkpoints.naming import default_model_name
from bigtransfer.cli import main as cli
from bigtransfer.deploy.triton import check_model_config
from helpers import TINY, randomize_norms

LABELS = {0: "cat", 1: "cup", 2: "person"}
PHOTOS = {"cat": "chelsea", "cup": "coffee", "person": "astronaut"}
# not square, so that a swapped height and width would show
PROCESSOR = BitImageProcessor(size={"shortest_edge": 72}, crop_size={"height": 64, "width": 48})


def run_cli(*argv: str) -> tuple[int, str]:
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = cli(list(argv))
    return code, stdout.getvalue()


def parsed_config(model_directory: Path) -> model_config_pb2.ModelConfig:
    return text_format.Parse((model_directory / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("models") / "tiny bit"
    torch.manual_seed(0)
    model = randomize_norms(BitForImageClassification(BitConfig(**TINY, id2label=LABELS)).eval())
    model.save_pretrained(directory)
    PROCESSOR.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def repository(saved_model, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("triton") / "repository"
    code, printed = run_cli("export", str(saved_model), str(out), "--format", "triton", "--json")
    assert code == 0
    return out, json.loads(printed)


def test_repository_holds_the_model_config_labels_and_version_1(repository):
    out, _ = repository
    model = out / "tiny_bit"  # named after the model's folder, its space made Triton-safe
    assert [p.name for p in out.iterdir()] == ["tiny_bit"]
    assert {p.name for p in model.iterdir()} == {"config.pbtxt", "labels.txt", "1"}
    assert {p.name for p in (model / "1").iterdir()} == {
        "model.onnx", "config.json", "preprocessor_config.json", "export.json"}  # fmt: skip


def test_config_parses_with_tritons_schema_and_describes_the_model(repository):
    config = parsed_config(repository[0] / "tiny_bit")
    assert config.name == "tiny_bit" and config.platform == "onnxruntime_onnx"
    assert config.max_batch_size == 32
    [pixel_values], [logits] = config.input, config.output
    assert pixel_values.data_type == logits.data_type == model_config_pb2.TYPE_FP32
    assert list(pixel_values.dims) == [3, 64, 48]
    assert list(logits.dims) == [len(LABELS)] and logits.label_filename == "labels.txt"
    assert config.dynamic_batching.max_queue_delay_microseconds == 5000
    assert not config.dynamic_batching.preferred_batch_size
    [instances] = config.instance_group
    assert instances.kind == model_config_pb2.ModelInstanceGroup.KIND_CPU and instances.count == 1


def test_config_names_and_shapes_are_the_onnx_graphs(repository):
    model = repository[0] / "tiny_bit"
    config, graph = parsed_config(model), onnx.load(str(model / "1" / "model.onnx")).graph
    for declared, actual in ((config.input, graph.input), (config.output, graph.output)):
        assert [tensor.name for tensor in declared] == [tensor.name for tensor in actual]
        for tensor, value in zip(declared, actual):
            batch, *dims = value.type.tensor_type.shape.dim
            assert batch.dim_param, "max_batch_size needs a dynamic first axis"
            assert [dim.dim_value for dim in dims] == list(tensor.dims)


def test_labels_file_lists_id2label_in_class_order(repository):
    assert (repository[0] / "tiny_bit" / "labels.txt").read_text().splitlines() == ["cat", "cup", "person"]


def test_served_graph_gives_the_eager_logits_for_a_batch_of_three(repository, saved_model):
    pixel_values = PROCESSOR(
        [Image.fromarray(getattr(skimage.data, name)()).convert("RGB") for name in PHOTOS.values()],
        return_tensors="pt",
    )["pixel_values"]
    session = onnxruntime.InferenceSession(str(repository[0] / "tiny_bit" / "1" / "model.onnx"))
    served = session.run(["logits"], {"pixel_values": pixel_values.numpy()})[0]
    with torch.inference_mode():
        eager = BitForImageClassification.from_pretrained(saved_model)(pixel_values).logits.numpy()
    assert served.shape == (3, 3) and np.abs(served - eager).max() <= 1e-4


def test_json_report_names_the_repository_model_and_check(repository):
    out, report = repository
    assert report["directory"] == str(out) and report["format"] == "triton" and report["precision"] == "float32"
    assert report["input_size"] == [64, 48] and report["max_abs_logit_difference"] <= 1e-4
    assert report["triton"] == {"model_name": "tiny_bit", "version": "1", "max_batch_size": 32,
                                "max_queue_delay_microseconds": 5000, "instance_kind": "KIND_CPU"}  # fmt: skip


def test_an_existing_model_name_is_kept_without_overwrite(repository, saved_model, capsys):
    out, _ = repository
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    assert cli(["export", str(saved_model), str(out), "--format", "triton"]) == 2
    assert capsys.readouterr().err == (
        f"bigtransfer export: The repository {out} already holds a model named 'tiny_bit': pass --overwrite to "
        "replace it, or --name NAME to add this one beside it.\n"
    )
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before


def test_overwrite_replaces_the_model_of_that_name_with_the_options_given(repository, saved_model, tmp_path):
    out = tmp_path / "repository"
    shutil.copytree(repository[0], out)
    (out / "tiny_bit" / "2").mkdir()  # a version the replaced model had: gone with it
    code, printed = run_cli("export", str(saved_model), str(out), "--format", "triton", "--overwrite",
                            "--max-batch-size", "8", "--max-delay-ms", "0.5", "--gpu")  # fmt: skip
    assert code == 0 and [p.name for p in out.iterdir()] == ["tiny_bit"]
    assert {p.name for p in (out / "tiny_bit").iterdir()} == {"config.pbtxt", "labels.txt", "1"}
    config = parsed_config(out / "tiny_bit")
    assert config.name == "tiny_bit" and config.max_batch_size == 8
    assert config.dynamic_batching.max_queue_delay_microseconds == 500
    assert config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
    assert "docker run --rm --gpus all " in printed and f"-v {out.resolve()}:/models" in printed


def test_a_model_is_added_to_an_existing_repository_beside_its_others(repository, saved_model, tmp_path):
    out = tmp_path / "repository"
    shutil.copytree(repository[0], out)
    before = {p.relative_to(out): p.read_bytes() for p in (out / "tiny_bit").rglob("*") if p.is_file()}
    code, _ = run_cli("export", str(saved_model), str(out), "--format", "triton", "--name", "bit.v2")
    assert code == 0 and sorted(p.name for p in out.iterdir()) == ["bit.v2", "tiny_bit"]  # no staging left either
    assert parsed_config(out / "bit.v2").name == "bit.v2" and (out / "bit.v2" / "1" / "model.onnx").is_file()
    assert {p.relative_to(out): p.read_bytes() for p in (out / "tiny_bit").rglob("*") if p.is_file()} == before


@pytest.mark.parametrize("kind", ["a file", "a model folder"])
def test_an_out_that_is_not_a_repository_is_refused_and_kept(kind, saved_model, tmp_path, capsys):
    out = tmp_path / "out"
    if kind == "a file":
        out.write_text("the user's\n")
    else:
        shutil.copytree(saved_model, out)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    assert cli(["export", str(saved_model), str(out), "--format", "triton", "--name", "bit"]) == 2
    assert f"{out} is {kind}, not a model repository: choose another output path." in capsys.readouterr().err
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_the_exporter_parses_its_config_with_tritons_schema_when_tritonclient_is_there(monkeypatch):
    misspelt = 'name: "bit"\nmax_batch_sise: 32\n'
    with pytest.raises(text_format.ParseError, match="max_batch_sise"):
        check_model_config(misspelt)
    monkeypatch.setitem(sys.modules, "tritonclient.grpc", None)  # as if tritonclient were not installed
    check_model_config(misspelt)


@pytest.mark.parametrize("name", ["my model", ".hidden", "bit/50", "", "bit:latest"])
def test_an_unusable_name_is_refused_before_anything_is_written(name, saved_model, tmp_path, capsys):
    assert cli(["export", str(saved_model), str(tmp_path / "out"), "--format", "triton", "--name", name]) == 2
    assert "not a usable Triton model name: use letters, digits" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "model, name",
    [
        ("bit-tiny-fashion5", "bit-tiny-fashion5"),
        ("google/bit-50", "bit-50"),
        ("timm/resnetv2_50x1_bit.goog_in21k", "resnetv2_50x1_bit.goog_in21k"),
        ("runs/my model (v2)/", "my_model_v2_"),
        (".hidden", "hidden"),
    ],
)
def test_default_name_is_the_models_last_path_part_made_safe(model, name):
    assert default_model_name(model) == name


def test_default_name_of_a_local_file_drops_its_suffix_and_of_dot_is_the_folder(tmp_path, monkeypatch):
    (tmp_path / "BiT-M-R50x1.npz").touch()
    assert default_model_name(str(tmp_path / "BiT-M-R50x1.npz")) == "BiT-M-R50x1"
    (tmp_path / "fine tuned").mkdir()
    monkeypatch.chdir(tmp_path / "fine tuned")
    assert default_model_name(".") == "fine_tuned"


@pytest.fixture(scope="module")
def calibration_folder(tmp_path_factory) -> Path:
    """Two photos per class, one of them mirrored, in a folder per label."""
    folder = tmp_path_factory.mktemp("calibration")
    for label, name in PHOTOS.items():
        (folder / label).mkdir()
        photo = Image.fromarray(getattr(skimage.data, name)()).convert("RGB")
        photo.save(folder / label / "photo.png")
        photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(folder / label / "mirrored.png")
    return folder


def test_int8_repository_serves_the_quantized_graph_under_the_same_config(saved_model, calibration_folder, tmp_path):
    out = tmp_path / "repository"
    code, printed = run_cli("export", str(saved_model), str(out), "--format", "triton", "--name", "bit", "--int8",
                            "--calibration", str(calibration_folder), "--calibration-size", "4",
                            "--heldout-size", "2", "--workers", "0", "--json")  # fmt: skip
    assert code == 0
    report = json.loads(printed)
    assert report["precision"] == "int8" and report["int8"]["calibration_images"] == 4
    config, graph = parsed_config(out / "bit"), onnx.load(str(out / "bit" / "1" / "model.onnx")).graph
    assert any(node.op_type == "QuantizeLinear" for node in graph.node)
    assert [t.name for t in config.input] == [t.name for t in graph.input] == ["pixel_values"]
    assert [t.name for t in config.output] == [t.name for t in graph.output] == ["logits"]
    session = onnxruntime.InferenceSession(str(out / "bit" / "1" / "model.onnx"))
    logits = session.run(None, {"pixel_values": np.random.default_rng(0).normal(size=(3, 3, 64, 48)).astype("f4")})
    assert logits[0].shape == (3, 3) and np.isfinite(logits[0]).all()


def test_int8_without_calibration_data_says_what_is_missing(saved_model, tmp_path, capsys):
    assert cli(["export", str(saved_model), str(tmp_path / "out"), "--format", "triton", "--int8"]) == 2
    assert "--int8 needs --data DATA" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_runs_model_folder_is_named_for_its_run(tmp_path):
    (tmp_path / "food" / "model").mkdir(parents=True)
    assert default_model_name(tmp_path / "food" / "model") == "food"  # as `serve` names it too
