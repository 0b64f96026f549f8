"""Turning what users pass (paths, PIL images, arrays, tensors, lists of them) into RGB arrays, with clear errors."""

from __future__ import annotations

import contextlib
import http.client
import io
import os
import re
import struct
import time
import urllib.request
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .._util.limits import EnvLimit
from .http_deadline import urlopen_within

PIXELS_ENV, ASPECT_ENV = "BIGTRANSFER_MAX_IMAGE_PIXELS", "BIGTRANSFER_MAX_ASPECT_RATIO"
# What an image may be, wherever it comes from (files, URLs, arrays): 89.5 megapixels is Pillow's own
# decompression-bomb threshold (a 12-megapixel photo is far below); 200:1 lets banners and panoramas through,
# and keeps a short side resized to 480 px under 50 megapixels.
MAX_IMAGE_PIXELS = EnvLimit(PIXELS_ENV, 89_478_485)
MAX_ASPECT_RATIO = EnvLimit(ASPECT_ENV, 200, whole=False)
DOWNLOAD_ENV = "BIGTRANSFER_MAX_DOWNLOAD_BYTES"
MAX_DOWNLOAD_BYTES = EnvLimit(DOWNLOAD_ENV, 50 * 2**20)  # an image URL's body; photos are a few MB
URL_TIMEOUT = 30.0  # seconds for a whole image download when the caller gives no timeout
# The formats images are opened as, whatever a file's name says: photos and datasets come in these. Pillow would
# otherwise try every format it knows, and reading some runs another program (PostScript runs Ghostscript, with
# no time limit: 58 bytes named .jpg held `predict` forever).
ACCEPTED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "PPM")
CHANNEL_COUNTS = (1, 3, 4)
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
ImageLike = Any  # PIL.Image.Image | np.ndarray | torch.Tensor | str | os.PathLike


def load_image_path(path: str | os.PathLike) -> Path:
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"No image file at {path}: check the path (directories are not images).")
    return path


def load_image(path: str | os.PathLike) -> Image.Image:
    """Open an image file with its EXIF orientation applied (as a photo viewer shows it)."""
    path = load_image_path(path)
    return _opened(path, path)


def check_image_size(
    width: int, height: int, name: Any, max_pixels: int | None = None, pixels_env: str = PIXELS_ENV
) -> None:
    """Refuse, before anything is decoded or resized, an image whose pixels or shape would make memory and time
    depend on the image rather than on the model: more than `max_pixels` (by default `MAX_IMAGE_PIXELS`; a caller
    with its own limit names the variable that raises it), or a longer side more than `MAX_ASPECT_RATIO` times
    the shorter (a 1×20000 strip resized to a 224-px short side is 4.5 gigapixels)."""
    limit = MAX_IMAGE_PIXELS() if max_pixels is None else max_pixels
    if width < 1 or height < 1:
        raise ValueError(f"Cannot use {name}: it has no pixels ({width}×{height}).")
    if width * height > limit:
        raise ValueError(
            f"Cannot use {name}: {width}×{height} pixels is beyond the limit of {limit:,} (a decompression "
            f"bomb, or a very large photo: shrink it, or raise {pixels_env})."
        )
    aspect_limit = MAX_ASPECT_RATIO()
    if max(width, height) > aspect_limit * min(width, height):
        raise ValueError(
            f"Cannot use {name}: its aspect ratio {max(width, height)}:{min(width, height)} is beyond the limit of "
            f"{aspect_limit:g}:1 (resizing its short side would make it huge): crop it, or raise {ASPECT_ENV}."
        )


def open_checked(source: Any, name: Any) -> Image.Image:
    """Image.open (the header only) as one of `ACCEPTED_FORMATS`, with the size limits checked: no pixel is
    decoded yet. Every image bigtransfer reads (files, URLs, uploads, shards, `datasets` rows) is opened here."""
    try:
        with warnings.catch_warnings():  # Pillow's own bomb warning: the limits below decide
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            opened = Image.open(source, formats=ACCEPTED_FORMATS)
    except Image.DecompressionBombError:  # beyond twice Pillow's threshold: it refuses to open the header
        raise ValueError(
            f"Cannot use {name}: it declares more than {2 * Image.MAX_IMAGE_PIXELS:,} pixels (a decompression bomb)."
        ) from None
    except UnidentifiedImageError:
        refused = _format_by_signature(source)
        accepted = ", ".join(ACCEPTED_FORMATS)
        if refused is not None and refused not in ACCEPTED_FORMATS:
            raise ValueError(
                f"Cannot read {name} as an image: it is {refused} (by its first bytes), and only {accepted} are "
                "read; convert it to one of those."
            ) from None
        raise ValueError(
            f"Cannot read {name} as an image: the file is corrupt or not an image of the formats read ({accepted})."
        ) from None
    except (OSError, SyntaxError, ValueError) as error:
        detail = re.sub(r" ?<_io\.BytesIO object at 0x[0-9a-f]+>", "", str(error))  # bytes in memory: no file to name
        raise ValueError(f"Cannot read {name} as an image ({detail}); the file is corrupt or not an image.") from None
    try:
        check_image_size(opened.width, opened.height, name)
    except ValueError:
        opened.close()
        raise
    return opened


