"""The KServe v2 / Open Inference Protocol's REST messages: JSON tensors, the binary-tensor extension, and the
classification extension, as Triton speaks them (so `tritonclient.http` works unchanged).

A request is a JSON header, optionally followed by raw tensor bytes: the `Inference-Header-Content-Length`
header then gives the JSON's length, and each binary input says its byte count in `parameters.binary_data_size`.
BYTES elements in binary form are each a 4-byte little-endian length and the bytes; in JSON they are strings,
which this server reads as base64 (an image is not text).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import struct
from typing import Any

import numpy as np

HEADER_LENGTH = "Inference-Header-Content-Length"
DTYPES = {"FP32": np.float32, "FP16": np.float16, "FP64": np.float64, "INT64": np.int64, "INT32": np.int32,
          "UINT8": np.uint8}  # fmt: skip


class ProtocolError(ValueError):
    """A request that does not follow the protocol, or asks for what this model does not have (HTTP 400)."""


@dataclasses.dataclass
class Tensor:
    name: str
    datatype: str
    shape: list[int]
    value: np.ndarray | list[bytes]  # a NumPy array, or the elements of a BYTES tensor


@dataclasses.dataclass
class RequestedOutput:
    name: str
    binary: bool
    classification: int  # top-k as "score:index:label" strings; 0: the tensor itself


@dataclasses.dataclass
class InferRequest:
    id: str | None
    inputs: list[Tensor]
    outputs: list[RequestedOutput] | None  # None: every output, as Triton does
    binary_default: bool  # parameters.binary_data_output: outputs as binary unless they say otherwise


def parse_request(body: bytes, header_length: str | None) -> InferRequest:
    """An infer request from its HTTP body (`header_length`: the Inference-Header-Content-Length header)."""
    try:
        length = int(header_length) if header_length is not None else len(body)
        if not 0 < length <= len(body):
            raise ValueError
        header = json.loads(body[:length])
    except RecursionError:  # JSON nested deeper than Python's stack (100,000 brackets cost no more than 200 KB)
        raise ProtocolError("The request's JSON is nested too deeply: an infer request is a few levels deep.") from None
    except (ValueError, UnicodeDecodeError):
        raise ProtocolError("The request is not a KServe v2 infer request: a JSON object (then binary tensors, with "
                            f"{HEADER_LENGTH} giving the JSON's length).") from None  # fmt: skip
    try:
        return _request(header, body[length:])
    except ProtocolError:
        raise
    except (TypeError, ValueError, AttributeError, KeyError) as error:  # a field of the wrong type or shape
        raise ProtocolError(f"A malformed infer request ({type(error).__name__}: {error}).") from None


def _request(header: Any, binary: bytes) -> InferRequest:
    if not isinstance(header, dict) or not isinstance(header.get("inputs"), list) or not header["inputs"]:
        raise ProtocolError('The request needs "inputs": a list of tensors {"name", "datatype", "shape", "data"}.')
    inputs, offset = [], 0
    for item in header["inputs"]:
        tensor, used = _input_tensor(item, binary, offset)
        inputs.append(tensor)
        offset += used
    if offset != len(binary):
        raise ProtocolError(f"{len(binary) - offset} bytes after the tensors that binary_data_size accounts for.")
    binary_default = bool((header.get("parameters") or {}).get("binary_data_output", False))
    outputs = None
    if "outputs" in header:
        outputs = [
            RequestedOutput(
                str(output["name"]),
                bool((output.get("parameters") or {}).get("binary_data", binary_default)),
                int((output.get("parameters") or {}).get("classification", 0)),
            )
            for output in header["outputs"]
        ]
    return InferRequest(header.get("id"), inputs, outputs, binary_default)


def _input_tensor(item: Any, binary: bytes, offset: int) -> tuple[Tensor, int]:
    try:
        name, datatype, shape = str(item["name"]), str(item["datatype"]), [int(n) for n in item["shape"]]
    except (KeyError, TypeError, ValueError):
        raise ProtocolError(f'Every input needs "name", "datatype" and "shape", got {str(item)[:200]}.') from None
    check_shape(name, shape)
    size = (item.get("parameters") or {}).get("binary_data_size")  # a dict, or the error above
    if size is not None:
        raw = binary[offset : offset + int(size)]
        if len(raw) != int(size):
            raise ProtocolError(f"Input {name!r} says {size} binary bytes, but only {len(raw)} follow.")
        value = raw_elements(raw, datatype, shape, name)
        used = int(size)
    elif "data" in item:
        value = (
            _base64_elements(item["data"], name)
            if datatype == "BYTES"
            else array_of(item["data"], datatype, shape, name)
        )
        used = 0
    else:
        raise ProtocolError(f'Input {name!r} has neither "data" nor parameters.binary_data_size.')
    return counted(Tensor(name, datatype, shape, value)), used


def check_shape(name: str, shape: list[int]) -> None:
    if any(n < 0 for n in shape):
        raise ProtocolError(f"Input {name!r}: shape {shape} has a negative dimension.")


def counted(tensor: Tensor) -> Tensor:
    """`tensor`, once its elements are as many as its shape says."""
    count = int(np.prod(tensor.shape)) if tensor.shape else 1
    if (len(tensor.value) if tensor.datatype == "BYTES" else tensor.value.size) != count:
        raise ProtocolError(f"Input {tensor.name!r}: shape {tensor.shape} needs {count} elements.")
    return tensor


def raw_elements(raw: bytes, datatype: str, shape: list[int], name: str) -> np.ndarray | list[bytes]:
    """A tensor's elements from its raw bytes: REST's binary-tensor extension and gRPC's raw_input_contents lay
    them out alike (BYTES elements each after a 4-byte little-endian length)."""
    return _bytes_elements(raw, name) if datatype == "BYTES" else _array_from_bytes(raw, datatype, shape, name)


def dtype_of(datatype: str, name: str) -> np.dtype:
    if datatype not in DTYPES:
        raise ProtocolError(f"Input {name!r}: datatype {datatype} is not supported ({', '.join(DTYPES)} or BYTES).")
    return np.dtype(DTYPES[datatype]).newbyteorder("<")


def _array_from_bytes(raw: bytes, datatype: str, shape: list[int], name: str) -> np.ndarray:
    dtype = dtype_of(datatype, name)
    if len(raw) != int(np.prod(shape)) * dtype.itemsize:
        raise ProtocolError(f"Input {name!r}: {len(raw)} bytes do not hold a {datatype} tensor of shape {shape}.")
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


def array_of(data: Any, datatype: str, shape: list[int], name: str) -> np.ndarray:
    try:
        array = np.asarray(data, dtype=dtype_of(datatype, name))
    except (TypeError, ValueError):
        raise ProtocolError(f"Input {name!r}: data is not a list of {datatype} numbers.") from None
    if array.size != int(np.prod(shape)):
        raise ProtocolError(f"Input {name!r}: {array.size} values do not fill shape {shape}.")
    return array.reshape(shape)


def _bytes_elements(raw: bytes, name: str) -> list[bytes]:
    elements, offset = [], 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise ProtocolError(f"Input {name!r}: a BYTES element's 4-byte length is cut off.")
        (length,) = struct.unpack_from("<I", raw, offset)
        if offset + 4 + length > len(raw):
            raise ProtocolError(f"Input {name!r}: a BYTES element says {length} bytes, fewer follow.")
        elements.append(raw[offset + 4 : offset + 4 + length])
        offset += 4 + length
    return elements


def _base64_elements(data: Any, name: str) -> list[bytes]:
    flat = list(np.ravel(np.asarray(data, dtype=object)))
    try:
        return [base64.b64decode(str(element), validate=True) for element in flat]
    except (binascii.Error, ValueError):
        raise ProtocolError(f"Input {name!r}: in JSON, BYTES elements must be base64 strings (images are not text); "
                            "or send them as binary data.") from None  # fmt: skip


def classification_strings(values: np.ndarray, k: int, labels: list[str]) -> np.ndarray:
    """Triton's classification extension: per row the k largest values as "value:index:label", best first."""
    k = min(k, values.shape[-1])
    order = np.argsort(-values, axis=-1, kind="stable")[:, :k]
    return np.array(
        [[f"{row[i]:f}:{i}:{labels[i]}".encode() for i in best] for row, best in zip(values, order)], dtype=object
    )


