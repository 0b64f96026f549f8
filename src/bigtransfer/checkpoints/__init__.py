"""Checkpoints as files and names: the catalogue (plain data), the Hub, downloads, conversion from the original
.npz and timm layouts, and reading/writing weights. The lowest layer: it knows no model class, and hands
the layers above plain settings and state dicts. The weights functions are re-exported here, where release
0.1 had them (`bigtransfer.checkpoints` was that module)."""

from .weights import adapt_prefix, match_state_dict, read_state_dict, resolve_dtype, write_state_dict

__all__ = ["adapt_prefix", "match_state_dict", "read_state_dict", "resolve_dtype", "write_state_dict"]