def _format_by_signature(source: Any) -> str | None:
    """The format Pillow would take a refused file for, from its first 16 bytes alone (no plugin parses it)."""
    if hasattr(source, "seek"):
        source.seek(0)
        prefix = source.read(16)
    else:
        with open(source, "rb") as file:
            prefix = file.read(16)
    Image.init()
    for kind in Image.ID:
        accept = Image.OPEN[kind][1]
        with contextlib.suppress(IndexError, TypeError, struct.error):  # a short file, as Image.open allows
            if accept is not None and accept(prefix):
                return kind
    return None


# What Pillow raises on a file damaged past its header: OSError (truncated, broken data), SyntaxError and
# ValueError (bad structures), and TypeError or struct.error from EXIF whose tags hold the wrong kind of value
# (exif_transpose writes the EXIF back without the orientation).
DAMAGE_ERRORS = (OSError, SyntaxError, ValueError, TypeError, struct.error)


@contextlib.contextmanager
def damage_named(name: Any) -> Iterator[None]:
    """Reading an opened image's pixels or metadata: what a damaged file raises becomes one ValueError naming it."""
    try:
        yield
    except DAMAGE_ERRORS as error:
        raise ValueError(f"Cannot read {name} as an image ({error}); the file is corrupt or not an image.") from None


def decoded(opened: Image.Image, name: Any) -> Image.Image:
    """The pixels of an image `open_checked` opened (at its `draft` scale, if one was set), EXIF orientation
    applied; a file that breaks off or is corrupt past its header is a ValueError naming it."""
    with damage_named(name):
        opened.load()
        ImageOps.exif_transpose(opened, in_place=True)
    return opened._new(opened.im)  # the decoded pixels, without a copy, outliving `opened` (its caller closes it)


def _opened(source: Any, name: Any) -> Image.Image:
    with open_checked(source, name) as opened:
        return decoded(opened, name)


def is_url(image: Any) -> bool:
    return isinstance(image, str) and image.startswith(("http://", "https://"))


def fetch_image(url: str, timeout: float | None = None) -> Image.Image:
    """Download an image (as transformers' pipelines accept URLs), bounded however the server behaves
    (`download`), an answer that is text (an HTML error page) refused as such. A server that cannot be reached
    or is too slow is an OSError; an answer that breaks HTTP or is not an image, a ValueError."""
    try:
        data = download(url, timeout, refuse_text=True)
    except (OSError, ValueError) as error:  # URLError, HTTPError and timeouts are OSErrors
        kind = ValueError if isinstance(error, ValueError) else OSError
        fix = "pass a larger timeout=" if isinstance(error, TimeoutError) else "check the URL"
        raise kind(f"Could not fetch the image {url} ({error}): {fix}, or download it and pass the file.") from None
    return _opened(io.BytesIO(data), url)


def download(url: str, timeout: float | None = None, refuse_text: bool = False) -> bytes:
    """The body of `url`, bounded however the server behaves: the whole exchange, connecting to the last byte,
    within `timeout` seconds (default `URL_TIMEOUT`), at most `MAX_DOWNLOAD_BYTES`; with `refuse_text`, a text
    answer is a ValueError. Raises OSError (HTTPError for an error status, TimeoutError past the deadline) or
    ValueError (an answer that breaks HTTP, or is too large), with the reason alone."""
    request = urllib.request.Request(url, headers={"User-Agent": "bigtransfer"})
    try:
        with urlopen_within(request, URL_TIMEOUT if timeout is None else timeout) as response:
            kind = response.headers.get_content_type()
            if refuse_text and kind.startswith("text/"):
                raise ValueError(f"the server returned {kind}, not an image")
            declared = response.headers.get("Content-Length")
            if declared and declared.isdigit() and int(declared) > MAX_DOWNLOAD_BYTES():
                raise ValueError(
                    f"it is {int(declared):,} bytes, beyond the limit of {MAX_DOWNLOAD_BYTES():,} ({DOWNLOAD_ENV})"
                )
            return _capped(iter(lambda: response.read1(1 << 16), b""))
    except http.client.HTTPException as error:  # a bad status line, header or body: not an OSError of its own
        detail = " ".join(str(error).split())[:200] or "no answer"
        raise ValueError(f"its answer is not valid HTTP: {type(error).__name__} {detail!r}") from None


