"""Running a classifier whatever its form: eager PyTorch, or an export directory run by ONNX Runtime, OpenVINO or
torch.export; `load_classifier`, which turns any MODEL into one; and `InferenceSettings`, how every inference entry
point runs it. Below inference (which predicts with it) and deploy (which checks and times the exports it writes)."""
