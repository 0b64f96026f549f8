"""The container recipe (Dockerfile) and the Kubernetes / KServe manifests (deploy/kubernetes/) say what the
server does: their commands parse with `bigtransfer serve`'s own options, every probe asks a route that answers
200, the ports are the ones the server listens on, SIGTERM's drain fits the grace period, and every pip install
is held to scripts/constraints.txt. (No docker or cluster here: what they would run is checked piece by piece.)"""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
from pathlib import Path

import pytest
import tomllib
import yaml

from bigtransfer.cli import build_parser
from bigtransfer.cli._options import resolve_positionals
from bigtransfer.serve.model import ServedModel
from helpers import client_for, save_tiny_classifier

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
MANIFESTS = sorted((ROOT / "deploy" / "kubernetes").glob("*.yaml"))
CONSTRAINTS = "scripts/constraints.txt"


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, its arguments) of a Dockerfile, continued lines joined, comments left out."""
    text = re.sub(r"\\\n", " ", "\n".join(line for line in dockerfile.read_text().splitlines()
                                          if not line.lstrip().startswith("#")))  # fmt: skip
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in text.splitlines() if line.strip()]


def serve_options(argv: list[str]):
    """`argv` (bigtransfer's arguments: serve MODEL …) as `bigtransfer serve` parses them (cli.main's way, the
    positional MODEL folded into --model)."""
    assert argv[0] == "serve", argv
    parser = build_parser()
    options = parser.parse_args(argv)
    resolve_positionals(options, parser.command_parser("serve"))
    return options


def containers() -> list[tuple[dict, dict, dict]]:
    """(document, pod spec, container) of every container the manifests run."""
    found = []
    for manifest in MANIFESTS:
        for document in yaml.safe_load_all(manifest.read_text()):
            if document["kind"] == "Deployment":
                pod = document["spec"]["template"]["spec"]
            elif document["kind"] == "InferenceService":
                pod = document["spec"]["predictor"]
            else:
                continue
            found += [(document, pod, container) for container in pod["containers"]]
    return found


def container_options(container: dict):
    assert container["command"] == ["bigtransfer"], container["command"]
    return serve_options(container["args"])


def probe_port(container: dict, probe: dict) -> int:
    port = probe["httpGet"]["port"]
    named = {declared["name"]: declared["containerPort"] for declared in container["ports"]}
    return named[port] if isinstance(port, str) else port


def healthcheck_url() -> str:
    (check,) = [arguments for instruction, arguments in instructions(DOCKERFILE) if instruction == "HEALTHCHECK"]
    (url,) = re.findall(r"http://[^'\"\s]+", check)
    return url


def probe_paths() -> set[str]:
    paths = {re.sub(r"^http://[^/]+", "", healthcheck_url())}
    for _, _, container in containers():
        paths |= {container[kind]["httpGet"]["path"] for kind in ("startupProbe", "livenessProbe", "readinessProbe")}
    return paths


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    return ServedModel(save_tiny_classifier(tmp_path_factory.mktemp("deployed") / "cats"), "cpu")


def test_every_probe_asks_a_route_of_the_server_that_answers_200(served):
    paths = probe_paths()
    assert {"/v2/health/live", "/v2/health/ready"} <= paths
    with client_for(served) as client:
        for path in sorted(paths):
            assert client.get(path).status_code == 200, path


def test_the_dockerfiles_command_is_a_serve_command_on_all_interfaces_at_its_exposed_and_checked_port():
    steps = instructions(DOCKERFILE)
    (command,) = [json.loads(arguments) for instruction, arguments in steps if instruction == "CMD"]
    assert command[0] == "bigtransfer"
    options = serve_options(command[1:])
    assert options.host == "0.0.0.0" and options.model == "/models"
    exposed = {int(port.split("/")[0]) for instruction, arguments in steps if instruction == "EXPOSE"
               for port in arguments.split()}  # fmt: skip
    assert exposed == {options.port, getattr(options, "grpc_port", None)} - {None}
    assert healthcheck_url().startswith(f"http://127.0.0.1:{options.port}/")
    assert all(arguments.startswith("python:3.11-slim") for instruction, arguments in steps if instruction == "FROM")
    (user,) = [arguments for instruction, arguments in steps if instruction == "USER"]
    assert user not in ("root", "0")


def test_every_pip_install_in_the_dockerfile_is_held_to_the_constraints_and_torch_is_the_cpu_build():
    steps = instructions(DOCKERFILE)
    runs = [arguments for instruction, arguments in steps if instruction == "RUN"]
    installs = [words for run in runs for command in re.split(r"&&|;", run)
                if "install" in (words := shlex.split(command)) and "pip" in words]  # fmt: skip
    assert len(installs) == 2
    for words in installs:
        assert words[words.index("-c") + 1] == CONSTRAINTS, words
    assert "torch==2.13.0+cpu" in installs[0] and "https://download.pytorch.org/whl/cpu" in installs[0]
    (package,) = [word for word in installs[1] if word.startswith(".[")]
    extras = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    assert set(package[2:-1].split(",")) <= extras and "serve" in package
    copied = [arguments.split()[0] for instruction, arguments in steps if instruction == "COPY" and "--from" not in
              arguments]  # fmt: skip
    assert copied.index(CONSTRAINTS) == 0  # before the first install
    ignore = [line for line in (ROOT / ".dockerignore").read_text().splitlines() if line and not line.startswith("#")]
    for source in copied:
        kept = False  # .dockerignore: the last matching line decides
        for pattern in ignore:
            if fnmatch.fnmatch(source, pattern.lstrip("!").rstrip("/")):
                kept = pattern.startswith("!")
        assert kept and (ROOT / source).exists(), f"{source} is not in the build context"


@pytest.mark.parametrize("index", range(len(containers())))
def test_each_manifest_runs_a_serve_command_whose_ports_probes_and_grace_period_agree(index):
    _, pod, container = containers()[index]
    options = container_options(container)
    assert options.host == "0.0.0.0"
    declared = {port["containerPort"] for port in container["ports"]}
    assert declared == {options.port, getattr(options, "grpc_port", None)} - {None}
    for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert probe_port(container, container[kind]) == options.port, kind
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 120  # the model loads before the port opens
    pause = container.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", ["sleep", "0"])
    assert pause[0] == "sleep"
    # uvicorn's drain takes up to --timeout + 1 s, after the preStop pause
    assert pod["terminationGracePeriodSeconds"] > float(pause[1]) + options.timeout + 1
    assert {"cpu", "memory"} <= set(container["resources"]["requests"]) and "memory" in container["resources"]["limits"]


def test_the_service_sends_its_ports_to_the_deployments_pods():
    documents = [document for manifest in MANIFESTS for document in yaml.safe_load_all(manifest.read_text())]
    (deployment,) = [document for document in documents if document["kind"] == "Deployment"]
    (service,) = [document for document in documents if document["kind"] == "Service"]
    template = deployment["spec"]["template"]
    assert service["spec"]["selector"].items() <= template["metadata"]["labels"].items()
    assert deployment["spec"]["selector"]["matchLabels"] == service["spec"]["selector"]
    (container,) = template["spec"]["containers"]
    names = {port["name"] for port in container["ports"]}
    assert {port["targetPort"] for port in service["spec"]["ports"]} == names


def test_the_inference_service_is_a_kserve_v2_custom_predictor_with_the_ports_kserve_expects():
    (manifest,) = [path for path in MANIFESTS if "InferenceService" in path.read_text()]
    (service,) = yaml.safe_load_all(manifest.read_text())
    assert service["apiVersion"] == "serving.kserve.io/v1beta1"
    (container,) = service["spec"]["predictor"]["containers"]
    assert container["name"] == "kserve-container"  # the container KServe reads PROTOCOL and STORAGE_URI from
    env = {variable["name"]: variable["value"] for variable in container["env"]}
    assert env["PROTOCOL"] == "v2" and env["STORAGE_URI"].startswith("pvc://")
    options = container_options(container)
    assert options.model == "/mnt/models" and options.port == 8080  # where KServe puts the model; its REST port
    rest, *others = container["ports"]  # KServe: the first port is REST (behind port 80), gRPC ports say so by name
    assert rest["containerPort"] == options.port and not re.search("grpc|h2c", rest["name"])
    assert all(re.search("grpc|h2c", port["name"]) and port["containerPort"] == options.grpc_port for port in others)
