"""Deployment: export to ONNX or torch.export (weight standardisation folded), int8 quantization, and
running an export directory with ONNX Runtime."""
