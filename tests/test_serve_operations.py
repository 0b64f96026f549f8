"""Running `bigtransfer serve` as an operator does: warm-up before ready, ONNX Runtime's threads not spinning in
the server, and one Prometheus view of several server processes."""

from __future__ import annotations

import contextlib
import logging
import threading
import time

import numpy as np

from bigtransfer.serve.model import ServedModel
from helpers import client_for, wait_until_ready
from test_serve import model_dir, photos  # noqa: F401  (fixtures)

WAIT_S = 30


class CountedModel(ServedModel):
    """A served model that records the batch size of every forward pass, and holds the passes until `go` is set."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.passes: list[int] = []
        self.go = threading.Event()
        self.go.set()

    def logits(self, batch: np.ndarray):
        assert self.go.wait(WAIT_S)
        self.passes.append(len(batch))
        return super().logits(batch)


def test_a_model_is_ready_only_after_a_warm_up_pass_at_each_batch_size(model_dir, caplog):  # noqa: F811
    model = CountedModel(model_dir, "cpu")
    model.go.clear()  # the warm-up waits: the server listens meanwhile
    caplog.set_level(logging.INFO, "bigtransfer.serve")
    with client_for(model, warmed=False, max_batch_size=8) as client:
        assert client.get("/v2/health/ready").status_code == 503
        assert client.get("/v2/models/cats/ready").json() == {"name": "cats", "ready": False}
        assert client.get("/v2/health/live").status_code == 200
        model.go.set()
        wait_until_ready(client)
        assert client.get("/v2/models/cats/ready").status_code == 200
        assert model.passes == [1, 8]  # 1 and --max-batch-size, uint8 pixels through ServedModel.logits
    assert "warming up cats v1 at batch sizes 1, 8 … ready in" in caplog.text


def test_the_first_request_after_ready_is_not_the_models_first_pass(model_dir, photos):  # noqa: F811
    for warmup, passes_before in ((None, [1, 4]), ((), [])):  # warmed up (the default), and cold
        model = CountedModel(model_dir, "cpu")
        with client_for(model, max_batch_size=4, warmup_batch_sizes=warmup) as client:
            assert model.passes == passes_before  # client_for's client is ready: warmed up, or cold
            assert client.post("/predict", content=photos[0].read_bytes()).status_code == 200
        assert model.passes == [*passes_before, 1]  # warmed: the request's pass is its size's second


def test_warm_up_batch_sizes_are_chosen_or_turned_off_on_the_command_line(model_dir, capsys):  # noqa: F811
    from bigtransfer.cli import build_parser
    from bigtransfer.cli import main as cli
    from bigtransfer.serve.service import Limits

    parser = build_parser()
    assert parser.parse_args(["serve", "m", "--warmup-batch-sizes", "1,8,32"]).warmup_batch_sizes == (1, 8, 32)
    assert parser.parse_args(["serve", "m", "--warmup-batch-sizes", "none"]).warmup_batch_sizes == ()
    assert Limits(max_batch_size=16).warmup_sizes == [1, 16] and Limits(warmup_batch_sizes=()).warmup_sizes == []
    assert cli(["serve", str(model_dir), "--warmup-batch-sizes", "1,64", "--port", "1"]) == 2
    assert "Warm-up batch sizes must be from 1 to --max-batch-size 32, got 1, 64." in capsys.readouterr().err


def session_spinning(session) -> dict[str, str]:
    """The spinning settings an ONNX Runtime session was made with (empty: ONNX Runtime's default, spinning)."""
    options, entries = session.get_session_options(), {}
    for key in (f"session.{pool}.allow_spinning" for pool in ("intra_op", "inter_op")):
        with contextlib.suppress(RuntimeError):  # not set
            entries[key] = options.get_session_config_entry(key)
    return entries


def test_the_server_asks_onnx_runtime_not_to_spin_and_predict_keeps_its_spinning(model_dir, tmp_path, capsys):  # noqa: F811
    from bigtransfer.cli import main as cli
    from bigtransfer.runtime.classifier import load_classifier

    assert cli(["export", "--model", str(model_dir), "--out", str(tmp_path / "onnx"), "--json"]) == 0
    capsys.readouterr()
    served = ServedModel(tmp_path / "onnx", "cpu")
    assert session_spinning(served.network.onnx_session) == {
        "session.intra_op.allow_spinning": "0", "session.inter_op.allow_spinning": "0"
    }  # fmt: skip
    assert session_spinning(load_classifier(tmp_path / "onnx").onnx_session) == {}  # predict, bench: as before


def predict_answers(metrics: str) -> float:
    """bigtransfer_requests_total{code="200",route="predict"} in a /metrics text (0 when absent)."""
    rows = [line for line in metrics.splitlines() if line.startswith("bigtransfer_requests_total{")]
    return sum(float(line.split()[-1]) for line in rows if 'code="200"' in line and 'route="predict"' in line)


def test_several_server_processes_answer_metrics_for_all_of_them(model_dir, photos, tmp_path):  # noqa: F811
    import concurrent.futures

    import httpx

    from helpers import ServeProcess

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    running = ServeProcess(model_dir, tmp_path / "server.log", "--processes", "2", env={"TMPDIR": str(scratch)})
    try:
        deadline = time.monotonic() + 120
        while running.log.read_text().count("serving cats") < 2:
            assert time.monotonic() < deadline, running.log.read_text()
            time.sleep(0.25)  # the second process may still be warming up
        (directory,) = scratch.glob("bigtransfer-metrics-*")  # made by the parent, before the processes start

        def ask(i: int) -> int:  # each on a new connection: either process may take it
            return httpx.post(f"{running.url}/predict", content=photos[i % 3].read_bytes(), timeout=60).status_code

        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            assert list(pool.map(ask, range(12))) == [200] * 12
        scrapes = [httpx.get(f"{running.url}/metrics", timeout=10).text for _ in range(8)]
        assert [predict_answers(text) for text in scrapes] == [12.0] * 8  # whichever process answered
        assert all("bigtransfer_queue_images 0.0" in text for text in scrapes)
        assert any(directory.glob("counter_*.db"))
    finally:
        code, log = running.stop()
    assert code == 0, log[-2000:]
    assert not list(scratch.glob("bigtransfer-metrics-*"))  # the parent removed the directory
