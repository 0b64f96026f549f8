"""Test-session setup: the torchvision operator shim that lets timm and transformers import here.

The PyPI torchvision wheel (a dependency of timm, installed with --no-deps for the parity tests)
cannot load its compiled operators beside the CPU torch, and fails at import with
"operator torchvision::nms does not exist". Declaring the two schemas it registers first is
enough for everything the tests use. Test-only: the library never imports torchvision or timm.
"""

import importlib.util

import torch

if importlib.util.find_spec("torchvision") is not None:
    _TORCHVISION_SHIM = torch.library.Library("torchvision", "DEF")
    _TORCHVISION_SHIM.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _TORCHVISION_SHIM.define("qnms(Tensor qdets, Tensor scores, float iou_threshold) -> Tensor")
