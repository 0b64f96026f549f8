"""Deployment: export to ONNX, OpenVINO and torch.export (weight standardisation folded), Triton model repositories,
int8 quantisation and bench. Running the exported graphs is runtime's, below."""
