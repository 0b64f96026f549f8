"""Image processors: exact parity with transformers' PIL processor, fast one within budget, and bad input."""

import numpy as np
import pytest
import skimage.data
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from transformers import BitImageProcessorPil

from bigtransfer import BitImageProcessor, BitImageProcessorFast

PHOTOS = ["chelsea", "coffee", "astronaut", "rocket", "immunohistochemistry", "camera"]
MODES = ["RGB", "L", "P", "RGBA", "LA", "CMYK", "I;16", "I", "F"]
BIT50 = dict(size=448, crop_size=448, resample=2, image_mean=[0.5] * 3, image_std=[0.5] * 3)
SETTINGS = {"default": {}, "bit-50": BIT50, "small_crop_larger_than_resize": dict(size=100, crop_size=(120, 90))}


def photo(name, size=None):
    image = Image.fromarray(getattr(skimage.data, name)())
    return image.resize(size, Image.BICUBIC) if size else image


def with_alpha(image):
    rgba = np.array(image.convert("RGBA"))
    rgba[..., 3] = np.linspace(0, 255, rgba.shape[1]).astype(np.uint8)[None]
    return Image.fromarray(rgba)


def pixels(processor, images, **kwargs):
    return processor(images, return_tensors="np", **kwargs)["pixel_values"]


@pytest.mark.parametrize("settings_name", sorted(SETTINGS))
@pytest.mark.parametrize("mode", MODES)
def test_exact_processor_equals_transformers_on_every_mode(settings_name, mode):
    kwargs = SETTINGS[settings_name]
    theirs, ours = BitImageProcessorPil(**kwargs), BitImageProcessor(**kwargs)
    for name, size in [("chelsea", None), ("coffee", (333, 500)), ("astronaut", (223, 225)), ("rocket", (61, 37))]:
        image = photo(name, size)
        image = with_alpha(image) if mode == "RGBA" else image.convert(mode)
        assert np.abs(pixels(theirs, image) - pixels(ours, image)).max() <= 1e-5, (name, size)


@pytest.mark.parametrize(
    "make",
    [
        lambda a: a,
        lambda a: np.moveaxis(a, -1, 0),
        lambda a: a.astype(np.float32) / 255,
        lambda a: a.astype(np.float64),
        lambda a: torch.from_numpy(np.moveaxis(a, -1, 0).copy()),
        lambda a: np.concatenate([a, np.full(a.shape[:2] + (1,), 128, np.uint8)], axis=-1),
        lambda a: a[..., :1],
        lambda a: np.stack([a, a]),
    ],
    ids=["hwc_uint8", "chw_uint8", "float01", "float_0_255", "torch_chw", "rgba_array", "gray_hwc1", "batch_4d"],
)
@pytest.mark.parametrize("settings_name", ["default", "bit-50"])
def test_exact_processor_equals_transformers_on_arrays(make, settings_name):
    kwargs = SETTINGS[settings_name]
    array = make(np.array(photo("coffee", (200, 150))))
    expected = pixels(BitImageProcessorPil(**kwargs), array)
    assert np.abs(expected - pixels(BitImageProcessor(**kwargs), array)).max() <= 1e-5


def test_outputs_have_the_requested_container_and_layout():
    processor, image = BitImageProcessor(), photo("chelsea")
    assert isinstance(processor(image)["pixel_values"], list)
    batch = processor([image, image], return_tensors="pt")
    assert batch.pixel_values.shape == (2, 3, 224, 224) and batch.pixel_values.dtype == torch.float32
    assert processor(image, return_tensors="np", data_format="channels_last")["pixel_values"].shape == (1, 224, 224, 3)


def test_per_call_overrides_do_not_change_the_instance():
    processor = BitImageProcessor()
    assert pixels(processor, photo("chelsea"), crop_size=64, size=64).shape == (1, 3, 64, 64)
    assert processor.crop_size == {"height": 224, "width": 224}


def test_unknown_keyword_is_warned_about():
    with pytest.warns(UserWarning, match="'colour'"):
        BitImageProcessor()(photo("chelsea"), colour="red")


def test_file_paths_are_read_with_exif_orientation(tmp_path):
    image = photo("chelsea")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated: the viewer turns it 90° clockwise
    image.save(tmp_path / "rotated.jpg", exif=exif, quality=95)
    image.save(tmp_path / "plain.png")
    ours = BitImageProcessor(do_center_crop=False, do_resize=False)
    assert pixels(ours, tmp_path / "rotated.jpg").shape[-2:] == (image.width, image.height)
    expected = pixels(BitImageProcessor(), image)
    assert np.abs(pixels(BitImageProcessor(), str(tmp_path / "plain.png")) - expected).max() == 0


