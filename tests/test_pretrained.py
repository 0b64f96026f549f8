"""Original .npz checkpoints, timm weights, the named zoo (downloads served locally), labels, conversion."""

import json

import numpy as np
import pytest
import torch
import transformers
from safetensors.torch import save_file

from bigtransfer import BitBackbone, BitConfig, BitForImageClassification, BitImageProcessor, BitModel
from bigtransfer.checkpoints.catalogue import ZOO, find_entry, preactivation_parameter_count
from bigtransfer.cli import main as cli
from helpers import TINY, import_timm, max_abs_diff, randomize_norms, write_bit_npz

R50, R101 = [3, 4, 6, 3], [3, 4, 23, 3]


def timm_from_npz(path, name, num_classes):
    timm = import_timm()
    model = timm.create_model(name, pretrained=False, num_classes=num_classes).eval()
    model.load_pretrained(str(path))  # timm's own loader for the original format
    return model


def logits_of(model, size=64, seed=0):
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        out = model(x)
    return out if isinstance(out, torch.Tensor) else out.logits


@pytest.mark.parametrize(
    "depths, timm_name, num_classes, numbered",
    [
        (R50, "resnetv2_50x1_bit", 10, False),
        (R50, "resnetv2_50x1_bit", 1000, True),
        (R101, "resnetv2_101x1_bit", 1000, False),
    ],
)
def test_npz_logits_equal_timms_loader(tmp_path, depths, timm_name, num_classes, numbered):
    path = write_bit_npz(tmp_path / "model.npz", depths, num_classes=num_classes, numbered_convs=numbered)
    ours = BitForImageClassification.from_pretrained(path)
    assert ours.config.depths == depths and ours.config.num_labels == num_classes
    # timm's loader knows no "standardized_conv2d_<N>" names: it reads the same arrays, plainly named
    plain = write_bit_npz(tmp_path / "plain.npz", depths, num_classes=num_classes) if numbered else path
    assert max_abs_diff(logits_of(ours), logits_of(timm_from_npz(plain, timm_name, num_classes))) < 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("num_classes", [21843])
def test_wide_npz_logits_equal_timms_loader(tmp_path, num_classes):
    path = write_bit_npz(tmp_path / "BiT-M-R50x3.npz", R50, width_factor=3, num_classes=num_classes)
    ours = BitForImageClassification.from_pretrained(path)
    assert ours.config.width_factor == 3 and ours.config.id2label[0] == "organism, being"
    assert (
        max_abs_diff(logits_of(ours, 32), logits_of(timm_from_npz(path, "resnetv2_50x3_bit", num_classes), 32)) < 1e-4
    )


def test_npz_into_base_model_and_backbone(tmp_path):
    path = write_bit_npz(tmp_path / "model.npz", R50, head=False)
    base = BitModel.from_pretrained(path)
    backbone = BitBackbone.from_pretrained(path, out_features=["stage2", "stage4"])
    reference = timm_from_npz(path, "resnetv2_50x1_bit", 0)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert max_abs_diff(base(x).pooler_output.flatten(1), reference(x)) < 1e-4
        assert [m.shape[1] for m in backbone(x).feature_maps] == [512, 2048]


def test_head_sizes_get_dataset_label_names(tmp_path):
    imagenet = BitForImageClassification.from_pretrained(write_bit_npz(tmp_path / "a.npz", R50, num_classes=1000))
    assert imagenet.config.id2label[281] == "tabby, tabby cat"
    cifar = BitForImageClassification.from_pretrained(
        write_bit_npz(tmp_path / "BiT-M-R50x1-CIFAR10.npz", R50, num_classes=10)
    )
    assert cifar.config.id2label[3] == "cat"
    custom = BitForImageClassification.from_pretrained(write_bit_npz(tmp_path / "c.npz", R50, num_classes=7))
    assert custom.config.id2label[6] == "LABEL_6"


def test_corrupt_and_foreign_npz_files_are_explained(tmp_path):
    path = write_bit_npz(tmp_path / "model.npz", R50)
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        BitModel.from_pretrained(path)
    np.savez(tmp_path / "other.npz", weights=np.zeros(3))
    with pytest.raises(ValueError, match="not a BiT checkpoint"):
        BitModel.from_pretrained(tmp_path / "other.npz")


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_timm_state_dict_files_are_converted(tmp_path, suffix):
    timm = import_timm()
    torch.manual_seed(0)
    reference = randomize_norms(timm.create_model("resnetv2_50x1_bit", pretrained=False, num_classes=5)).eval()
    path = tmp_path / f"timm{suffix}"
    state = {k: v.contiguous() for k, v in reference.state_dict().items()}
    save_file(state, path) if suffix == ".safetensors" else torch.save(state, path)
    ours = BitForImageClassification.from_pretrained(path)
    assert max_abs_diff(logits_of(ours), logits_of(reference)) < 1e-4


def test_converted_directory_loads_in_transformers_with_identical_outputs(tmp_path, capsys):
    path = write_bit_npz(tmp_path / "BiT-M-R50x1-ILSVRC2012.npz", R50, num_classes=1000)
    assert cli(["convert", str(path), str(tmp_path / "hf")]) == 0
    theirs = transformers.BitForImageClassification.from_pretrained(tmp_path / "hf").eval()
    assert max_abs_diff(logits_of(theirs), logits_of(BitForImageClassification.from_pretrained(path))) < 1e-5
    assert theirs.config.id2label[281] == "tabby, tabby cat"
    processor = json.loads((tmp_path / "hf" / "preprocessor_config.json").read_text())
    assert processor["size"] == {"shortest_edge": 448} and processor["image_mean"] == [0.5] * 3
    capsys.readouterr()
    assert cli(["convert", str(path), str(tmp_path / "hf")]) == 2  # a folder in use: the one line, exit 2
    assert "is not empty: choose a new directory or pass --overwrite" in capsys.readouterr().err


