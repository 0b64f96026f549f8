"""`bigtransfer serve REPO`: a folder of models (model folders, runs, exports, Triton's layout with versions) found
by name and version, each version answering apart; the repository extension (index, load, unload) as Triton
speaks it, driven by tritonclient.http; predict and evaluate picking a repository's model by --model-name."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import shutil
import threading
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from bigtransfer import BitConfig, BitForImageClassification
from bigtransfer.cli import main as cli
from bigtransfer.runtime.discovery import discover, served_versions
from bigtransfer.serve.app import InferenceServer
from bigtransfer.serve.model import ServedModel
from bigtransfer.serve.repository import Repository
from bigtransfer.serve.runner import _repository
from bigtransfer.serve.service import Limits, ServeError
from bigtransfer.train.augment import eval_processor
from helpers import TINY, ServeProcess, randomize_norms, ready_client

ALL_VERSIONS = "\nversion_policy: { all { } }\n"


def tiny_model(folder: Path, labels: int, seed: int) -> Path:
    torch.manual_seed(seed)
    config = BitConfig(**{**TINY, "num_labels": labels}, id2label={i: f"class {i}" for i in range(labels)})
    randomize_norms(BitForImageClassification(config), seed).save_pretrained(folder)
    eval_processor(32).save_pretrained(folder)
    return folder


def run_cli(*argv: str) -> tuple[int, str]:
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = cli(list(argv))
    return code, stdout.getvalue()


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> list[Path]:
    from skimage import data

    folder = tmp_path_factory.mktemp("photos")
    paths = []
    for name in ("chelsea", "coffee"):
        Image.fromarray(getattr(data, name)()).resize((48, 40)).save(folder / f"{name}.jpg", quality=90)
        paths.append(folder / f"{name}.jpg")
    return paths


@pytest.fixture(scope="module")
def repository(tmp_path_factory) -> Path:
    """REPO/cats: a model folder (3 labels); REPO/digits: Triton's layout as `export --format triton` writes it
    (5 labels), with a version 2 of other weights and a version_policy serving both; a file and an unfinished
    export beside them, which are no models."""
    work = tmp_path_factory.mktemp("repository")
    repository = work / "REPO"
    digits_1, digits_2 = tiny_model(work / "digits-1", 5, 1), tiny_model(work / "digits-2", 5, 2)
    assert run_cli("export", str(digits_1), str(repository), "--format", "triton", "--name", "digits")[0] == 0
    assert run_cli("export", str(digits_2), str(work / "onnx-2"))[0] == 0
    shutil.move(work / "onnx-2", repository / "digits" / "2")
    with (repository / "digits" / "config.pbtxt").open("a") as config:
        config.write(ALL_VERSIONS)
    tiny_model(repository / "cats", 3, 0)
    (repository / "README.txt").write_text("models for the tests\n")
    (repository / ".cats.abc123.partial").mkdir()  # what an export under way stages: hidden, passed over
    return repository


def scores_by_predict(repository: Path, photo: Path, name: str, version: str | None = None) -> dict[str, float]:
    options = ["--model-version", version] if version else []
    code, printed = run_cli("predict", str(photo), "--model", str(repository), "--model-name", name, *options,
                            "--top-k", "5", "--json", "--workers", "0")  # fmt: skip
    assert code == 0
    return {row["label"]: row["score"] for row in json.loads(printed)["results"][0]["predictions"]}


# -- discovery ------------------------------------------------------------------------------------------------


def test_a_repository_holds_its_model_folders_and_triton_models_by_name_and_version(repository):
    assert discover(repository) == {
        "cats": {"1": repository / "cats"},
        "digits": {"1": repository / "digits" / "1", "2": repository / "digits" / "2"},
    }
    assert discover(repository / "digits") == {"digits": discover(repository)["digits"]}  # a Triton model alone


def test_a_folder_that_is_one_model_or_a_run_is_one_model_named_for_it(repository, tmp_path):
    assert discover(repository / "cats") == {"cats": {"1": repository / "cats"}}
    shutil.copytree(repository / "cats", tmp_path / "food" / "model")
    assert discover(tmp_path / "food") == {"food": {"1": tmp_path / "food" / "model"}}
    shutil.copytree(tmp_path / "food", tmp_path / "runs" / "food run")
    assert discover(tmp_path / "runs") == {"food_run": {"1": tmp_path / "runs" / "food run" / "model"}}


@pytest.mark.parametrize(
    "policy, served",
    [("", [3]), ("version_policy: { all: {} }", [1, 2, 3]), ("version_policy { latest { num_versions: 2 } }", [2, 3]),
     ("version_policy: { specific: { versions: [1, 3] } }", [1, 3]), ("# version_policy: { all: {} }", [3])],
)  # fmt: skip
def test_versions_are_served_as_config_pbtxts_version_policy_says_latest_by_default(policy, served):
    assert served_versions(f'name: "m"\nplatform: "onnxruntime_onnx"\n{policy}\n', [1, 2, 3]) == served


def test_a_repository_that_holds_no_model_says_what_it_expected(tmp_path):
    with pytest.raises(ValueError, match=r"is empty: serve and --model-name take one model or a repository of model"):
        discover(tmp_path)
    (tmp_path / "notes").mkdir()
    with pytest.raises(ValueError, match=r"holds no model: .*export folders \(model.onnx.*Triton models \(config"):
        discover(tmp_path)


def test_two_models_with_one_name_are_refused_naming_both_folders(repository, tmp_path):
    shutil.copytree(repository / "cats", tmp_path / "my model")
    shutil.copytree(repository / "cats", tmp_path / "my_model")
    with pytest.raises(ValueError, match=r"named 'my_model' \(my model/ and my_model/\): rename one folder"):
        discover(tmp_path)


# -- the repository -------------------------------------------------------------------------------------------


def settings(model: Path, control: str = "none", load: tuple[str, ...] = (), name: str | None = None) -> dict:
    return {"model": str(model), "device": "cpu", "bf16": False, "name": name, "limits": {}, "model_control": control,
            "load_models": list(load)}  # fmt: skip


def test_without_explicit_model_control_load_and_unload_are_refused_as_triton_does(repository):
    with ready_client(InferenceServer(_repository(settings(repository))).app()) as client:
        for action in ("load", "unload"):
            answer = client.post(f"/v2/repository/models/cats/{action}")
            assert answer.status_code == 503 and "start the server with --model-control-mode explicit" in answer.text
        assert client.get("/v2/models/cats/ready").status_code == 200  # still served


def test_explicit_mode_loads_only_the_models_asked_for_at_start(repository):
    with ready_client(InferenceServer(_repository(settings(repository, "explicit", ("digits",)))).app()) as client:
        index = client.post("/v2/repository/index").json()
        assert [(row["name"], row["version"], row["state"]) for row in index] == [
            ("cats", "1", "UNAVAILABLE"), ("digits", "1", "READY"), ("digits", "2", "READY")]  # fmt: skip
        assert [row["name"] for row in client.post("/v2/repository/index", json={"ready": True}).json()] == [
            "digits", "digits"]  # fmt: skip
        assert client.get("/v2/health/ready").status_code == 200  # as Triton: ready, serving what it loaded
        assert client.get("/v2/models/cats/ready").status_code == 503


def test_a_model_being_reloaded_answers_meanwhile_and_the_server_stays_ready(repository, photos):
    """A fix: the reload set the model's state to LOADING, which answered 503 and made the server unready."""
    reading, release = threading.Event(), threading.Event()

    def slow_second_read(source, name):
        model = ServedModel(source, "cpu", name=name)
        if repository_under_test.entries[name].services:  # the reload, not the first read
            reading.set()
            release.wait(30)
        return model

    repository_under_test = Repository(Limits(), slow_second_read, explicit=True)
    repository_under_test.add("cats", {"1": repository / "cats"})
    repository_under_test.load_now("cats")

    async def scenario():
        await repository_under_test.start()
        reload = asyncio.ensure_future(repository_under_test.load("cats"))
        assert await asyncio.to_thread(reading.wait, 30)
        service = repository_under_test.get("cats")  # served by the version loaded before
        assert repository_under_test.ready and service.ready
        assert len(await service.classify(photos[0].read_bytes(), 3)) == 3
        release.set()
        await reload
        assert repository_under_test.get("cats") is not service and not service.ready
        await repository_under_test.stop()

    asyncio.run(scenario())


