"""The model card (README.md) that `save_pretrained(dir, model_card=True)` and `push_to_hub` write: the Hub's
metadata, what the model is, its labels, how to load it with bigtransfer and with transformers, and — for a model
bigtransfer trained — the recipe and results its run recorded beside the weights (training.json)."""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path
from typing import Any

from .._util.files import atomic_write_text, read_json, write_json
from .._util.text import parameter_count
from ..checkpoints.catalogue import BUNDLED_MODELS, architecture_of, find_entry
from ..checkpoints.hub import GENERATED_CARD_MARK, MODEL_CARD_NAME, PROCESSOR_CONFIG_NAME, is_generated_card
from ..checkpoints.naming import default_model_name
from ..processing.record import saved_settings, timm_pretrained_cfg
from .timm_surface import stage_feature_info

logger = logging.getLogger(__name__)

TRAINING_RECORD = "training.json"  # what a bigtransfer run trained with and measured, written beside its model
LABELS_SHOWN = 100  # a longer label list shows its first 20
TASKS = {  # class → (pipeline tag, transformers Auto class, what the snippet prints)
    "BitForImageClassification": (
        "image-classification", "AutoModelForImageClassification",
        "print(model.config.id2label[int(outputs.logits.argmax(-1))])",
    ),
    "BitModel": ("image-feature-extraction", "AutoModel", "features = outputs.pooler_output.flatten(1)"),
    "BitBackbone": ("image-feature-extraction", "AutoBackbone", "feature_maps = outputs.feature_maps"),
}  # fmt: skip


class ModelCardMixin:
    """The card of a BiT model, written into the folder it is saved or pushed from."""

    def _write_model_card(self, directory: Path, repo_id: str | None) -> list[str]:
        """README.md in `directory`, unless the one there is the user's (it lacks our mark): that one is kept.
        The processor settings the model came with go beside it too, when it knows them and the folder has none:
        a folder or Hub repo without them is refused by `predict` and `pipeline()`, and the card's snippet and
        input size describe what the folder holds."""
        processor_file, written = Path(directory) / PROCESSOR_CONFIG_NAME, []
        if not processor_file.exists() and self._preprocessing is not None:
            write_json(processor_file, self._preprocessing)
            written.append(str(processor_file))
        path = Path(directory) / MODEL_CARD_NAME
        if path.is_file() and not is_generated_card(path.read_text(encoding="utf-8", errors="replace")):
            logger.info("%s was not written by bigtransfer: kept as it is, no model card written.", path)
            return written
        atomic_write_text(path, model_card(self, Path(directory), repo_id))
        return [*written, str(path)]


def _bigtransfer_class(model: Any) -> str:
    """The name of the bigtransfer class `model` is or derives from: a user's subclass is tagged, and loaded in the
    card's snippet, as that class (which reads its weights), since `bigtransfer` cannot import the subclass."""
    return next(cls.__name__ for cls in type(model).__mro__ if cls.__name__ in TASKS)


def model_card(model: Any, directory: Path, repo_id: str | None) -> str:
    """The card's text: YAML front matter, then the body."""
    from huggingface_hub import ModelCardData

    source = str(getattr(model.config, "_name_or_path", ""))
    training = read_training_record(directory, source, model.config.id2label)
    base = training.get("base_model") if training else source
    tag, auto_class, _ = TASKS[_bigtransfer_class(model)]
    metadata = ModelCardData(
        library_name="bigtransfer", pipeline_tag=tag, tags=["bit", "big-transfer", tag],
        base_model=base if base and base != repo_id and _is_hub_id(base) else None,
        license=None if training else _known_license(source),
    )  # fmt: skip
    name = repo_id or str(directory)
    sections = [
        f"# {repo_id.split('/')[-1] if repo_id else default_model_name(directory)}",  # as `serve` names it
        _summary(model, directory),
        *_labels(model),
        *_usage(model, name, auto_class),
        *(_training(training) if training else []),
    ]
    mark = f"{GENERATED_CARD_MARK}: written by bigtransfer and rewritten on every save; delete this line to keep your edits -->"
    return f"---\n{metadata.to_yaml()}\n---\n{mark}\n\n" + "\n\n".join(sections) + "\n"


def read_training_record(directory: Path, source: str, id2label: dict[int, str]) -> dict[str, Any] | None:
    """What a bigtransfer run recorded beside the model: in the folder being written, else in the one the model
    was loaded from — unless the model's labels have changed since (a new head: no longer the run's model)."""
    if (directory / TRAINING_RECORD).is_file():
        return read_json(directory / TRAINING_RECORD)
    loaded_from = Path(source) if source else None
    if loaded_from is None or not (loaded_from / TRAINING_RECORD).is_file():
        return None
    saved_labels = (
        read_json(loaded_from / "config.json").get("id2label", {}) if (loaded_from / "config.json").is_file() else {}
    )
    if {int(k): v for k, v in saved_labels.items()} != id2label:
        return None
    return read_json(loaded_from / TRAINING_RECORD)


