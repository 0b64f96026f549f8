"""The KServe v2 / Triton gRPC messages, as `kserve.py` reads and writes REST's: a ModelInferRequest into the
`InferRequest` the service infers, its outputs into a ModelInferResponse, and the metadata and config replies.

The messages are the generated ones tritonclient ships (`tritonclient.grpc.service_pb2`, `model_config_pb2`).
A request's tensors come typed (`contents.bytes_contents`, `fp32_contents`, …) or raw (`raw_input_contents`,
one entry per input, laid out as REST's binary tensors); outputs go back raw, as Triton sends them, an output
asked with the `classification` parameter as its top-k "score:index:label" strings.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from tritonclient.grpc import model_config_pb2, service_pb2

from . import kserve
from .kserve import InferRequest, ProtocolError, RequestedOutput, Tensor
from .service import ModelService

# the typed field of InferTensorContents that holds each datatype (FP16 travels raw only, as in Triton)
CONTENTS = {"BYTES": "bytes_contents", "FP32": "fp32_contents", "FP64": "fp64_contents",
            "INT64": "int64_contents", "INT32": "int_contents", "UINT8": "uint_contents"}  # fmt: skip
CONFIG_TYPES = {"FP32": model_config_pb2.TYPE_FP32, "BYTES": model_config_pb2.TYPE_STRING}


def infer_request(message: service_pb2.ModelInferRequest) -> InferRequest:
    """The infer request a ModelInferRequest makes (ProtocolError, with REST's messages, for a malformed one)."""
    raw = message.raw_input_contents
    if raw and len(raw) != len(message.inputs):
        raise ProtocolError(f"{len(raw)} raw_input_contents for {len(message.inputs)} inputs: send one per input, "
                            "in the inputs' order, or typed contents for every input.")  # fmt: skip
    inputs = [_input_tensor(item, raw[index] if raw else None) for index, item in enumerate(message.inputs)]
    if not inputs:
        raise ProtocolError('The request needs "inputs": a list of tensors {"name", "datatype", "shape", "data"}.')
    outputs = [RequestedOutput(output.name, True, _classification(output)) for output in message.outputs]
    return InferRequest(message.id or None, inputs, outputs or None, True)


def _input_tensor(item: service_pb2.ModelInferRequest.InferInputTensor, raw: bytes | None) -> Tensor:
    name, datatype, shape = item.name, item.datatype, list(item.shape)
    kserve.check_shape(name, shape)
    if raw is not None:
        value = kserve.raw_elements(raw, datatype, shape, name)
    elif datatype == "BYTES":
        value = list(item.contents.bytes_contents)
    else:
        kserve.dtype_of(datatype, name)  # one this server does not know: REST's message, naming those it does
        if datatype not in CONTENTS:
            raise ProtocolError(f"Input {name!r}: {datatype} has no typed contents: send it in raw_input_contents.")
        value = kserve.array_of(getattr(item.contents, CONTENTS[datatype]), datatype, shape, name)
    return kserve.counted(Tensor(name, datatype, shape, value))


def _classification(output: service_pb2.ModelInferRequest.InferRequestedOutputTensor) -> int:
    """The top-k an output asks with the classification extension (tritonclient sends it as int64_param)."""
    if "classification" not in output.parameters:
        return 0
    parameter = output.parameters["classification"]
    kind = parameter.WhichOneof("parameter_choice")
    if kind not in ("int64_param", "uint64_param"):
        raise ProtocolError(f"Output {output.name!r}: the classification parameter is a count (int64_param).")
    return getattr(parameter, kind)


def infer_response(
    service: ModelService, request_id: str | None, outputs: list[tuple[str, np.ndarray, bool]]
) -> service_pb2.ModelInferResponse:
    """A ModelInferResponse of the chosen outputs (`ModelService.outputs`), their data raw as Triton sends it."""
    response = service_pb2.ModelInferResponse(model_name=service.name, model_version=service.version,
                                              id=request_id or "")  # fmt: skip
    for name, array, _ in outputs:
        response.outputs.add(name=name, datatype="BYTES" if array.dtype == object else "FP32", shape=array.shape)
        response.raw_output_contents.append(kserve.raw_bytes(array))
    return response


def model_metadata(service: ModelService) -> service_pb2.ModelMetadataResponse:
    """REST's model metadata as gRPC's message."""
    metadata = service.metadata()
    tensor = service_pb2.ModelMetadataResponse.TensorMetadata
    return service_pb2.ModelMetadataResponse(
        name=metadata["name"], versions=metadata["versions"], platform=metadata["platform"],
        inputs=[tensor(**item) for item in metadata["inputs"]], outputs=[tensor(**item) for item in metadata["outputs"]],
    )  # fmt: skip


def model_config(service: ModelService) -> service_pb2.ModelConfigResponse:
    """The model as a Triton model config would declare it: batched inputs and outputs (dims without the batch
    axis; an image is one element, reshaped to a scalar as Triton's configs write a batch of strings), and the
    dynamic batching the server does."""
    limits, inputs, outputs = service.limits, [], []
    for item in service.metadata()["inputs"]:
        dims = item["shape"][1:] or [1]
        reshape = {} if item["shape"][1:] else {"reshape": model_config_pb2.ModelTensorReshape(shape=[])}
        inputs.append(model_config_pb2.ModelInput(name=item["name"], data_type=CONFIG_TYPES[item["datatype"]],
                                                  dims=dims, **reshape))  # fmt: skip
    for item in service.metadata()["outputs"]:
        outputs.append(model_config_pb2.ModelOutput(name=item["name"], data_type=CONFIG_TYPES[item["datatype"]],
                                                    dims=item["shape"][1:]))  # fmt: skip
    batching = model_config_pb2.ModelDynamicBatching(max_queue_delay_microseconds=round(limits.max_delay_ms * 1000))
    config = model_config_pb2.ModelConfig(name=service.name, platform=service.platform,
                                          max_batch_size=limits.max_batch_size, input=inputs, output=outputs,
                                          dynamic_batching=batching)  # fmt: skip
    return service_pb2.ModelConfigResponse(config=config)


def index_response(rows: list[dict[str, Any]]) -> service_pb2.RepositoryIndexResponse:
    index = service_pb2.RepositoryIndexResponse.ModelIndex
    return service_pb2.RepositoryIndexResponse(models=[index(**row) for row in rows])