def test_a_failed_load_leaves_the_loaded_model_serving(repository, tmp_path):
    folder = tmp_path / "REPO"
    shutil.copytree(repository / "cats", folder / "cats")
    served = Repository(Limits(), lambda source, name: ServedModel(source, "cpu", name=name), explicit=True,
                        find=lambda: discover(folder))  # fmt: skip
    served.add("cats", discover(folder)["cats"])
    served.load_now("cats")

    async def scenario():
        await served.start()
        (folder / "cats" / "config.json").write_text("{ not json")
        with pytest.raises(ServeError, match="Failed to load model 'cats'") as failure:
            await served.load("cats")
        assert failure.value.status == 400 and served.get("cats").ready
        assert served.index() == [{"name": "cats", "version": "1", "state": "READY", "reason": ""}]
        with pytest.raises(ServeError, match="the repository has no such model") as unknown:
            await served.load("dogs")
        assert unknown.value.status == 400
        await served.stop()

    asyncio.run(scenario())


# -- a real server, driven by tritonclient.http ------------------------------------------------------------


@pytest.fixture(scope="module")
def server(repository, tmp_path_factory):
    running = ServeProcess(repository, tmp_path_factory.mktemp("log") / "server.log", "--model-control-mode",
                           "explicit", "--load-model", "*")  # fmt: skip
    yield running
    code, log = running.stop()
    assert code == 0, log[-3000:]


