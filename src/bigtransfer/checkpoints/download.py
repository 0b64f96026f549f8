"""Downloading checkpoint files once into a local cache: progress bar, resume, size/hash checks, offline use."""

from __future__ import annotations

import hashlib
import http.client
import os
import urllib.error
import urllib.request
from pathlib import Path

from tqdm.auto import tqdm

from .._util.files import exclusive

CHUNK = 1 << 20
ATTEMPTS = 3


def cache_dir() -> Path:
    """$BIGTRANSFER_CACHE, else $HF_HOME/bigtransfer, else $XDG_CACHE_HOME/bigtransfer, else ~/.cache/bigtransfer."""
    if os.environ.get("BIGTRANSFER_CACHE"):
        return Path(os.environ["BIGTRANSFER_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "bigtransfer"
    return Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "bigtransfer"


def is_offline() -> bool:
    return any(
        os.environ.get(name, "").lower() in ("1", "true", "yes") for name in ("BIGTRANSFER_OFFLINE", "HF_HUB_OFFLINE")
    )


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _fetch_once(url: str, part: Path, progress: bool) -> int | None:
    """Append the rest of `url` to `part` (an HTTP Range request when part exists); return the total size."""
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    with urllib.request.urlopen(request, timeout=60) as response:
        if have and response.status != 206:  # the server ignored the range: start over
            have = 0
        length = response.headers.get("Content-Length")
        total = have + int(length) if length is not None else None
        with open(part, "ab" if have else "wb") as file, tqdm(
            total=total, initial=have, unit="B", unit_scale=True, desc=part.name.removesuffix(".part"),
            disable=not progress,
        ) as bar:  # fmt: skip
            for chunk in iter(lambda: response.read(CHUNK), b""):
                file.write(chunk)
                bar.update(len(chunk))
    return total


def download(url: str, target: Path, size: int | None = None, sha256: str | None = None, progress: bool = True) -> Path:
    """Download `url` to `target` unless it is already there; a broken transfer resumes (up to 3 tries).

    The data lands in `target.part` and is renamed only once complete and verified, so `target`
    is never half-written; a bad size or hash deletes the part file so the next call starts clean.
    """
    if target.is_file():
        return target
    if is_offline():
        raise OSError(
            _manual_download_message(url, target, "offline mode is on (BIGTRANSFER_OFFLINE / HF_HUB_OFFLINE)")
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    with exclusive(target.with_name(target.name + ".lock")):
        if target.is_file():  # another process finished it while this one waited
            return target
        _download_to(url, target, size, sha256, progress)
    return target


def _download_to(url: str, target: Path, size: int | None, sha256: str | None, progress: bool) -> None:
    """The transfer itself (the caller holds the lock): into target.part, verified, then renamed."""
    part = target.with_name(target.name + ".part")
    total = None
    for attempt in range(1, ATTEMPTS + 1):
        try:
            total = _fetch_once(url, part, progress)
        except (http.client.IncompleteRead, ConnectionError, TimeoutError) as error:
            if attempt == ATTEMPTS:
                raise OSError(
                    f"Download of {url} kept breaking off ({error}); run the same command again to resume."
                ) from None
            continue
        except urllib.error.HTTPError as error:
            part.unlink(missing_ok=True)
            raise OSError(f"{url} answered HTTP {error.code} ({error.reason}).") from None
        except urllib.error.URLError as error:
            raise OSError(
                _manual_download_message(url, target, f"the server cannot be reached ({error.reason})")
            ) from None
        if total is None or part.stat().st_size >= total:
            break  # complete (a connection that closes early just ends the body: resume from where it stopped)
    got = part.stat().st_size
    expected = size or total
    if expected is not None and got != expected:
        if got > expected:
            part.unlink()
        raise OSError(f"Download of {url} has {got} bytes, expected {expected}; run the same command again to resume.")
    if sha256 is not None and _sha256(part) != sha256:
        part.unlink()
        raise OSError(
            f"Download of {url} does not have the published SHA-256; the partial file was removed, try again."
        )
    os.replace(part, target)


def _manual_download_message(url: str, target: Path, reason: str) -> str:
    return (
        f"Cannot download {url}: {reason}, and it is not in the cache. Download it on a connected machine and "
        f"place it at {target} (or pass the local file path instead of the model name)."
    )
