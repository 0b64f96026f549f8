"""Parallel loading: ordered results from worker processes, clear errors when a worker dies, one decoding path."""

import os
import signal

import numpy as np
import pytest
import torch
from PIL import Image

from bigtransfer._util.device import resolve_device
from bigtransfer.data.workers import LoaderWorkerError, default_workers, ordered_results, resolve_workers, stack_images
from bigtransfer.processing.decoding import decode_image


class Squares:
    """A picklable task: item i is i², computed in whichever process runs it."""

    def __len__(self):
        return 20

    def __getitem__(self, index):
        return index * index, os.getpid()


class DiesAt:
    def __init__(self, index):
        self.index = index

    def __len__(self):
        return 50

    def __getitem__(self, index):
        if index == self.index:
            os.kill(os.getpid(), signal.SIGKILL)  # what the kernel's OOM killer does
        return index


class RaisesAt(DiesAt):
    def __getitem__(self, index):
        if index == self.index:
            raise RuntimeError("a bug in the task")
        return index


@pytest.mark.parametrize("workers", [0, 2])
def test_results_arrive_in_order_from_worker_processes(workers):
    with ordered_results(Squares(), workers) as results:
        values, pids = zip(*results)
    assert list(values) == [i * i for i in range(20)]
    assert (os.getpid() in pids) == (workers == 0)


def test_a_worker_killed_by_the_system_gives_a_clear_error_not_a_hang():
    with pytest.raises(LoaderWorkerError, match=r"data-loading worker process failed.*--workers 0"):  # noqa: SIM117
        with ordered_results(DiesAt(5), 2) as results:
            list(results)


def test_an_exception_in_a_worker_reaches_the_caller_with_its_traceback():
    with pytest.raises(RuntimeError, match="(?s)in DataLoader worker process.*a bug in the task") as raised:  # noqa: SIM117
        with ordered_results(RaisesAt(3), 2) as results:
            list(results)
    assert not isinstance(raised.value, LoaderWorkerError)  # a bug is not blamed on memory


def test_default_workers_follow_the_cores_and_the_local_world_size(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(32)), raising=False)
    assert default_workers() == 16
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    assert default_workers() == 4
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0}, raising=False)
    assert default_workers() == 1
    assert resolve_workers(0) == 0
    with pytest.raises(ValueError, match="--workers must be ≥ 0"):
        resolve_workers(-1)


def test_cuda_on_a_machine_without_it_is_explained(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="sees no CUDA GPU; use --device cpu"):
        resolve_device("cuda")
    assert resolve_device(None).type == "cpu"


class Stacked:
    def __len__(self):
        return 3

    def __getitem__(self, index):
        return stack_images([np.full((4, 5, 3), index + k, np.uint8) for k in range(2)])


def test_stacked_images_made_in_workers_arrive_intact():
    with ordered_results(Stacked(), 2) as results:
        batches = list(results)
    assert [tuple(b.shape) for b in batches] == [(2, 4, 5, 3)] * 3
    assert [int(b[1, 0, 0, 0]) for b in batches] == [1, 2, 3]


def test_sixteen_bit_images_are_scaled_not_clipped_to_white(tmp_path):
    ramp = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode == "I;16"
    pixels = np.asarray(decode_image(tmp_path / "deep.png"))
    assert pixels.shape == (64, 64, 3) and pixels.min() == 0 and pixels.max() == 255
    assert abs(pixels.mean() - 127.5) < 1  # Pillow's own conversion makes 99.6 % of this image white
    small = np.arange(64 * 64).reshape(64, 64).astype(np.uint16) % 256  # 8-bit values in a 16-bit file
    Image.fromarray(small).save(tmp_path / "shallow.png")
    assert np.array_equal(np.asarray(decode_image(tmp_path / "shallow.png"))[..., 0], small)


@pytest.mark.parametrize(
    ("mode", "transparency", "per_pixel"),
    [("RGB", None, 4), ("L", None, 5), ("P", None, 5), ("P", 0, 17), ("RGBA", None, 16), ("I;16", None, 22)],
)
def test_the_decoding_cost_of_each_mode_is_pillows_storage_and_its_rgb_conversion(
    tmp_path, mode, transparency, per_pixel
):
    """Pillow keeps colour in 4 bytes a pixel; grey and palette in 1 and 16-bit grey in 2, and converting to RGB
    adds 4, 16 (transparency onto white; 12 from RGBA) or 20 (16-bit scaled to 8) more. Peaks: see test_untrusted."""
    from bigtransfer.processing.decoding import decoding_bytes, open_checked

    options = {} if transparency is None else {"transparency": transparency}
    Image.new(mode, (30, 20)).save(tmp_path / "image.png", **options)
    with open_checked(tmp_path / "image.png", "image.png") as opened:
        assert opened.mode == mode and decoding_bytes(opened) == 30 * 20 * per_pixel
