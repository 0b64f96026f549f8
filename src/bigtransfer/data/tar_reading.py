"""One tar shard's samples in order, read member by member with `tarfile` over webdataset's opener (files, `pipe:`
commands, http(s) URLs), so that a bad sample costs that sample and not its shard (2,000 images at the default
size): a member that is a link rather than a file, one beyond MAX_MEMBER_BYTES, or a name given twice makes its
sample unusable, with the reason; where the tar breaks off, the samples before stay readable."""

from __future__ import annotations

import contextlib
import tarfile
import zlib
from collections.abc import Iterator
from typing import Any, BinaryIO

from .._util.limits import EnvLimit
from .._util.package import optional_import

IMAGE_FIELDS = ("jpg", "jpeg", "png", "webp")  # a sample's image, the first of these it holds
LABEL_FIELDS = ("cls", "json")  # its class id (the WebDataset convention), or {"labels": [ids…]} (multi-label)
ERROR = "__error__"  # in a sample: why it cannot be used
MEMBER_ENV = "BIGTRANSFER_MAX_SHARD_MEMBER_BYTES"
# A member's size is in its header, read before its bytes: a 3 MB gzip tar can declare a 3 GiB image, which every
# loading worker would otherwise hold (twice, while it is joined). Far above any image `shard` stores (a PNG at
# --max-side 4096 is at most 48 MiB); other members are never read at all.
MAX_MEMBER_BYTES = EnvLimit(MEMBER_ENV, 64 * 2**20)
MAX_HEADER_BYTES = 2**20  # a long name or extended (pax) header, which tarfile itself reads whole: paths are < 4 KiB
HEADER_TYPES = (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK, tarfile.XHDTYPE, tarfile.XGLTYPE,
                tarfile.SOLARIS_XHDTYPE)  # fmt: skip
LINK_KINDS = {tarfile.SYMTYPE: "a symbolic link", tarfile.LNKTYPE: "a hard link"}


class DamagedShard(ValueError):
    """A shard that cannot be read past some point (truncated, not a tar, a command or download that failed)."""


class _BoundedHeader(tarfile.TarInfo):
    """A member header whose own extension (a long name, pax records) is refused past MAX_HEADER_BYTES before
    tarfile reads it into memory (the extension point tarfile documents for `_proc_*` methods)."""

    def _proc_member(self, tarfile_: tarfile.TarFile) -> tarfile.TarInfo:
        if self.type in HEADER_TYPES and self.size > MAX_HEADER_BYTES:
            raise tarfile.ReadError(f"a {self.size:,}-byte member header, beyond the limit of {MAX_HEADER_BYTES:,}")
        return super()._proc_member(tarfile_)


def webdataset_library():
    return optional_import("webdataset", "Reading or writing tar shards needs webdataset", "shards")


def read_samples(url: str) -> Iterator[dict[str, Any]]:
    """The samples of one shard, in order, as webdataset groups them (members named `<key>.<field>`, a key's
    members together): {"__key__", "__url__", field: bytes…}, with ERROR for a sample that cannot be used.
    Raises DamagedShard where the shard breaks off, after the samples before it."""
    try:
        stream = webdataset_library().gopen(url)
    except (OSError, ValueError) as error:
        raise DamagedShard(f"cannot open {url} ({error})") from None
    try:
        yield from _samples_in(stream, url)
    finally:
        with contextlib.suppress(OSError):  # a failed command was reported when its output ended
            stream.close()


def _samples_in(stream: BinaryIO, url: str) -> Iterator[dict[str, Any]]:
    key_of = webdataset_library().tariterators.base_plus_ext  # webdataset's `<key>.<field>` split
    sample: dict[str, Any] | None = None
    names: set[str] = set()  # the fields the current sample has named, read or not
    done = 0
    try:
        with tarfile.open(fileobj=stream, mode="r|*", tarinfo=_BoundedHeader) as tar:
            for member in tar:
                tar.members = []  # stream mode would keep every header otherwise
                key, field = key_of(member.name)
                if key is None or member.isdir():
                    continue
                field = field.lower()
                if sample is None or key != sample["__key__"]:
                    if sample is not None:
                        yield sample
                        done += 1
                    sample, names = {"__key__": key, "__url__": url}, set()
                problem = _problem(member, field in names)
                names.add(field)
                if problem:
                    sample.setdefault(ERROR, f"sample {key!r} is unusable: {problem}")
                elif ERROR not in sample and field in IMAGE_FIELDS + LABEL_FIELDS:
                    sample[field] = tar.extractfile(member).read()
    except (tarfile.TarError, EOFError, OSError, zlib.error) as error:
        if sample is not None and ERROR in sample:  # unusable already (a member refused from its header): say why
            yield sample
            done += 1
        raise DamagedShard(
            f"{url} breaks off after {done} samples ({error}): the file is truncated or damaged"
        ) from None
    if sample is not None:
        yield sample


def _problem(member: tarfile.TarInfo, repeated: bool) -> str | None:
    """Why a member makes its sample unusable, judged from its header alone."""
    if not member.isreg():
        return f"{member.name} is {LINK_KINDS.get(member.type, 'a special file')}, not a file"
    if repeated:
        return f"it holds {member.name} twice"
    if member.size > (limit := MAX_MEMBER_BYTES()):
        return f"{member.name} is {member.size:,} bytes, beyond the limit of {limit:,} ({MEMBER_ENV})"
    return None
