"""Find a checkpoint's files: in a local directory, or on the Hugging Face Hub (downloaded into its cache).

What a name or path is (a folder, a bundled model, a zoo name, a Hub repo) is decided once, by
`sources.locate`; this module then finds the files, and knows nothing about what they contain.
"""

from __future__ import annotations

import contextlib
import os
import socket
import tempfile
import time
import urllib.parse
from pathlib import Path
from typing import Any

from .._util.files import read_json

CONFIG_NAME = "config.json"
PROCESSOR_CONFIG_NAME = "preprocessor_config.json"
TRITON_CONFIG_NAME = "config.pbtxt"  # a model of a Triton model repository: OUT/<name>/config.pbtxt, OUT/<name>/1/
SAFE_WEIGHTS = "model.safetensors"
SAFE_INDEX = "model.safetensors.index.json"
TORCH_WEIGHTS = "pytorch_model.bin"
TORCH_INDEX = "pytorch_model.bin.index.json"
WEIGHT_CANDIDATES = (SAFE_WEIGHTS, SAFE_INDEX, TORCH_WEIGHTS, TORCH_INDEX)


class HubUnavailableError(OSError):
    """The Hub could not be reached and the file is not in the local cache."""


def _looks_like_local_path(name: str) -> bool:
    return name.startswith((".", "/", "~")) or os.sep + os.sep in name or name.count("/") > 1 or "\\" in name


PROBE_EXPIRY_S = 60.0  # how long one probe's answer stands: a network that comes back is used again within a minute
_probes: dict[tuple[str, float], tuple[float, bool]] = {}  # (endpoint, timeout) → (monotonic time, reachable)


