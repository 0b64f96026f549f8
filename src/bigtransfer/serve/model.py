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

from ..checkpoints.naming import default_model_name
from ..deploy.triton import check_model_name
from ..inference.pipelines import class_scores, default_function, load_classifier
from ..processing.decoding import check_image_size, decoded, decoding_bytes, open_checked, pil_to_rgb
from ..processing.draft import draft_for
from ..processing.exact import BitImageProcessor
from ..processing.limits import EnvLimit

SERVE_PIXELS_ENV = "BIGTRANSFER_SERVE_MAX_IMAGE_PIXELS"
# An upload's pixels as decoded (a JPEG at its draft scale, so a photo of any size the library reads passes;
# a PNG or WebP as large as it declares): 16.8 megapixels is a 12-megapixel photo in any format, and 67 MB of
# decoded pixels, where the library's 89.5-megapixel limit let one 97-KB PNG take 850 MB of a server.
SERVE_MAX_IMAGE_PIXELS = EnvLimit(SERVE_PIXELS_ENV, 4096 * 4096)


class ServedModel:
    """A classifier (torch, or an export directory run by ONNX Runtime or OpenVINO) and its preprocessing.

    `pixels` turns encoded image bytes into model input as `predict` does (the checked decoder, the saved
    preprocessing), but decoding no more than the model needs: JPEGs much larger than the resize at a reduced
    scale (`draft_for`), and at most `SERVE_MAX_IMAGE_PIXELS`; `decoding_bytes` says beforehand what decoding
    will take. `logits` runs a float32 batch. Both run in worker threads of the server.
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
        """Encoded image bytes → float32 3×H×W model input; ValueError naming the problem for what is not an image
        or breaks the image limits."""
        with self._header(data, name) as opened:
            image = pil_to_rgb(decoded(opened, name))
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
