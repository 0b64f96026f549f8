"""The evaluation transform: one object from processor settings, whose two steps every inference path runs."""

import numpy as np
import pytest
import torch
from PIL import Image

from bigtransfer import BitImageProcessor, BitImageProcessorFast
from bigtransfer.processing.transform import EvalTransform


def _photo(height=24, width=32, seed=0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def test_normalise_equals_the_exact_processor_values():
    image = _photo()
    processor = BitImageProcessor(do_resize=False, do_center_crop=False)  # CLIP mean/std, per channel
    expected = processor(image, return_tensors="pt")["pixel_values"]
    got = processor.eval_transform().normalise_pixels(torch.from_numpy(np.asarray(image).copy())[None])
    assert got.shape == expected.shape and got.is_contiguous()
    assert torch.allclose(got, expected, atol=1e-6)  # rescaled in float32 here, float64 there


def test_normalise_lays_out_channels_last_when_asked():
    transform = BitImageProcessor().eval_transform()
    batch = transform.normalise_pixels(torch.zeros(1, 8, 8, 3, dtype=torch.uint8), channels_last=True)
    assert batch.is_contiguous(memory_format=torch.channels_last) and batch.dtype == torch.float32


def test_normalise_does_not_change_a_float_input_in_place():
    batch = torch.full((1, 3, 4, 4), 255.0)
    BitImageProcessor(image_mean=0.5, image_std=0.5).eval_transform().normalise(batch)
    assert torch.equal(batch, torch.full((1, 3, 4, 4), 255.0))


def test_geometry_then_normalise_is_the_exact_processor_to_one_ulp():
    processor = BitImageProcessor(size={"shortest_edge": 40}, crop_size=32, resample=2, image_mean=0.5, image_std=0.5)
    image = _photo(50, 70, seed=1)
    transform = processor.eval_transform()
    pixels = torch.from_numpy(transform.decoded_geometry(image))[None]
    assert tuple(pixels.shape) == (1, 32, 32, 3) and pixels.dtype == torch.uint8
    expected = processor(image, return_tensors="pt")["pixel_values"]
    assert torch.allclose(transform.normalise_pixels(pixels), expected, atol=1e-6)


@pytest.mark.parametrize("resample", [0, 1, 2, 3, 4, 5])
@pytest.mark.parametrize("settings", [{"size": {"shortest_edge": 40}, "crop_size": 32},
                                      {"size": {"height": 30, "width": 50}, "do_center_crop": False},
                                      {"size": {"shortest_edge": 60}, "crop_size": {"height": 64, "width": 70}}])  # fmt: skip
def test_decoded_geometry_resizes_the_image_itself_to_the_same_pixels(resample, settings):
    """Resizing the decoded image saves two full-size copies; the pixels are geometry's of its array exactly."""
    image = _photo(50, 70, seed=3)
    transform = BitImageProcessor(resample=resample, **settings).eval_transform()
    expected = transform.geometry(np.asarray(image))
    got = transform.decoded_geometry(image)
    assert got.dtype == np.uint8 and got.flags.writeable and np.array_equal(got, expected)


@pytest.mark.parametrize("settings", [{}, {"size": 448, "crop_size": 448, "resample": 2},
                                      {"size": 100, "crop_size": (120, 90)}, {"size": 64, "crop_size": 60, "resample": 0}])  # fmt: skip
def test_decode_resize_and_crop_stay_channels_last_and_give_the_processors_pixels_to_the_bit(settings, tmp_path):
    """A photo file as predict's workers and serve hand it over (H×W×3 uint8, never channels-first) is the exact
    processor's and transformers' output, channels-first only at the processor's API; with values, the same."""
    from skimage import data
    from transformers import BitImageProcessorPil

    from bigtransfer.processing.decoding import decode_image

    path = tmp_path / "astronaut.jpg"
    Image.fromarray(data.astronaut()).resize((640, 480), Image.BICUBIC).save(path, quality=90)
    photo = decode_image(path)
    pixels = BitImageProcessor(**settings).eval_transform().decoded_geometry(photo)
    assert pixels.dtype == np.uint8 and pixels.shape[-1] == 3
    unnormalised = BitImageProcessor(**settings, do_rescale=False, do_normalize=False)
    theirs = BitImageProcessorPil(**settings, do_rescale=False, do_normalize=False)
    channels_first = np.moveaxis(pixels, -1, 0)[None]
    assert np.array_equal(unnormalised(str(path), return_tensors="np")["pixel_values"], channels_first)
    assert np.array_equal(theirs(photo, return_tensors="np")["pixel_values"], channels_first)
    last = unnormalised(str(path), data_format="channels_last", return_tensors="np")["pixel_values"]
    assert np.array_equal(last, pixels[None])
    expected = BitImageProcessorPil(**settings)(photo, return_tensors="np")["pixel_values"]
    array = np.array(photo)
    for image in (str(path), photo, array, np.moveaxis(array, -1, 0), torch.from_numpy(array)):
        assert np.array_equal(BitImageProcessor(**settings)(image, return_tensors="np")["pixel_values"], expected)


def test_the_fast_processor_normalises_through_the_same_transform():
    """Same 8-bit pixels in, identical numbers out: the fast processor adds only batched geometry."""
    image = np.asarray(_photo(32, 32, seed=2))
    fast = BitImageProcessorFast(do_resize=False, do_center_crop=False, image_mean=[0.4, 0.5, 0.6], image_std=0.25)
    got = fast(image, return_tensors="pt")["pixel_values"]
    expected = fast.eval_transform().normalise_pixels(torch.from_numpy(image.copy())[None])
    assert torch.equal(got, expected)


@pytest.mark.parametrize(
    ("settings", "size"),
    [
        ({"size": {"height": 20, "width": 30}, "do_center_crop": False}, (20, 30)),
        ({"size": {"shortest_edge": 40}, "crop_size": 24}, (24, 24)),
    ],
)
def test_fixed_size_is_the_size_every_image_comes_out_at(settings, size):
    transform = BitImageProcessor(**settings).eval_transform()
    assert transform.fixed_size() == size
    assert transform.geometry(np.zeros((50, 90, 3), dtype=np.uint8)).shape[:2] == size


def test_aspect_keeping_settings_cannot_be_batched():
    transform = BitImageProcessor(size={"shortest_edge": 40}, do_center_crop=False).eval_transform()
    assert transform.geometry(np.zeros((50, 100, 3), dtype=np.uint8)).shape[:2] == (40, 80)
    with pytest.raises(ValueError, match="cannot be batched"):
        transform.fixed_size()


def test_transform_takes_per_call_overrides_like_the_processor():
    processor = BitImageProcessor(crop_size=32)
    assert processor.eval_transform(crop_size=16).fixed_size() == (16, 16)
    assert EvalTransform.from_settings(processor.settings({})).fixed_size() == (32, 32)


@pytest.mark.parametrize("processor_class", [BitImageProcessor, BitImageProcessorFast])
@pytest.mark.parametrize("shape", [(1, 150), (600, 3), (10, 2000)])
def test_a_sliver_squeezed_by_a_longest_edge_is_resized_to_a_side_of_one_pixel(processor_class, shape, tmp_path):
    """transformers computes a side of 0 here and its resize fails (a RuntimeError, on the draft path a
    ZeroDivisionError, neither naming the image); one pixel is the nearest size that exists."""
    path = tmp_path / "sliver.jpg"
    Image.fromarray(np.full((*shape, 3), 128, dtype=np.uint8)).save(path)
    settings = dict(size={"shortest_edge": 32, "longest_edge": 40}, do_center_crop=False)
    if processor_class is BitImageProcessorFast:
        settings["draft"] = True
    pixels = processor_class(**settings)(str(path), return_tensors="pt")["pixel_values"]
    assert sorted(pixels.shape[2:]) == [1, 40]  # the long side at longest_edge, the short one at a pixel