def response_body(
    model: str, version: str, request_id: str | None, outputs: list[tuple[str, np.ndarray, bool]]
) -> tuple[bytes, dict]:
    """(body, headers) of an infer response by `model` at `version`; each output is (name, array or BYTES
    strings, as binary)."""
    header: dict[str, Any] = {"model_name": model, "model_version": version, "outputs": []}
    if request_id is not None:
        header["id"] = request_id
    binary = []
    for name, array, as_binary in outputs:
        datatype = "BYTES" if array.dtype == object else "FP32"
        entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(array.shape)}
        if as_binary:
            raw = raw_bytes(array)
            entry["parameters"] = {"binary_data_size": len(raw)}
            binary.append(raw)
        else:
            entry["data"] = [item.decode() for item in array.ravel()] if datatype == "BYTES" else array.ravel().tolist()
        header["outputs"].append(entry)
    text = json.dumps(header, allow_nan=False).encode()  # NaN is no JSON: a bug to report, not an answer to send
    if not binary:
        return text, {"content-type": "application/json"}
    return text + b"".join(binary), {"content-type": "application/octet-stream", HEADER_LENGTH: str(len(text))}


def raw_bytes(array: np.ndarray) -> bytes:
    """An output's raw bytes (FP32, or BYTES strings each after its 4-byte length), as REST's binary extension and
    gRPC's raw_output_contents carry it."""
    if array.dtype == object:
        return b"".join(struct.pack("<I", len(item)) + item for item in array.ravel())
    return np.ascontiguousarray(array, dtype="<f4").tobytes()