def _is_hub_id(name: str) -> bool:
    """A Hub repo id (org/name) rather than a local path or a catalogue name: only those are valid `base_model`s."""
    return re.fullmatch(r"[\w.-]+/[\w.-]+", name) is not None and not Path(name).expanduser().exists()


def _known_license(source: str) -> str | None:
    """Apache-2.0 for weights loaded unchanged from Google's BiT releases (the zoo, timm's BiT) or the bundled
    models; unknown otherwise."""
    google_release = find_entry(source) is not None or re.fullmatch(r"timm/resnetv2_\w+_bit[\w.-]*", source)
    return "apache-2.0" if google_release or source in BUNDLED_MODELS else None


def _summary(model: Any, directory: Path) -> str:
    config, bit = model.config, getattr(model, "bit", model)
    stages = stage_feature_info(bit)
    name = architecture_of(config)
    layout = "ResNet-v2" if config.layer_type == "preactivation" else "ResNet-v1.5 bottleneck (ViT-hybrid layout)"
    what = (
        f"A BiT (Big Transfer, [arXiv 1912.11370](https://arxiv.org/abs/1912.11370)) {layout}"
        + (f", {name}" if name else "")
        + f", made with [bigtransfer](https://pypi.org/project/bigtransfer/): {len(config.depths)} stages of "
        f"{'-'.join(map(str, config.depths))} blocks, {'-'.join(str(c) for c in stages.channels()[1:])} channels "
        f"(stem {stages.channels(0)}, width ×{config.width_factor}), GroupNorm with {config.num_groups} groups and "
        f"weight-standardised convolutions; {parameter_count(model.num_parameters())} parameters."
    )
    return f"{what}\n\n{_preprocessing(directory, model.config.num_channels)}"


def _preprocessing(directory: Path, channels: int) -> str:
    """The input the model expects: the processor settings in the folder, the only ones its readers will find."""
    settings = saved_settings(directory)
    if settings is None:
        return (
            "Its preprocessing was not saved with it: save the processor it was trained with beside it "
            "(`processor.save_pretrained(DIR)` or `processor.push_to_hub(REPO)`)."
        )
    cfg = timm_pretrained_cfg(settings, channels)
    _, height, width = cfg["input_size"]
    if cfg["crop_mode"] == "squash":
        resize = f"resized to {height}×{width} px"
    else:
        edge = math.floor(height / cfg["crop_pct"])  # as timm's transform resizes
        resize = f"resized to {edge} px on the shorter side and center-cropped to {height}×{width}"
    return (
        f"Input: RGB images {resize} ({cfg['interpolation']}), normalised with mean "
        f"{_numbers(cfg['mean'])} and std {_numbers(cfg['std'])}."
    )


def _numbers(values: tuple[float, ...]) -> str:
    return f"{values[0]:g}" if len(set(values)) == 1 else "(" + ", ".join(f"{v:.4g}" for v in values) + ")"


def _labels(model: Any) -> list[str]:
    """The classes of the head, if it has one (feature models' configs may still carry labels)."""
    config = model.config
    if not model.num_classes:
        return []
    shown = range(config.num_labels if config.num_labels <= LABELS_SHOWN else 20)
    rows = [f"| {i} | {str(config.id2label[i]).replace('|', '&#124;')} |" for i in shown]
    more = config.num_labels - len(shown)
    tail = [f"\n… and {more:,} more: `config.json`'s `id2label` lists them all."] if more else []
    return ["## Labels", "\n".join(["| id | label |", "|---:|---|", *rows]) + "".join(tail)]


def _transformers_builds_it(config: Any) -> bool:
    """Whether transformers' own BiT computes this configuration as bigtransfer does (README: "Differences from
    transformers"): it mis-sizes widened models and hybrid heads, drops dilation, and crashes on VALID padding."""
    return (
        config.width_factor == 1
        and config.global_padding != "VALID"
        and (config.layer_type == "bottleneck" or config.output_stride == 32)
        and len(config.hidden_sizes) == len(config.depths)
    )


