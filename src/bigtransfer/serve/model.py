"""The model a server runs: anything `predict` takes, with the same decoding and preprocessing as `predict`."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch

from ..checkpoints.naming import default_model_name
from ..deploy.triton import check_model_name
from ..inference.pipelines import class_scores, default_function, load_classifier
from ..processing.decoding import decode_stored_image
from ..processing.exact import BitImageProcessor


class ServedModel:
    """A classifier (torch, or an export directory run by ONNX Runtime or OpenVINO) and its preprocessing.

    `pixels` turns encoded image bytes into model input exactly as `predict` does (the checked decoder, the
    saved preprocessing); `logits` runs a float32 batch. Both run in worker threads of the server.
    """

    def __init__(self, model: str | os.PathLike, device: Any = None, bf16: bool = False, name: str | None = None):
        self.network = load_classifier(model, device, bf16=bf16)
        self.network.eval()
        self.bf16 = bf16
        self.processor = BitImageProcessor.from_pretrained(model)
        self.transform = self.processor.eval_transform()
        self.height, self.width = self.transform.fixed_size()
        config = self.network.config
        self.labels = [config.id2label[i] for i in range(config.num_labels)]
        self.score_function = default_function(config)  # softmax, or sigmoid for a multi-label head
        if name is not None:
            check_model_name(name)
        self.name = name or default_model_name(model)
        self.source = str(model)
        parameter = next(self.network.parameters(), None) if isinstance(self.network, torch.nn.Module) else None
        self.device = (
            parameter.device if parameter is not None else torch.device(getattr(self.network, "device", "cpu"))
        )

    def pixels(self, data: bytes, name: str = "the image") -> np.ndarray:
        """Encoded image bytes → float32 3×H×W model input; ValueError naming the problem for what is not an image
        or breaks the image limits."""
        image = decode_stored_image({"bytes": data}, name)
        geometry = self.transform.decoded_geometry(image)
        return self.transform.normalise_pixels(torch.from_numpy(geometry[None])).numpy()[0]

    @torch.inference_mode()
    def logits(self, pixel_values: np.ndarray) -> np.ndarray:
        batch = torch.from_numpy(np.ascontiguousarray(pixel_values, dtype=np.float32)).to(self.device)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            return self.network(batch).logits.float().cpu().numpy()

    def scores(self, logits: np.ndarray) -> np.ndarray:
        """Class scores as `predict` and `pipeline()` give them (softmax; sigmoid for a multi-label head)."""
        return class_scores(torch.from_numpy(logits), self.network.config).numpy()

    def info(self) -> dict[str, Any]:
        """What the page and /v2/models show: the model, its labels and its preprocessing."""
        return {
            "name": self.name, "source": self.source, "labels": self.labels, "scores": self.score_function,
            "input": {"height": self.height, "width": self.width}, "device": str(self.device),
            "preprocessing": {key: value for key, value in self.processor.to_dict().items() if not key.startswith("_")},
        }  # fmt: skip
