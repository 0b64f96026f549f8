"""LitServe 0.2.19 serving the benchmark's ONNX export, as LitServe's docs write a batched API: a LitAPI with
max_batch_size and batch_timeout (LitServe's own dynamic batching), decode_request per request, the default batch
(numpy.stack) and unbatch, encode_response per request. POST /predict {"image": "<base64>"}. With
max_batch_size 1 LitServe does not batch: predict gets one request's input, as its docs say."""

import litserve as ls
from peer_model import Classifier, setting


class ImageClassifierAPI(ls.LitAPI):
    def setup(self, device):
        self.classifier = Classifier()
        self.batched = int(setting("MAX_BATCH_SIZE")) > 1

    def decode_request(self, request):
        return self.classifier.pixels_of_base64(request["image"])

    def predict(self, batch):
        return self.classifier.top_k(batch) if self.batched else self.classifier.top_k(batch[None])[0]

    def encode_response(self, output):
        return {"labels": output}


if __name__ == "__main__":
    api = ImageClassifierAPI(
        max_batch_size=int(setting("MAX_BATCH_SIZE")), batch_timeout=float(setting("MAX_DELAY_MS")) / 1000
    )
    server = ls.LitServer(api, accelerator="cpu", timeout=120)
    server.run(host="127.0.0.1", port=int(setting("PORT")), generate_client_file=False, log_level="warning")