def _usage(model: Any, name: str, auto_class: str) -> list[str]:
    cls = _bigtransfer_class(model)
    last = TASKS[cls][2]
    ours = f"""```python
import torch
from bigtransfer import {cls}, BitImageProcessor

model = {cls}.from_pretrained("{name}")
processor = BitImageProcessor.from_pretrained("{name}")
inputs = processor("image.jpg", return_tensors="pt")  # paths, PIL images, arrays or tensors, or lists of them
with torch.inference_mode():
    outputs = model(**inputs)
{last}
```"""
    compatible = _transformers_builds_it(model.config)
    register = (
        ""
        if compatible
        else "import bigtransfer\n\nbigtransfer.register()  # the Auto classes load bigtransfer's BiT\n"
    )
    theirs = f"""```python
import torch
from PIL import Image
from transformers import AutoImageProcessor, {auto_class}
{register}
processor = AutoImageProcessor.from_pretrained("{name}")
model = {auto_class}.from_pretrained("{name}")
inputs = processor(Image.open("image.jpg").convert("RGB"), return_tensors="pt")
with torch.inference_mode():
    outputs = model(**inputs)
{last}
```"""
    why = (
        "The checkpoint is in transformers' format and loads in its BiT classes with the same outputs:"
        if compatible
        else "transformers' own BiT computes this configuration differently (width factor, dilation or padding), "
        "so let bigtransfer serve its Auto classes:"
    )
    return [
        "## How to use",
        "With bigtransfer (installed from its repository: `pip install -e .` in a clone):",
        ours,
        f"With transformers. {why}",
        theirs,
    ]


SETTINGS = (  # (key of the rule or schedule, row name, format)
    ("preset", "HyperRule preset", "{}"),
    ("steps", "steps", "{:,}"),
    ("warmup_steps", "linear warm-up", "{:,} steps"),
    ("decay_steps", "learning rate ÷10 at steps", "{}"),
    ("base_lr", "learning rate", "{:g}"),
    ("batch_size", "batch size", "{:,}"),
    ("momentum", "SGD momentum", "{:g}"),
    ("weight_decay", "weight decay", "{:g}"),
    ("mixup_alpha", "MixUp α", "{:g}"),
    ("resize", "training resize", "{} px"),
    ("crop", "training crop (random) and evaluation size", "{} px"),
    ("zero_init_head", "zero-initialised head", "{}"),
)


def _shown(value: Any) -> Any:
    if isinstance(value, bool):
        return "yes" if value else "no"
    return ", ".join(map(str, value)) if isinstance(value, list) else value


EVALUATION_ROWS = (  # the training record's held-out figures, in the card's order
    ("top1", "top-1 accuracy"),
    ("top5", "top-5 accuracy"),
    ("map", "mAP (macro average precision)"),
    ("micro_ap", "micro average precision"),
    ("macro_f1", "macro F1 at threshold 0.5"),
    ("micro_f1", "micro F1 at threshold 0.5"),
)


def _loss_rows(record: dict[str, Any]) -> list[str]:
    """The opt-in loss options a run used (none in BiT's recipes): a reader of the card must not take such weights
    for a plain HyperRule fine-tune."""
    rows = [f"| label smoothing | {record['label_smoothing']:g} |"] if record.get("label_smoothing") else []
    weights = record.get("class_weights")
    if weights:
        shown = ", ".join(f"{name} {weight:.3g}" for name, weight in list(weights.items())[:5])
        rows.append(f"| class weights | {shown}{f', … ({len(weights)} classes)' if len(weights) > 5 else ''} |")
    return rows


def _training(record: dict[str, Any]) -> list[str]:
    fine_tuned = "rule" in record
    recipe = record.get("rule") or record.get("schedule") or {}
    base = f" from `{record['base_model']}`" if record.get("base_model") else ""
    how = (
        f"Fine-tuned{base} with the BiT-HyperRule (`bigtransfer finetune`)"
        if fine_tuned
        else "Pre-trained from random weights with BiT's upstream recipe (`bigtransfer pretrain`)"
    )
    images = f" on {record['train_examples']:,} images" if "train_examples" in record else ""
    took = f", {record['steps']:,} steps in {record['seconds']:g} s" if {"steps", "seconds"} <= set(record) else ""
    best = record.get("best")
    if best and best["step"] != record.get("steps"):  # --keep-best kept earlier weights than the last
        metric = dict(EVALUATION_ROWS)[best["metric"]]
        took += f"; these are the weights after step {best['step']:,}, of the best held-out {metric}"
    rows = [f"| {label} | {form.format(_shown(recipe[key]))} |" for key, label, form in SETTINGS if key in recipe]
    rows += _loss_rows(record)
    sections = ["## Training", f"{how}{images}{took}.", "\n".join(["| setting | value |", "|---|---|", *rows])]
    evaluation = record.get("eval")
    if evaluation:
        results = [f"| {name} | {evaluation[key]:.4f} |" for key, name in EVALUATION_ROWS if key in evaluation]
        sections += [
            "## Results",
            f"On {evaluation['examples']:,} evaluation images:\n\n"
            + "\n".join(["| metric | value |", "|---|---|", *results]),
        ]
    return sections
