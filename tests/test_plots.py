"""A run's pictures: drawn without touching the caller's matplotlib (its backend, its pyplot figures)."""

import json

import matplotlib
import pytest

from bigtransfer.inference.plots import plot_confusion, plot_curves

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def svg_backend():
    """A backend of the caller's own, as a notebook has one; the one before is back afterwards."""
    before = matplotlib.get_backend()
    matplotlib.use("svg")
    yield
    matplotlib.use(before)


def test_plots_keep_the_callers_backend_and_leave_no_pyplot_figure(svg_backend, tmp_path):
    import matplotlib.pyplot as plt

    rows = [{"step": step, "loss": 1 / (step + 1), "lr": 0.01 * step} for step in range(5)] + [
        {"step": 4, "eval_top1": 0.5}
    ]
    (tmp_path / "metrics.jsonl").write_text("\n".join(map(json.dumps, rows)))
    curves = plot_curves(tmp_path / "metrics.jsonl", tmp_path / "curves.png")
    confusion = plot_confusion([[3, 1], [0, 4]], ["cat", "dog"], tmp_path / "confusion.png")
    assert curves.read_bytes().startswith(PNG) and confusion.read_bytes().startswith(PNG)
    assert matplotlib.get_backend() == "svg" and plt.get_fignums() == []