def test_zoo_entries_carry_architecture_preprocessing_and_labels():
    assert len(ZOO) == 23  # 6 architectures × (BiT-S, BiT-M, BiT-M→ILSVRC-2012) + CIFAR-10 + 4 distillation files
    assert find_entry("bit-m-r50x1.npz").name == "BiT-M-R50x1"
    assert ZOO["BiT-M-R50x1"].num_labels == 21843 and ZOO["BiT-M-R50x1"].parameters == 68_256_659
    assert ZOO["BiT-M-R152x4-ILSVRC2012"].parameters == 936_533_224
    assert ZOO["BiT-M-R50x1-ILSVRC2012"].url.endswith("/bit_models/BiT-M-R50x1-ILSVRC2012.npz")
    assert BitImageProcessor.from_pretrained("BiT-M-R152x4-ILSVRC2012").size == {"shortest_edge": 480}
    assert BitImageProcessor.from_pretrained("BiT-M-R50x1-ILSVRC2012").resample == 2


@pytest.mark.parametrize("depths, width, labels", [(R50, 1, 1000), (R101, 3, 21843), ([3, 8, 36, 3], 2, 10)])
def test_parameter_count_formula_matches_the_model(depths, width, labels):
    with torch.device("meta"):
        model = BitForImageClassification(BitConfig(depths=depths, width_factor=width, num_labels=labels))
    assert preactivation_parameter_count(depths, width, labels) == model.num_parameters()


def test_unknown_zoo_name_suggests_close_ones():
    with pytest.raises(ValueError, match="did you mean BiT-M-R50x3"):
        BitModel.from_pretrained("BiT-M-R50x2")


# -- zoo downloads, from a server on this machine (tests/conftest.py's file_server) ---------------


def test_zoo_name_downloads_once_then_works_offline(file_server, tmp_path, monkeypatch):
    root, url = file_server
    write_bit_npz(root / "BiT-M-R50x1-CIFAR10.npz", R50, num_classes=10)
    monkeypatch.setenv("BIGTRANSFER_BIT_BASE_URL", url)
    monkeypatch.setenv("BIGTRANSFER_CACHE", str(tmp_path / "cache"))
    model = BitForImageClassification.from_pretrained("BiT-M-R50x1-CIFAR10")
    assert (tmp_path / "cache" / "BiT-M-R50x1-CIFAR10.npz").is_file()
    assert model.config.id2label[0] == "airplane"
    monkeypatch.setenv("BIGTRANSFER_OFFLINE", "1")
    again = BitForImageClassification.from_pretrained("BiT-M-R50x1-CIFAR10")
    assert torch.equal(logits_of(model), logits_of(again))


def test_offline_without_cache_names_the_url_and_the_place_to_put_it(tmp_path, monkeypatch):
    monkeypatch.setenv("BIGTRANSFER_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("BIGTRANSFER_OFFLINE", "1")
    with pytest.raises(OSError, match=r"bit_models/BiT-M-R50x1\.npz.*place it at .*cache/BiT-M-R50x1\.npz"):
        BitModel.from_pretrained("BiT-M-R50x1")


def test_tiny_transformers_directory_still_loads(tmp_path):
    BitForImageClassification(BitConfig(**TINY)).save_pretrained(tmp_path)
    assert BitForImageClassification.from_pretrained(tmp_path).config.num_labels == 3


def test_timm_hub_id_is_converted_with_its_preprocessing(tmp_path):
    import threading as _threading

    from helpers import FakeHub, run_python

    timm = import_timm()
    torch.manual_seed(0)
    reference = randomize_norms(timm.create_model("resnetv2_50x1_bit", pretrained=False, num_classes=1000)).eval()
    repo = tmp_path / "repo"
    repo.mkdir()
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, repo / "model.safetensors")
    pretrained_cfg = {"input_size": [3, 448, 448], "crop_pct": 1.0, "interpolation": "bilinear", "mean": [0.5] * 3,
                      "std": [0.5] * 3}  # fmt: skip
    (repo / "config.json").write_text(json.dumps({"architecture": "resnetv2_50x1_bit", "num_classes": 1000,
                                                  "pretrained_cfg": pretrained_cfg}))  # fmt: skip
    server = FakeHub("timm/resnetv2_50x1_bit.goog_in21k_ft_in1k", repo)
    _threading.Thread(target=server.serve_forever, daemon=True).start()
    code = (
        "import torch, json; from bigtransfer import BitForImageClassification as M, BitImageProcessor as P\n"
        "name = 'timm/resnetv2_50x1_bit.goog_in21k_ft_in1k'\n"
        "m = M.from_pretrained(name); p = P.from_pretrained(name)\n"
        "x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))\n"
        "print(json.dumps([m(x).logits.sum().item(), p.size, p.resample, m.config.id2label[281]]))"
    )
    try:
        result = run_python(
            code, HF_ENDPOINT=f"http://127.0.0.1:{server.server_address[1]}", HF_HOME=str(tmp_path / "hf")
        )
    finally:
        server.shutdown()
    assert result.returncode == 0, result.stderr
    total, size, resample, label = json.loads(result.stdout)
    assert abs(total - logits_of(reference).sum().item()) < 1e-3
    assert size == {"shortest_edge": 448} and resample == 2 and label == "tabby, tabby cat"
