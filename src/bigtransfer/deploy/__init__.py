"""Deployment: export to ONNX and torch.export (weight standardisation folded), Triton model repositories, int8
quantisation, and running the exported graphs."""
