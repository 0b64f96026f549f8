"""BentoML 1.4's service for the benchmark's ONNX export, as BentoML's adaptive-batching docs write one: a
@bentoml.service class whose @bentoml.api(batchable=True, max_batch_size=…, max_latency_ms=…) method takes a
list (BentoML's dispatcher joins the requests' lists into one call and splits the answer back). Run as
`bentoml serve bentoml_server:ImageClassifier --port P`. POST /classify {"images": ["<base64>"]}.

max_latency_ms is BentoML's bound on a request's whole time (the dispatcher answers 503 past it), not a batch
window: the dispatcher chooses its own wait from the latencies it has seen. It is set to the client's timeout."""

import bentoml
import numpy as np
from peer_model import Classifier, setting


@bentoml.service(workers=1, traffic={"timeout": 120})
class ImageClassifier:
    def __init__(self) -> None:
        self.classifier = Classifier()

    @bentoml.api(batchable=True, max_batch_size=int(setting("MAX_BATCH_SIZE")), max_latency_ms=120_000)
    def classify(self, images: list[str]) -> list[list[dict]]:
        return self.classifier.top_k(np.stack([self.classifier.pixels_of_base64(text) for text in images]))