def served_scores(server, name: str, photo: Path, version: str = "") -> dict[str, float]:
    """The scores of `name` (at `version`) for `photo`, by label, asked with tritonclient.http."""
    import tritonclient.http as triton

    client = triton.InferenceServerClient(f"127.0.0.1:{server.port}")
    image = triton.InferInput("image", [1], "BYTES")
    image.set_data_from_numpy(np.array([photo.read_bytes()], dtype=np.object_))
    result = client.infer(name, [image], model_version=version, outputs=[triton.InferRequestedOutput("scores")])
    answered = result.get_response()
    assert answered["model_name"] == name and answered["model_version"] == (
        version or max(client.get_model_metadata(name)["versions"], key=int)
    )  # the version that answered, not always "1"
    metadata = httpx.get(f"{server.url}/info?model={name}").json()
    return dict(zip(metadata["labels"], result.as_numpy("scores")[0].tolist()))


def same_top(served: dict[str, float], predicted: dict[str, float]) -> bool:
    best = sorted(served, key=served.get, reverse=True)[: len(predicted)]
    return best == list(predicted) and np.allclose([served[k] for k in best], list(predicted.values()), atol=1e-5)


def test_both_models_answer_what_predict_gives_for_each(server, repository, photos):
    import tritonclient.http as triton

    client = triton.InferenceServerClient(f"127.0.0.1:{server.port}")
    assert "model_repository" in client.get_server_metadata()["extensions"]
    assert client.get_model_metadata("cats")["outputs"][0]["shape"] == [-1, 3]
    assert client.get_model_metadata("digits")["outputs"][0]["shape"] == [-1, 5]
    for photo in photos:
        assert same_top(served_scores(server, "cats", photo), scores_by_predict(repository, photo, "cats"))
        assert same_top(served_scores(server, "digits", photo), scores_by_predict(repository, photo, "digits"))


def test_versions_of_a_triton_model_answer_apart(server, repository, photos):
    import tritonclient.http as triton

    client = triton.InferenceServerClient(f"127.0.0.1:{server.port}")
    assert client.get_model_metadata("digits")["versions"] == ["1", "2"]
    assert client.get_model_metadata("digits", "1")["versions"] == ["1", "2"]
    assert client.is_model_ready("digits", "1") and client.is_model_ready("digits", "2")
    first, second = (served_scores(server, "digits", photos[0], version) for version in ("1", "2"))
    assert same_top(first, scores_by_predict(repository, photos[0], "digits", "1"))
    assert same_top(second, scores_by_predict(repository, photos[0], "digits", "2"))
    assert not np.allclose(list(first.values()), list(second.values()), atol=1e-3)
    assert served_scores(server, "digits", photos[0]) == second  # no version: the highest
    unknown = httpx.post(f"{server.url}/v2/models/digits/versions/3/infer", json={"inputs": []})
    assert unknown.status_code == 404 and unknown.json()["error"].endswith("has no version 3: it has 1, 2.")