def read_bounded(read: Callable[[float], bytes], deadline: float, limit: float, advice: str) -> bytes:
    """What `read(seconds left)` returns chunk by chunk until b"": at most `MAX_DOWNLOAD_BYTES`, and refused once
    `deadline` (`limit` seconds after the start) has passed; `advice` is the timeout message's remedy. For
    readers other than urllib's (fsspec's), which `download`'s deadline cannot reach."""

    def chunks() -> Iterator[bytes]:
        while (remaining := deadline - time.monotonic()) > 0:
            chunk = read(remaining)
            if not chunk:
                return
            yield chunk
        raise TimeoutError(f"the download took longer than {limit:g} s ({advice})")

    return _capped(chunks())


def _capped(chunks: Iterable[bytes]) -> bytes:
    """The chunks joined, refused beyond `MAX_DOWNLOAD_BYTES`."""
    kept, size, limit = [], 0, MAX_DOWNLOAD_BYTES()
    for chunk in chunks:
        size += len(chunk)
        if size > limit:
            raise ValueError(f"it is beyond the limit of {limit:,} bytes ({DOWNLOAD_ENV})")
        kept.append(chunk)
    return b"".join(kept)


def flatten_images(images: ImageLike | Sequence[ImageLike], input_data_format: str | None = None) -> list[ImageLike]:
    """One list of single images: 4-D arrays/tensors split along the batch axis, nested lists flattened.
    With input_data_format="none" (no channel axis, transformers' ChannelDimension.NONE) an image is H×W
    and a 3-D array a batch of them."""
    if isinstance(images, (list, tuple)):
        if not images:
            raise ValueError("Got an empty list of images: pass at least one image.")
        return [single for item in images for single in flatten_images(item, input_data_format)]
    if isinstance(images, (str, os.PathLike)):
        return [images]
    if isinstance(images, Image.Image):
        return [images]
    if isinstance(images, (np.ndarray, torch.Tensor)):
        if input_data_format == "none" and images.ndim in (2, 3):
            return [images] if images.ndim == 2 else list(images)
        if images.ndim == 3:
            return [images]
        if images.ndim == 4:
            return list(images)
        raise ValueError(
            f"An image array must be 3-D (one image, with a channel axis) or 4-D (a batch); got shape "
            f"{tuple(images.shape)}. For a grayscale H×W array add a channel axis with `array[..., None]`; "
            "or pass input_data_format='none'; split 5-D inputs into a list of batches."
        )
    raise TypeError(
        f"Cannot use a {type(images).__name__} as an image: pass a file path, a PIL image, a numpy array, "
        "a torch tensor, or a list of them."
    )


def channel_axis(shape: tuple[int, ...], input_data_format: str | None) -> int:
    """0 for channels-first, -1 for channels-last; guessing only when one reading is possible."""
    if input_data_format is not None:
        if input_data_format not in ("channels_first", "channels_last", "none"):
            raise ValueError(
                f"input_data_format must be 'channels_first', 'channels_last' or 'none' (H×W, no channel axis), "
                f"got {input_data_format!r}."
            )
        return 0 if input_data_format == "channels_first" else -1
    first, last = shape[0] in CHANNEL_COUNTS, shape[-1] in CHANNEL_COUNTS
    if first and last:
        raise ValueError(
            f"The channel axis of an image of shape {tuple(shape)} is ambiguous: pass "
            "input_data_format='channels_first' or 'channels_last'."
        )
    if not (first or last):
        raise ValueError(
            f"Cannot find a channel axis of size 1, 3 or 4 in an image of shape {tuple(shape)}: pass an H×W×C "
            "or C×H×W array (and input_data_format if it has another channel count)."
        )
    return 0 if first else -1


def decode_image(path: str | os.PathLike) -> Image.Image:
    """The one way a file becomes RGB pixels, shared by training, evaluation, prediction and the processors:
    EXIF orientation applied, transparency composited onto white, CMYK and 16-bit converted (`pil_to_rgb`)."""
    return pil_to_rgb(load_image(path))


def stored_image_source(stored: dict[str, Any]) -> Any:
    """What a `datasets` Image value read undecoded ({"bytes", "path"}) opens from: its bytes, else its file."""
    return io.BytesIO(stored["bytes"]) if stored.get("bytes") else stored.get("path")


