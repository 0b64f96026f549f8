"""The model a server runs: anything `predict` takes, with the same decoding and preprocessing as `predict`."""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from PIL import Image

from .._util.limits import EnvLimit
from ..checkpoints.naming import check_model_name, default_model_name
from ..data.device import to_device, use_channels_last
from ..inference.pipelines import class_scores, default_function
from ..processing.decoding import check_image_size, decoded, decoding_bytes, open_checked, pil_to_rgb
from ..processing.draft import draft_for
from ..processing.exact import BitImageProcessor
from ..runtime.classifier import load_classifier
from ..runtime.settings import InferenceSettings

SERVE_PIXELS_ENV = "BIGTRANSFER_SERVE_MAX_IMAGE_PIXELS"
# An upload's pixels as decoded (a JPEG at its draft scale, so a photo of any size the library reads passes;
# a PNG or WebP as large as it declares): 16.8 megapixels is a 12-megapixel photo in any format, and 67 MB of
# decoded pixels, where the library's 89.5-megapixel limit let one 97-KB PNG take 850 MB of a server.
SERVE_MAX_IMAGE_PIXELS = EnvLimit(SERVE_PIXELS_ENV, 4096 * 4096)


class ServedModel:
    """A classifier (torch, or an export directory run by ONNX Runtime or OpenVINO) and its preprocessing.

    The input rule of `predict`: `pixels` decodes encoded image bytes and resizes and crops them to the uint8
    H×W×3 pixels `predict`'s loading workers hand over (the checked decoder, the saved preprocessing), but
    decoding no more than the model needs: JPEGs much larger than the resize at a reduced scale (`draft_for`),
    and at most `SERVE_MAX_IMAGE_PIXELS`; `decoding_bytes` says beforehand what decoding will take. `logits`
    takes a batch of those pixels to the model's device as they are (a quarter of float32's bytes) and
    normalises it there with `predict`'s `EvalTransform.normalise_pixels`. Both run in worker threads.
    """

    def __init__(self, model: str | os.PathLike, device: Any = None, bf16: bool = False, name: str | None = None):
        self.network = load_classifier(model, InferenceSettings(device=device, bf16=bf16, spin_wait=False))
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
        self.channels_last = use_channels_last(None, self.device)  # the layout `predict` gives the model

    @contextlib.contextmanager
    def _header(self, data: bytes, name: str) -> Iterator[Image.Image]:
        """An upload opened for its header, set to decode no larger than the resize needs, within the server's
        pixel limit: nothing decoded yet."""
        with open_checked(io.BytesIO(data), name) as opened:
            if self.transform.do_resize:
                draft_for(opened, self.transform.size, name)
            check_image_size(opened.width, opened.height, name, SERVE_MAX_IMAGE_PIXELS(), SERVE_PIXELS_ENV)
            yield opened

    def decoding_bytes(self, data: bytes, name: str = "the image") -> int:
        """The most memory `pixels` will hold decoding `data` (`decoding.decoding_bytes`, at the scale `pixels`
        decodes it), from its header alone: for admitting requests by memory. ValueError, as from `pixels`, for
        what `pixels` would refuse."""
        with self._header(data, name) as opened:
            return decoding_bytes(opened)

    def pixels(self, data: bytes, name: str = "the image") -> np.ndarray:
        """Encoded image bytes → uint8 H×W×3 pixels, resized and cropped (`EvalTransform.decoded_geometry`);
        ValueError naming the problem for what is not an image or breaks the image limits."""
        with self._header(data, name) as opened:
            image = pil_to_rgb(decoded(opened, name))
        return self.transform.decoded_geometry(image)

    @torch.inference_mode()
    def logits(self, batch: np.ndarray) -> torch.Tensor:
        """float32 logits, on the CPU, of a batch of `pixels` (uint8 N×H×W×3: normalised on the model's device, as
        `predict` does), or of float32 N×3×H×W model input (KServe's pixel_values: taken as they are)."""
        inputs = to_device(torch.from_numpy(batch), self.device)
        if inputs.dtype == torch.uint8:
            inputs = self.transform.normalise_pixels(inputs, self.channels_last)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            return self.network(inputs).logits.float().cpu()

    def scores(self, logits: torch.Tensor) -> torch.Tensor:
        """Class scores as `predict` and `pipeline()` give them (softmax; sigmoid for a multi-label head)."""
        return class_scores(logits, self.network.config)

    def info(self) -> dict[str, Any]:
        """What the page and /v2/models show: the model, its labels and its preprocessing."""
        return {
            "name": self.name, "source": self.source, "labels": self.labels, "scores": self.score_function,
            "input": {"height": self.height, "width": self.width}, "device": str(self.device),
            "preprocessing": {key: value for key, value in self.processor.to_dict().items() if not key.startswith("_")},
        }  # fmt: skip
