"""What every peer server of benchmarks/bench_serve.py runs, so that they differ only in the serving: the ONNX
export's session with the benchmark's options, PIL decoding with the export's BiT preprocessing in NumPy, and the
top-5 answer. Imports only numpy, Pillow and onnxruntime (each peer's own venv); never bigtransfer.

bench_serve.py sets the environment: BENCH_EXPORT (the export folder), BENCH_THREADS (intra-op threads),
BENCH_ORT_ALLOW_SPINNING (ONNX Runtime's session.intra_op.allow_spinning), BENCH_MAX_BATCH_SIZE,
BENCH_MAX_DELAY_MS, BENCH_PORT, and BENCH_BATCH_LOG (a file where each forward pass appends its batch size, for
the mean batch a peer reached).
"""

from __future__ import annotations

import base64
import io
import json
import os
from pathlib import Path

import numpy as np
import onnxruntime
from PIL import Image

TOP_K = 5


def setting(name: str) -> str:
    return os.environ[f"BENCH_{name}"]


class Classifier:
    """The export run by ONNX Runtime: sequential execution, every graph optimisation, BENCH_THREADS threads."""

    def __init__(self, export_dir: str | os.PathLike | None = None):
        export_dir = Path(export_dir or setting("EXPORT"))
        options = onnxruntime.SessionOptions()
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
        options.intra_op_num_threads = int(setting("THREADS"))
        options.add_session_config_entry("session.intra_op.allow_spinning", setting("ORT_ALLOW_SPINNING"))
        self.session = onnxruntime.InferenceSession(
            str(export_dir / "model.onnx"), options, providers=["CPUExecutionProvider"]
        )
        self.preprocessing = json.loads((export_dir / "preprocessor_config.json").read_text())
        id2label = json.loads((export_dir / "config.json").read_text())["id2label"]
        self.labels = [id2label[str(i)] for i in range(len(id2label))]
        log = os.environ.get("BENCH_BATCH_LOG")
        self.batch_log = open(log, "a", buffering=1) if log else None  # noqa: SIM115 (open for the server's life)

    def pixels(self, encoded: bytes) -> np.ndarray:
        """Encoded image → float32 3×H×W: PIL decode, RGB, the export's resize (and crop), BiT's normalisation."""
        settings = self.preprocessing
        image = Image.open(io.BytesIO(encoded)).convert("RGB")
        size = settings["size"]
        if "shortest_edge" in size:
            scale = size["shortest_edge"] / min(image.size)
            target = (round(image.width * scale), round(image.height * scale))
        else:
            target = (size["width"], size["height"])
        image = image.resize(target, Image.Resampling(settings["resample"]))
        if settings["do_center_crop"]:
            crop = settings["crop_size"]
            left, top = (image.width - crop["width"]) // 2, (image.height - crop["height"]) // 2
            image = image.crop((left, top, left + crop["width"], top + crop["height"]))
        values = np.asarray(image, dtype=np.float32) * np.float32(settings["rescale_factor"])
        mean, std = np.array(settings["image_mean"], np.float32), np.array(settings["image_std"], np.float32)
        return ((values - mean) / std).transpose(2, 0, 1)

    def pixels_of_base64(self, text: str) -> np.ndarray:
        return self.pixels(base64.b64decode(text))

    def top_k(self, batch: np.ndarray) -> list[list[dict]]:
        """N×3×H×W → per image the TOP_K labels with their softmax scores, best first."""
        if self.batch_log:
            self.batch_log.write(f"{len(batch)}\n")
        (logits,) = self.session.run(["logits"], {"pixel_values": np.ascontiguousarray(batch)})
        exp = np.exp(logits - logits.max(axis=1, keepdims=True))
        scores = exp / exp.sum(axis=1, keepdims=True)
        best = np.argsort(-scores, axis=1)[:, :TOP_K]
        return [
            [{"label": self.labels[i], "score": float(row[i])} for i in indices] for row, indices in zip(scores, best)
        ]