def decode_stored_image(stored: dict[str, Any], name: str) -> Image.Image:
    """A stored `datasets` image as RGB, by the same checked path as a file: the limits apply, EXIF orientation,
    transparency and 16-bit as for files."""
    source = stored_image_source(stored)
    if source is None:
        raise ValueError(f"{name} holds no image (neither bytes nor a path).")
    return pil_to_rgb(_opened(source, name))


def _sixteen_bit_to_8(image: Image.Image) -> Image.Image:
    """Integer images holding values above 255 (16-bit PNG/TIFF) scaled to 8 bits, not clipped to white.

    Pillow's own conversion (and so transformers') clips: a 16-bit photo turns almost all white.
    Images whose values all fit in 8 bits (8-bit data stored as "I;16"/"I") are left as they are.
    """
    if not (image.mode == "I" or image.mode.startswith("I;16")):
        return image
    array = np.asarray(image.convert("I"))
    if array.max() <= 255:
        return image
    return Image.fromarray(np.round(np.clip(array, 0, 65535) * (255 / 65535)).astype(np.uint8))


def pil_to_rgb(image: Image.Image) -> Image.Image:
    """RGB, compositing transparency onto white (transformers 5.x), instead of dropping alpha."""
    image = _sixteen_bit_to_8(image)
    if _transparent(image):
        rgba = image if image.mode == "RGBA" else image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")


def _transparent(image: Image.Image) -> bool:
    return "A" in image.getbands() or image.info.get("transparency") is not None


def decoding_bytes(opened: Image.Image) -> int:
    """The most memory decoding an opened image and converting it to RGB (`decoded`, then `pil_to_rgb`) holds at
    once, from its header alone, at its `draft` size if one was set: the decoded pixels (Pillow keeps 1 byte a
    pixel for grey and palette, 2 for 16-bit grey, 4 for every colour mode, RGB included) and the conversion's
    copies: none for RGB, 4 bytes a pixel for other modes, 12 for RGBA and 16 for other transparent images
    composited onto white, 20 for 16-bit images scaled to 8 bits (peaks measured with /proc's VmHWM). For a
    server to admit requests by the memory their images need; the resize after it holds only the output."""
    sixteen = opened.mode.startswith("I;16")
    stored = 4 if len(opened.getbands()) > 1 or opened.mode in ("I", "F") else 2 if sixteen else 1
    if sixteen or opened.mode == "I":
        converted = 20
    elif _transparent(opened):
        converted = 12 if opened.mode == "RGBA" else 16
    else:
        converted = 0 if opened.mode == "RGB" else 4
    return opened.width * opened.height * (stored + converted)


def array_to_rgb(image: np.ndarray) -> np.ndarray:
    """Channels-last array → 3 channels: gray replicated, RGBA composited onto white."""
    channels = image.shape[-1]
    if channels == 1:
        return np.repeat(image, 3, axis=-1)
    if channels != 4:
        return image
    if np.issubdtype(image.dtype, np.floating) and (image.min() < 0.0 or image.max() > 1.0):
        raise ValueError(
            f"An RGBA float image must hold values in [0, 1] to composite its alpha, got [{image.min()}, "
            f"{image.max()}]: divide by 255 first."
        )
    white = 255 if np.issubdtype(image.dtype, np.integer) else 1.0
    alpha = image[..., 3:4] / white
    composite = alpha * image[..., :3] + (1 - alpha) * white
    return np.round(composite).astype(image.dtype) if white == 255 else composite.astype(image.dtype)


def to_channels_last(image: ImageLike, do_convert_rgb: bool, input_data_format: str | None) -> np.ndarray:
    """A numpy H×W×C array (decoders' layout, which the geometry works in), RGB-converted when asked (paths are
    opened, tensors moved to numpy)."""
    if isinstance(image, (str, os.PathLike)):
        image = load_image(image)
    if isinstance(image, Image.Image):
        array = np.array(pil_to_rgb(image) if do_convert_rgb else image)
        return array[..., None] if array.ndim == 2 else array
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().numpy()
    if image.dtype == np.bool_ or not (np.issubdtype(image.dtype, np.number)):
        raise TypeError(f"Image arrays must hold numbers, got dtype {image.dtype}: convert with `.astype(np.uint8)`.")
    if min(image.shape) == 0:
        raise ValueError(f"Got an empty image of shape {tuple(image.shape)}.")
    if input_data_format == "none":
        if image.ndim != 2:
            raise ValueError(
                f"input_data_format='none' means H×W images without a channel axis, got shape {tuple(image.shape)}."
            )
        image, input_data_format = image[None], "channels_first"
    channels_last = np.moveaxis(image, channel_axis(image.shape, input_data_format), -1)
    return array_to_rgb(channels_last) if do_convert_rgb else channels_last