def test_config_round_trips_with_transformers(tmp_path):
    BitImageProcessor(**BIT50).save_pretrained(tmp_path / "ours")
    theirs = BitImageProcessorPil.from_pretrained(tmp_path / "ours")
    assert theirs.size["shortest_edge"] == 448 and theirs.resample == 2 and list(theirs.image_mean) == [0.5] * 3
    BitImageProcessorPil(**BIT50).save_pretrained(tmp_path / "theirs")
    ours = BitImageProcessor.from_pretrained(tmp_path / "theirs")
    assert ours.size == {"shortest_edge": 448} and ours.crop_size == {"height": 448, "width": 448}
    image = photo("coffee")
    assert np.abs(pixels(theirs, image) - pixels(ours, image)).max() <= 1e-5
    fast = BitImageProcessorFast.from_pretrained(tmp_path / "theirs")
    assert fast.resample == 2 and fast.image_std == [0.5] * 3


def test_size_coercion_matches_transformers():
    processor = BitImageProcessor(size=42, crop_size=84)
    assert processor.size == {"shortest_edge": 42} and processor.crop_size == {"height": 84, "width": 84}
    assert BitImageProcessor(size=(30, 40)).size == {"height": 30, "width": 40}


# -- the fast processor ------------------------------------------------------------------------------


@pytest.mark.parametrize("settings_name", sorted(SETTINGS))
def test_fast_processor_stays_within_one_8bit_level(settings_name):
    kwargs = SETTINGS[settings_name]
    exact, fast = BitImageProcessor(**kwargs), BitImageProcessorFast(**kwargs)
    images = [photo(name, size) for name in PHOTOS for size in (None, (640, 480), (333, 500))]
    images += [with_alpha(photo("chelsea")), photo("camera").convert("L"), photo("coffee").convert("P")]
    expected, got = pixels(exact, images), pixels(fast, images)
    std = min(exact.image_std)
    assert np.abs(expected - got).max() <= 2 / 255 / std + 1e-6
    assert np.abs(expected - got).mean() <= 5e-3


@pytest.mark.parametrize("resample", [0, 1, 4, 5])
def test_fast_processor_uses_pillow_for_filters_torch_lacks(resample):
    images = [photo("chelsea"), photo("rocket")]
    expected = pixels(BitImageProcessor(resample=resample), images)
    assert np.abs(expected - pixels(BitImageProcessorFast(resample=resample), images)).max() < 1e-5


def test_fast_processor_keeps_input_order_across_size_groups():
    images = [photo("chelsea"), photo("coffee", (300, 200)), photo("rocket"), photo("coffee", (300, 200))]
    exact, fast = pixels(BitImageProcessor(), images), pixels(BitImageProcessorFast(), images)
    for index in range(len(images)):
        assert np.abs(exact[index] - fast[index]).mean() < 5e-3


def test_fast_processor_pads_to_the_largest_or_a_given_size():
    fast = BitImageProcessorFast(do_center_crop=False, size=64)
    images = [photo("chelsea"), photo("coffee", (200, 300))]  # landscape 64×96, portrait 96×64
    padded = fast(images, do_pad=True, return_tensors="pt")["pixel_values"]
    assert padded.shape == (2, 3, 96, 96)
    assert (padded[0, :, 64:, :] == 0).all()  # bottom rows of the landscape image are padding
    assert fast(images, do_pad=True, pad_size=(100, 100), return_tensors="pt")["pixel_values"].shape[-1] == 100
    with pytest.raises(ValueError, match="smaller than images"):
        fast(images, do_pad=True, pad_size=(10, 10))


def test_fast_processor_reads_files_in_parallel_and_with_draft(tmp_path):
    paths = []
    for name in PHOTOS[:4]:
        paths.append(tmp_path / f"{name}.jpg")
        photo(name, (1600, 1200)).save(paths[-1], quality=92)
    exact = pixels(BitImageProcessor(), paths)
    full = pixels(BitImageProcessorFast(), paths, num_workers=2)
    draft = pixels(BitImageProcessorFast(draft=True), paths)
    assert np.abs(exact - full).mean() < 5e-3
    assert np.abs(exact - draft).mean() < 2e-2  # faster, slightly further: opt-in