def test_unload_and_load_round_trip_through_the_index(server, photos):
    import tritonclient.http as triton
    from tritonclient.utils import InferenceServerException

    client = triton.InferenceServerClient(f"127.0.0.1:{server.port}")
    before = served_scores(server, "cats", photos[0])
    client.unload_model("cats")
    assert not client.is_model_ready("cats") and client.is_model_ready("digits") and client.is_server_ready()
    assert {"name": "cats", "version": "1", "state": "UNAVAILABLE", "reason": "unloaded"} in (
        client.get_model_repository_index()
    )
    with pytest.raises(InferenceServerException, match="not ready"):
        served_scores(server, "cats", photos[0])
    client.unload_model("cats")  # not loaded: nothing to do, as in Triton
    client.load_model("cats")
    assert client.is_model_ready("cats") and served_scores(server, "cats", photos[0]) == before
    assert {"name": "cats", "version": "1", "state": "READY", "reason": ""} in client.get_model_repository_index()


def test_a_model_exported_into_the_repository_while_serving_loads_on_request(server, repository, tmp_path, photos):
    import tritonclient.http as triton

    client = triton.InferenceServerClient(f"127.0.0.1:{server.port}")
    assert run_cli("export", str(tiny_model(tmp_path / "birds", 4, 3)), str(repository), "--format", "triton")[0] == 0
    assert "birds" not in {row["name"] for row in client.get_model_repository_index()}
    client.load_model("birds")
    assert client.is_model_ready("birds") and client.get_model_metadata("birds")["outputs"][0]["shape"] == [-1, 4]
    assert same_top(served_scores(server, "birds", photos[0]), scores_by_predict(repository, photos[0], "birds"))


def test_predict_and_info_name_their_model_when_there_are_several(server, photos):
    answer = httpx.post(f"{server.url}/predict", content=photos[0].read_bytes())
    assert answer.status_code == 400 and "several models (" in answer.json()["error"]
    assert "name one with ?model=NAME" in answer.json()["error"]
    picked = httpx.post(f"{server.url}/predict?model=cats&top_k=2", content=photos[0].read_bytes(), timeout=30)
    assert picked.status_code == 200 and picked.json()["model"] == "cats" and len(picked.json()["labels"]) == 2
    assert httpx.get(f"{server.url}/info?model=digits").json()["name"] == "digits"
    assert httpx.get(f"{server.url}/info?model=nope").status_code == 404


# -- the command line -----------------------------------------------------------------------------------------


def test_predict_on_a_repository_of_several_models_without_a_name_lists_them(repository, photos, capsys):
    assert cli(["predict", str(photos[0]), "--model", str(repository)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "holds several models (" in err and "cats, digits" in err
    assert "pick one with --model-name NAME" in err
    assert cli(["predict", str(photos[0]), "--model", str(repository), "--model-name", "dogs"]) == 2
    err = capsys.readouterr().err  # (birds too, once exported into the repository by the test above)
    assert "has no model named 'dogs': it has " in err and "cats, digits." in err


def test_evaluate_runs_the_named_model_of_a_repository(repository, tmp_path):
    data = tmp_path / "data"
    for label in ("class 0", "class 1"):
        (data / label).mkdir(parents=True)
        Image.new("RGB", (40, 40), (200, 30 * len(label), 10)).save(data / label / "a.png")
    code, printed = run_cli("evaluate", "--model", str(repository), "--model-name", "digits", "--model-version", "1",
                            "--data", str(data), "--json", "--workers", "0", "--quiet")  # fmt: skip
    assert code == 0 and json.loads(printed)["examples"] == 2


@pytest.mark.parametrize(
    "options, message",
    [(["--name", "x"], "--name names the one model of `serve MODEL`; the models of the repository"),
     (["--load-model", "cats"], "--load-model picks the models loaded at start with --model-control-mode explicit"),
     (["--model-control-mode", "explicit", "--load-model", "dogs"], "--load-model dogs: the repository has no such"),
     (["--model-control-mode", "explicit", "--load-model", "*", "--load-model", "cats"], "give it alone")],
)  # fmt: skip
def test_serve_options_that_do_not_fit_the_repository_fail_in_one_line(repository, options, message, capsys):
    from helpers import free_port

    assert cli(["serve", str(repository), "--port", str(free_port()), *options]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err
