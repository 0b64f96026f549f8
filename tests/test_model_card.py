"""The model card (README.md): Hub metadata that parses, what the model is, its labels, snippets that run, the
training record of a bigtransfer run — and a README.md of the user's is never replaced."""

import re

import numpy as np
import pytest
import yaml
from PIL import Image

from bigtransfer import BitBackbone, BitConfig, BitForImageClassification, BitImageProcessor, BitModel
from helpers import TINY
from test_train import folder, run, upstream  # noqa: F401  (the training tests' tiny upstream and images)


def front_matter(card: str) -> dict:
    match = re.match(r"---\n(.*?)\n---\n", card, re.DOTALL)
    assert match, card[:200]
    return yaml.safe_load(match[1])


def python_blocks(card: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", card, re.DOTALL)


def test_a_saved_card_describes_the_model_and_its_labels(tmp_path):
    model = BitForImageClassification(BitConfig(**TINY, id2label={0: "cat", 1: "dog|wolf", 2: "cup"}))
    written = model.save_pretrained(tmp_path, model_card=True)
    card = (tmp_path / "README.md").read_text()
    assert written[-1] == str(tmp_path / "README.md")
    assert front_matter(card) == {
        "library_name": "bigtransfer", "pipeline_tag": "image-classification",
        "tags": ["bit", "big-transfer", "image-classification"],
    }  # fmt: skip
    assert "4 stages of 1-1-2-1 blocks, 8-16-32-64 channels (stem 16, width ×1)" in card
    assert "| 1 | dog&#124;wolf |" in card and "preprocessing was not saved with it" in card
    assert "AutoModelForImageClassification" in card and "bigtransfer.register()" not in card
    assert not (tmp_path / "training.json").exists()


def test_feature_models_are_tagged_for_feature_extraction(tmp_path):
    BitModel(BitConfig(**TINY)).save_pretrained(tmp_path / "model", model_card=True)
    BitBackbone(BitConfig(**TINY)).save_pretrained(tmp_path / "backbone", model_card=True)
    for name, auto_class in (("model", "AutoModel"), ("backbone", "AutoBackbone")):
        card = (tmp_path / name / "README.md").read_text()
        assert front_matter(card)["pipeline_tag"] == "image-feature-extraction"
        assert f"{auto_class}.from_pretrained" in card and "## Labels" not in card


def test_a_subclass_gets_the_card_of_the_class_it_derives_from(tmp_path):
    class MyClassifier(BitForImageClassification):
        pass

    MyClassifier(BitConfig(**TINY)).save_pretrained(tmp_path, model_card=True)
    card = (tmp_path / "README.md").read_text()
    assert front_matter(card)["pipeline_tag"] == "image-classification"
    assert "model = BitForImageClassification.from_pretrained(" in card and "MyClassifier" not in card


def test_a_layout_transformers_builds_differently_gets_the_register_snippet(tmp_path):
    BitForImageClassification(BitConfig(**TINY, width_factor=2)).save_pretrained(tmp_path, model_card=True)
    assert "bigtransfer.register()" in (tmp_path / "README.md").read_text()


def test_a_bundled_model_has_its_license_resolution_and_a_snippet_that_runs(tmp_path):
    model = BitForImageClassification.from_pretrained("bit-tiny-fashion5")
    model.save_pretrained(tmp_path, model_card=True)
    BitImageProcessor.from_pretrained("bit-tiny-fashion5").save_pretrained(tmp_path)
    card = (tmp_path / "README.md").read_text()
    assert front_matter(card)["license"] == "apache-2.0" and "base_model" not in front_matter(card)
    assert "resized to 32×32 px (bilinear), normalised with mean 0.5 and std 0.5" in card
    image = tmp_path / "image.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 30, 3), dtype=np.uint8)).save(image)
    ours = python_blocks(card)[0].replace('"image.jpg"', repr(str(image)))
    namespace = {}
    exec(ours, namespace)  # the card's own snippet
    assert namespace["outputs"].logits.shape == (1, 5)


def test_a_users_readme_is_never_replaced_but_ours_is_rewritten(tmp_path):
    model = BitForImageClassification(BitConfig(**TINY))
    (tmp_path / "README.md").write_text("# My notes\n")
    assert model.save_pretrained(tmp_path, model_card=True)[-1].endswith("config.json")
    assert (tmp_path / "README.md").read_text() == "# My notes\n"
    (tmp_path / "README.md").unlink()
    model.save_pretrained(tmp_path, model_card=True)
    model.reset_classifier(4)
    model.save_pretrained(tmp_path, model_card=True)
    assert "| 3 | LABEL_3 |" in (tmp_path / "README.md").read_text()


def test_a_hub_id_it_was_loaded_from_is_the_base_model(tmp_path):
    model = BitForImageClassification(BitConfig(**TINY))
    model.config._name_or_path = "google/bit-50"
    model._preprocessing = None  # as if google/bit-50 had no preprocessor_config.json: no download here
    model.save_pretrained(tmp_path, model_card=True)
    assert front_matter((tmp_path / "README.md").read_text())["base_model"] == "google/bit-50"


@pytest.fixture
def run_model(upstream, folder, tmp_path):  # noqa: F811
    """model/ of a tiny fine-tuning run, evaluated on its training images."""
    run(upstream, folder, tmp_path / "run", eval_data=str(folder))
    return tmp_path / "run" / "model"


def test_a_fine_tuned_models_card_carries_the_hyperrule_and_results_also_once_reloaded(run_model, upstream, tmp_path):  # noqa: F811
    BitForImageClassification.from_pretrained(run_model).save_pretrained(tmp_path / "copy", model_card=True)
    for card in ((run_model / "README.md").read_text(), (tmp_path / "copy" / "README.md").read_text()):
        assert front_matter(card)["pipeline_tag"] == "image-classification" and "license" not in front_matter(card)
        assert (
            f"Fine-tuned from `{upstream}` with the BiT-HyperRule (`bigtransfer finetune`) on 15 images, 6 steps"
            in card
        )
        for row in ("| steps | 6 |", "| batch size | 8 |", "| learning rate | 0.003 |", "| MixUp α | 0 |",
                    "| learning rate ÷10 at steps | 2, 4, 5 |", "| zero-initialised head | yes |",
                    "| training resize | 24 px |", "| training crop (random) and evaluation size | 20 px |"):  # fmt: skip
            assert row in card
        assert re.search(
            r"On 15 evaluation images:\n\n\| metric \| value \|\n\|---\|---\|\n\| top-1 accuracy \| 0\.\d{4} \|", card
        )
        assert "resized to 20×20 px" in card and "| 2 | c |" in card


def test_a_new_head_is_no_longer_the_runs_model(run_model, tmp_path):
    model = BitForImageClassification.from_pretrained(run_model)
    model.reset_classifier(7)
    model.save_pretrained(tmp_path / "new-head", model_card=True)
    card = (tmp_path / "new-head" / "README.md").read_text()
    assert "Fine-tuned from" not in card and "top-1 accuracy" not in card
    assert "resized to 20×20 px" in card  # its preprocessing went beside it, and the card describes that


def test_a_runs_card_is_titled_as_serve_names_the_run_and_counts_small_models_in_thousands(upstream, folder, tmp_path):  # noqa: F811
    run(upstream, folder, tmp_path / "food")
    card = (tmp_path / "food" / "model" / "README.md").read_text()
    assert "\n# food\n" in card and "\n# model\n" not in card  # `serve runs/food/model` serves it as "food"
    (count,) = re.findall(r"; ([\d.]+ k) parameters\.", card)
    model = BitForImageClassification.from_pretrained(tmp_path / "food" / "model")
    assert float(count.split()[0]) == pytest.approx(model.num_parameters() / 1e3, abs=0.05)