@pytest.mark.parametrize("orientation", [1, 6])  # 6: stored 1600×400, shown 400×1600
def test_a_draft_keeps_twice_the_target_on_each_shown_side(tmp_path, orientation):
    from bigtransfer.processing.decoding import decoded, open_checked
    from bigtransfer.processing.draft import draft_for

    exif = Image.Exif()
    exif[0x0112] = orientation
    photo("rocket", (1600, 400)).save(tmp_path / "p.jpg", quality=90, exif=exif.tobytes())
    with open_checked(tmp_path / "p.jpg", "p.jpg") as opened:
        draft_for(opened, {"height": 25, "width": 100}, "p.jpg")
        shown = decoded(opened, "p.jpg")
    assert shown.width >= 200 and shown.height >= 50  # a quarter turn, ignored, gave 50 px for a 100-px width
    assert shown.size == ((200, 50) if orientation == 1 else (200, 800))


def test_unstackable_sizes_explain_the_fix():
    with pytest.raises(ValueError, match="different sizes"):
        BitImageProcessorFast(do_center_crop=False)([photo("chelsea"), photo("rocket")], return_tensors="pt")


# -- bad input ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("processor_class", [BitImageProcessor, BitImageProcessorFast])
@pytest.mark.parametrize(
    "bad, error, message",
    [
        ([], ValueError, "empty list"),
        (42, TypeError, "Cannot use a int as an image"),
        ({"image": 1}, TypeError, "Cannot use a dict"),
        (np.zeros((32, 32), np.uint8), ValueError, r"array\[\.\.\., None\]"),
        (np.zeros((1, 2, 32, 32, 3), np.uint8), ValueError, "3-D.*or 4-D"),
        (np.zeros((3, 8, 3), np.uint8), ValueError, "ambiguous"),
        (np.zeros((5, 32, 7), np.uint8), ValueError, "Cannot find a channel axis"),
        (np.full((32, 32, 3), 300.5), ValueError, r"\[0, 255\]"),
        (np.full((32, 32, 3), -2.0), ValueError, "span"),
        (np.zeros((32, 32, 3), bool), TypeError, "must hold numbers"),
        ("/no/such/image.jpg", FileNotFoundError, "No image file"),
    ],
)
def test_bad_input_gets_a_clear_error(processor_class, bad, error, message):
    with pytest.raises(error, match=message):
        processor_class()(bad)


def test_unreadable_file_is_named(tmp_path):
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(ValueError, match="broken.jpg"):
        BitImageProcessor()(tmp_path / "broken.jpg")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(image_mean=[0.5, 0.5]), "image_mean has 2 values"),
        (dict(image_std=[0.5, 0.0, 0.5]), "divide by zero"),
        (dict(size={"shortest": 3}), "must have one of the following set of keys"),
        (dict(crop_size={"shortest_edge": 3}), "crop_size must have 'height' and 'width'"),
    ],
)
def test_bad_settings_get_a_clear_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        BitImageProcessor(**{k: v for k, v in kwargs.items() if k in ("size",)})(photo("chelsea"), **kwargs)


ERRORS = (ValueError, TypeError, FileNotFoundError)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    shape=st.lists(st.integers(1, 40), min_size=2, max_size=5),
    dtype=st.sampled_from([np.uint8, np.uint16, np.int32, np.float32, np.float64, np.bool_]),
    scale=st.sampled_from([1.0, 255.0, 1000.0, -1.0]),
    seed=st.integers(0, 2**16),
)
def test_fuzzed_arrays_give_a_tensor_or_a_clear_error(shape, dtype, scale, seed):
    values = np.random.default_rng(seed).random(shape) * scale
    array = values.astype(dtype)
    for processor in (BitImageProcessor(size=16, crop_size=16), BitImageProcessorFast(size=16, crop_size=16)):
        try:
            result = processor(array, return_tensors="pt")["pixel_values"]
        except ERRORS:
            continue
        assert result.ndim == 4 and result.shape[1:] == (3, 16, 16) and torch.isfinite(result).all()


@settings(max_examples=30, deadline=None)
@given(
    mode=st.sampled_from(MODES),
    width=st.integers(1, 60),
    height=st.integers(1, 60),
)
def test_fuzzed_pil_images_match_transformers(mode, width, height):
    image = photo("astronaut", (width, height))
    image = with_alpha(image) if mode == "RGBA" else image.convert(mode)
    kwargs = dict(size=24, crop_size=24)
    expected = pixels(BitImageProcessorPil(**kwargs), image)
    assert np.abs(expected - pixels(BitImageProcessor(**kwargs), image)).max() <= 1e-5