def hub_reachable(endpoint: str, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to the Hub's host opens within `timeout` seconds, asked again once the last
    answer is PROBE_EXPIRY_S old (one failed probe must not keep a long-lived process offline for good).

    Without it an absent network costs ~25 s of huggingface_hub's retries before any message. Behind an
    HTTP(S) proxy the host is not reached directly, so the check is skipped there.
    """
    if any(os.environ.get(name) for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY")):
        return True
    probed = _probes.get((endpoint, timeout))
    if probed is not None and time.monotonic() - probed[0] < PROBE_EXPIRY_S:
        return probed[1]
    url = urllib.parse.urlsplit(endpoint)
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout).close()
        reachable = True
    except OSError:
        reachable = False
    _probes[endpoint, timeout] = (time.monotonic(), reachable)
    return reachable


def hub_download(repo_id: str, filename: str, subfolder: str, **hub_options: Any) -> Path | None:
    """Download (or find in the HF cache) one file; None when the repo has no such file. When the Hub
    cannot be reached, only the cache is used (as with HF_HUB_OFFLINE=1)."""
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    if not (constants.HF_HUB_OFFLINE or hub_options.get("local_files_only") or hub_reachable(constants.ENDPOINT)):
        hub_options = {**hub_options, "local_files_only": True}
    try:
        return Path(hf_hub_download(repo_id, filename, subfolder=subfolder or None, **hub_options))
    except GatedRepoError as error:
        raise OSError(
            f"{repo_id} is gated on the Hub: accept its terms and log in (`hf auth login`). {error}"
        ) from None
    except RepositoryNotFoundError:
        raise OSError(
            f"{repo_id!r} is neither a local directory nor a model repository on the Hugging Face Hub: "
            "check the spelling, or pass the path of a directory holding config.json and model.safetensors."
        ) from None
    except RevisionNotFoundError:
        raise OSError(
            f"Revision {hub_options.get('revision')!r} does not exist in {repo_id}: pass an existing branch, tag or commit."
        ) from None
    except HFValidationError:
        raise FileNotFoundError(
            f"{repo_id!r} is not an existing local path, nor a valid Hub id ('org/name'): check the path."
        ) from None
    except LocalEntryNotFoundError:
        raise HubUnavailableError(
            f"Could not reach the Hugging Face Hub for {repo_id!r} ({filename} is not in the local cache either): "
            f"download the model on a connected machine with `model.save_pretrained(dir)` or `hf download {repo_id} "
            "--local-dir DIR`, copy DIR here, and pass that directory path instead of the Hub id. Working offline, "
            "set HF_HUB_OFFLINE=1 to use only the cache without trying the network."
        ) from None
    except EntryNotFoundError:
        return None


def resolve_file(
    name_or_path: str | os.PathLike, filename: str, subfolder: str = "", **hub_options: Any
) -> Path | None:
    """Path of `filename` in a local directory or Hub repo, or None when that checkpoint lacks it."""
    local = Path(name_or_path).expanduser()
    if local.is_dir():
        candidate = local / subfolder / filename
        return candidate if candidate.is_file() else None
    name = str(name_or_path)
    if local.exists():
        raise FileNotFoundError(f"{name} is not a directory: pass a directory holding {CONFIG_NAME} and the weights.")
    if _looks_like_local_path(name):
        raise FileNotFoundError(
            f"{name} does not exist: check the path (a directory holding {CONFIG_NAME} and the weights)."
        )
    return hub_download(name, filename, subfolder, **hub_options)


def resolve_json(
    name_or_path: str | os.PathLike, filename: str, subfolder: str = "", **hub_options: Any
) -> Path | None:
    """A checkpoint's settings file: the path itself when it is a .json file, else `filename` inside it."""
    local = Path(name_or_path).expanduser()
    if local.is_file() and local.suffix == ".json":
        return local
    return resolve_file(name_or_path, filename, subfolder, **hub_options)


def resolve_config_file(name_or_path: str | os.PathLike, subfolder: str = "", **hub_options: Any) -> Path:
    path = resolve_json(name_or_path, CONFIG_NAME, subfolder, **hub_options)
    if path is None:
        message = f"{name_or_path} has no {CONFIG_NAME}: a BiT checkpoint needs one (save it with `save_pretrained`)."
        if any((Path(name_or_path) / subfolder / name).is_file() for name in WEIGHT_CANDIDATES):
            message += (
                " It holds weights only, as transformers.Trainer saves models that are not transformers' own classes: "
                "pass the model's config too (`from_pretrained(path, config=model.config)`), or write it beside the "
                "weights with `model.config.save_pretrained(path)`."
            )
        raise FileNotFoundError(message + triton_hint(Path(name_or_path) / subfolder))
    return path


def triton_hint(path: Path) -> str:
    """What to pass instead, when `path` is a Triton model repository or one of its models: predict and evaluate
    run the export in a model's version folder, which holds everything a BiT directory does."""
    if not path.is_dir():
        return ""
    if (path / TRITON_CONFIG_NAME).is_file():
        version = _latest_version(path)
        return f" It is a model of a Triton model repository: pass its version folder, {version}." if version else ""
    versions = [_latest_version(model) for model in sorted(path.iterdir()) if (model / TRITON_CONFIG_NAME).is_file()]
    versions = [version for version in versions if version is not None]
    return f" It is a Triton model repository: pass a model's version folder, e.g. {versions[0]}." if versions else ""


def _latest_version(model: Path) -> Path | None:
    versions = [p for p in model.iterdir() if p.is_dir() and p.name.isdigit()]
    return max(versions, key=lambda p: int(p.name)) if versions else None


def resolve_weight_files(name_or_path: str | os.PathLike, subfolder: str = "", **hub_options: Any) -> list[Path]:
    """The weight files of a checkpoint, preferring safetensors; shards are listed via their index."""
    for filename in WEIGHT_CANDIDATES:
        path = resolve_file(name_or_path, filename, subfolder, **hub_options)
        if path is None:
            continue
        if not filename.endswith(".index.json"):
            return [path]
        weight_map = read_json(path)["weight_map"]
        shard_names = sorted(set(weight_map.values()))
        shards = [resolve_file(name_or_path, shard, subfolder, **hub_options) for shard in shard_names]
        missing = [name for name, shard in zip(shard_names, shards) if shard is None]
        if missing:
            raise FileNotFoundError(f"{path} lists shards that are missing: {missing}; copy or download them too.")
        return shards
    message = f"{name_or_path} has no weights: expected one of {', '.join(WEIGHT_CANDIDATES)}."
    if (Path(name_or_path) / "export.json").is_file():
        message += (
            " It is an export directory (`bigtransfer export`): run it with predict, evaluate or pipeline(), "
            "and load PyTorch weights from the model it was exported from."
        )
    raise FileNotFoundError(message + triton_hint(Path(name_or_path) / subfolder))


MODEL_CARD_NAME = "README.md"
# Opens the body of the README.md that bigtransfer writes: a README without it is the user's, never replaced.
GENERATED_CARD_MARK = "<!-- bigtransfer:model-card"


def is_generated_card(text: str) -> bool:
    return GENERATED_CARD_MARK in text


def _users_card_on_hub(api: Any, repo_id: str, revision: str | None) -> bool:
    """Whether the repo already holds a README.md that bigtransfer did not write, which a push leaves as it is."""
    if not api.file_exists(repo_id, MODEL_CARD_NAME, revision=revision):
        return False
    card = Path(api.hf_hub_download(repo_id, MODEL_CARD_NAME, revision=revision))
    return not is_generated_card(card.read_text(encoding="utf-8", errors="replace"))


def _push_failed(repo_id: str, error: Exception) -> OSError:
    return OSError(
        f"Could not push to {repo_id!r} on the Hugging Face Hub ({type(error).__name__}: {error}): check "
        f"the connection and that your token may write there (`hf auth login`); or save with "
        f"`save_pretrained(DIR)` and upload later with `hf upload {repo_id} DIR`."
    )


class PushToHubMixin:
    """`push_to_hub` as transformers' models, configs and processors have it: `save_pretrained` into a
    temporary folder, then one commit to the repo (created when missing)."""

    def push_to_hub(
        self,
        repo_id: str,
        *,
        commit_message: str | None = None,
        commit_description: str | None = None,
        private: bool | None = None,
        token: bool | str | None = None,
        revision: str | None = None,
        create_pr: bool = False,
        folder: str | os.PathLike | None = None,
    ) -> Any:
        """Upload what `save_pretrained` writes, and a model's card (README.md) unless the repo has a README of
        its user's; returns huggingface_hub's CommitInfo (its URL as a str). `folder`: one this object was saved
        into already, with whatever belongs beside it (a training run's model/ holds its processor and training
        record too), pushed instead of a fresh save; its card is rewritten for the repo there, so that the
        folder holds what the repo does."""
        from huggingface_hub import HfApi

        api = HfApi(token=token)
        with tempfile.TemporaryDirectory() if folder is None else contextlib.nullcontext(folder) as pushed:
            if folder is None:
                self.save_pretrained(pushed)
            try:
                repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
            except Exception as error:  # huggingface_hub's HTTP errors, and its HTTP client's network errors
                raise _push_failed(repo_id, error) from error
            card_written = self._write_model_card(Path(pushed), repo_id)
            try:
                kept = card_written and _users_card_on_hub(api, repo_id, revision)
                return api.upload_folder(
                    repo_id=repo_id,
                    folder_path=pushed,
                    commit_message=commit_message or f"Upload {type(self).__name__}",
                    commit_description=commit_description,
                    revision=revision,
                    create_pr=create_pr,
                    **({"ignore_patterns": [MODEL_CARD_NAME]} if kept else {}),  # the user's README stays
                )
            except Exception as error:
                raise _push_failed(repo_id, error) from error

    def _write_model_card(self, directory: Path, repo_id: str | None) -> list[str]:
        """Write README.md into a folder being saved or pushed; returns what was written. Models have a card
        (models/model_card.py); configs and processors have none."""
        return []
