"""Deployment: export to ONNX and torch.export (weight standardisation folded), int8 quantisation, and running
the exported graphs."""