def test_two_pass_resize_used_off_cpu_stays_within_one_level_of_pillow():
    from bigtransfer.processing.transform import _two_pass_uint8_resize

    images = [photo("astronaut"), photo("chelsea", (512, 512)), photo("rocket", (512, 512))]
    batch = torch.stack([torch.from_numpy(np.array(image.resize((512, 512)))).permute(2, 0, 1) for image in images])
    for mode, resample in (("bicubic", Image.BICUBIC), ("bilinear", Image.BILINEAR)):
        expected = np.stack([np.array(image.resize((512, 512)).resize((300, 224), resample)) for image in images])
        got = _two_pass_uint8_resize(batch, 224, 300, mode).permute(0, 2, 3, 1).numpy()
        assert np.abs(expected.astype(int) - got.astype(int)).max() <= 1, mode


# -- the documented layout arguments, the fast processor's device, and transformers' two processors -------------


@pytest.mark.parametrize("processor_class", [BitImageProcessor, BitImageProcessorFast])
def test_data_format_none_is_channels_first_as_in_transformers(processor_class):
    image = photo("coffee", (200, 150))
    expected = pixels(BitImageProcessorPil(), image, data_format=None)
    one_level = 1 / 255 / min(BitImageProcessor().image_std)  # the fast processor is exact to one uint8 level
    assert np.abs(pixels(processor_class(), image, data_format=None) - expected).max() <= one_level + 1e-6
    assert np.array_equal(pixels(processor_class(), image, data_format=None), pixels(processor_class(), image))


@pytest.mark.parametrize("processor_class", [BitImageProcessor, BitImageProcessorFast])
def test_input_data_format_none_reads_images_without_a_channel_axis(processor_class):
    gray = np.array(photo("camera", (90, 70)))
    assert gray.ndim == 2
    one = pixels(processor_class(), gray, input_data_format="none")
    assert np.array_equal(one, pixels(processor_class(), gray[..., None], input_data_format="channels_last"))
    batch = pixels(processor_class(), np.stack([gray, gray[::-1]]), input_data_format="none")
    assert batch.shape == (2, 3, 224, 224) and np.array_equal(batch[:1], one)
    with pytest.raises(ValueError, match="or pass input_data_format='none'"):
        processor_class()(gray)


def test_fast_processor_output_follows_the_tensor_inputs_device():
    from bigtransfer.processing.fast import input_device

    on_meta = [torch.empty(3, 8, 8, device="meta"), torch.empty(3, 9, 9, device="meta")]
    assert input_device(on_meta) == torch.device("meta")
    assert input_device([photo("coffee"), torch.zeros(3, 8, 8)]) == torch.device("cpu")
    assert input_device([on_meta[0], torch.zeros(3, 8, 8)]) == torch.device("cpu")  # no single device
    tensor = torch.from_numpy(np.moveaxis(np.array(photo("coffee", (64, 48))), -1, 0).copy())
    assert BitImageProcessorFast()(tensor, return_tensors="pt")["pixel_values"].device == tensor.device


@pytest.mark.parametrize("resample", [Image.NEAREST, Image.BILINEAR, Image.BICUBIC])
def test_fast_processor_equals_transformers_torchvision_processor(resample):
    """transformers 5's BitImageProcessor is its torchvision-based fast one; on ordinary inputs we agree exactly."""
    from transformers import BitImageProcessor as TorchvisionBitImageProcessor

    settings = dict(size={"shortest_edge": 96}, crop_size=80, resample=resample)
    for image in (photo("chelsea"), photo("rocket", (61, 37))):
        expected = pixels(TorchvisionBitImageProcessor(**settings), image)
        assert np.abs(pixels(BitImageProcessorFast(**settings), image) - expected).max() <= 1e-6


def test_odd_crop_padding_follows_the_exact_processor_in_both_of_ours():
    """transformers' two processors disagree here (torchvision puts the odd padding pixel bottom/right, 3.0 apart
    in normalised units); ours both follow the PIL one, so slow and fast give the same pixels (README table)."""
    image = photo("chelsea", (27, 23))
    settings = dict(do_resize=False, crop_size=32)
    expected = pixels(BitImageProcessorPil(**settings), image)
    assert np.abs(pixels(BitImageProcessor(**settings), image) - expected).max() <= 1e-6
    assert np.abs(pixels(BitImageProcessorFast(**settings), image) - expected).max() <= 1e-6
