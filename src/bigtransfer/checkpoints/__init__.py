"""Checkpoints as files and names: the catalogue (plain data), the Hub, downloads, conversion from the original
.npz and timm layouts, and reading/writing weights. The lowest layer: it knows no model class, and hands
the layers above plain settings and state dicts."""
