"""The transformers-shaped core: BitConfig, the layers, the three models and their typed outputs, and
`from_pretrained`/`save_pretrained`, which read and write through `checkpoints`."""
