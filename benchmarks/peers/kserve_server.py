"""KServe 0.21's Python ModelServer serving the benchmark's ONNX export, as KServe's custom-model docs write one: a
kserve.Model with load, preprocess (the v2 BYTES input: base64 in JSON, decoded with PIL) and predict returning an
InferResponse, started by ModelServer().start([model]). POST /v2/models/bit/infer with the same body bigtransfer
gets: {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": ["<base64>"]}], ...}.

Unbatched: the Python ModelServer has no batching of its own. KServe batches in its agent, a separate container
that an InferenceService's `batcher` (maxBatchSize, maxLatency) adds in front of the model server in Kubernetes;
it is not part of the `kserve` package."""

import json

import numpy as np
from kserve import InferOutput, InferRequest, InferResponse, Model, ModelServer
from peer_model import Classifier, setting


class ImageClassifier(Model):
    def __init__(self, name: str):
        super().__init__(name)
        self.load()

    def load(self):
        self.classifier = Classifier()
        self.ready = True

    def preprocess(self, payload: InferRequest, headers=None) -> np.ndarray:
        return np.stack([self.classifier.pixels_of_base64(text) for text in payload.inputs[0].data])

    def predict(self, pixels: np.ndarray, headers=None) -> InferResponse:
        answers = np.array([json.dumps(labels) for labels in self.classifier.top_k(pixels)], dtype=object)
        output = InferOutput(name="labels", shape=list(answers.shape), datatype="BYTES")
        output.set_data_from_numpy(answers, binary_data=False)
        return InferResponse(response_id="", model_name=self.name, infer_outputs=[output])


if __name__ == "__main__":
    ModelServer(http_port=int(setting("PORT")), enable_grpc=False, workers=1).start([ImageClassifier("bit")])
