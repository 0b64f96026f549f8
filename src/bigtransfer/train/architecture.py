"""The network `pretrain` builds, named as its options name it: --arch R50x1 … R152x4, or custom with --depths,
--hidden-sizes and --embedding-size; --num-groups for either. Both ways, so that a run file records a `BitConfig`
in the options that build it again."""

from __future__ import annotations

from typing import Any

from ..checkpoints.catalogue import ARCHITECTURES, architecture_of
from ..models.config import BitConfig

LABELS = ("id2label", "label2id", "problem_type")  # the head's, which pre-training sets from the data


def architecture_config(
    arch: str = "R50x1",
    depths: str | None = None,
    hidden_sizes: str | None = None,
    embedding_size: int = 64,
    num_groups: int = 32,
) -> BitConfig:
    """The BitConfig these options describe (depths and hidden sizes as comma-separated text); the defaults are
    pretrain's."""
    if arch == "custom":
        if not (depths and hidden_sizes):
            raise ValueError("--arch custom needs --depths and --hidden-sizes.")
        return BitConfig(depths=[int(d) for d in depths.split(",")], hidden_sizes=[int(w) for w in hidden_sizes.split(",")],
                         embedding_size=embedding_size, num_groups=num_groups)  # fmt: skip
    if arch in ARCHITECTURES:
        depths_of_stages, width_factor = ARCHITECTURES[arch]
        return BitConfig(depths=depths_of_stages, width_factor=width_factor, num_groups=num_groups)
    raise ValueError(f"Unknown --arch {arch!r}: use one of {', '.join(ARCHITECTURES)} or 'custom'.")


def architecture_options(config: BitConfig) -> tuple[dict[str, Any], bool]:
    """(the options that name `config`'s network, whether they build it exactly): a BiT architecture by its name
    where that builds it, else custom; False when the config holds more than the options can say (another layer
    type, padding, a drop-path rate …)."""
    common = {"embedding_size": config.embedding_size, "num_groups": config.num_groups}
    custom = {"arch": "custom", "depths": ",".join(map(str, config.depths)),
              "hidden_sizes": ",".join(map(str, config.hidden_sizes)), **common}  # fmt: skip
    named = architecture_of(config)
    candidates = ([{"arch": named, "depths": None, "hidden_sizes": None, **common}] if named else []) + [custom]
    for options in candidates:
        if _network(architecture_config(**options)) == _network(config):
            return options, True
    return custom, False


def _network(config: BitConfig) -> dict[str, Any]:
    return {key: value for key, value in config.to_dict().items() if key not in LABELS}
