"""Building blocks of BiT: weight-standardised convolution, TF-"SAME" padding, GroupNorm+act, DropPath."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# Weight-standardisation eps: Google's big_transfer code uses 1e-10, timm and transformers 1e-8. We keep 1e-8 so
# that checkpoints give bit-identical activations to those two. For a filter of weight variance v the two
# standardised kernels differ by a factor of about 1 + (1e-8 − 1e-10) / (2v): 5e-5 relative at v = 1e-4.
WS_EPS = 1e-8
GN_EPS = 1e-5


def make_div(value: float, divisor: int = 8) -> int:
    """Round a channel count to a multiple of `divisor`, never dropping more than 10 %."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


def standardize_weight(weight: torch.Tensor, eps: float = WS_EPS) -> torch.Tensor:
    """Per output filter: (w - mean) / sqrt(biased var + eps), always computed in float32.

    `F.batch_norm` over a (1, O, I*kh*kw) view is the exact reduction transformers and timm use,
    so checkpoints give bit-identical activations; 1e-8 is not representable in fp16, hence fp32.
    """
    flat = weight.float().reshape(1, weight.shape[0], -1)
    standardized = F.batch_norm(flat, None, None, training=True, momentum=0.0, eps=eps)
    return standardized.reshape(weight.shape)


def same_padding(size: int, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
    """TF "SAME" padding for one spatial dim: (before, after), the odd pixel going after."""
    out_size = -(-size // stride)
    total = max((out_size - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


class DynamicPad2d(nn.Module):
    """Zero-pads to TF "SAME" for the size of each input (the pad depends on H and W)."""

    def __init__(self, kernel_size: int, stride: int, dilation: int = 1, value: float = 0.0):
        super().__init__()
        self.kernel_size, self.stride, self.dilation, self.value = kernel_size, stride, dilation, value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        top, bottom = same_padding(x.shape[-2], self.kernel_size, self.stride, self.dilation)
        left, right = same_padding(x.shape[-1], self.kernel_size, self.stride, self.dilation)
        if top or bottom or left or right:
            x = F.pad(x, (left, right, top, bottom), value=self.value)
        return x


def static_padding(kernel_size: int, stride: int, dilation: int) -> int:
    return ((stride - 1) + dilation * (kernel_size - 1)) // 2


class WeightStandardizedConv2d(nn.Conv2d):
    """Bias-free conv whose kernel is standardised on every call (BiT's "StdConv").

    padding: None → symmetric static padding; "SAME" → TF-style, dynamic when the stride makes
    the amount depend on the input size; "VALID" → none. In inference (no autograd through the
    weight) the standardised kernel is cached until the parameter changes. The key includes inference mode: a kernel
    made under `torch.inference_mode()` is an inference tensor, which autograd refuses to save for backward (input
    gradients of a frozen model, e.g. saliency, after a prediction under inference mode).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        dilation: int = 1,
        padding: str | None = None,
        eps: float = WS_EPS,
    ):
        dynamic = padding == "SAME" and (stride > 1 or (dilation * (kernel_size - 1)) % 2 == 1)
        static = 0 if padding == "VALID" or dynamic else static_padding(kernel_size, stride, dilation)
        super().__init__(
            in_channels, out_channels, kernel_size, stride=stride, padding=static, dilation=dilation, bias=False
        )
        self.pad = DynamicPad2d(kernel_size, stride, dilation) if dynamic else None
        self.eps = eps
        self._cache: tuple[tuple, torch.Tensor] | None = None

    def _cacheable(self) -> bool:
        if torch.is_grad_enabled() and self.weight.requires_grad:
            return False
        if torch.compiler.is_compiling() or torch.jit.is_tracing() or torch.jit.is_scripting():
            return False
        if self.weight.is_inference():  # built under inference_mode: no version counter to key on
            return False
        return type(self.weight) is nn.Parameter and type(self.weight.data) is torch.Tensor

    def standardized_weight(self, dtype: torch.dtype) -> torch.Tensor:
        if not self._cacheable():
            return standardize_weight(self.weight, self.eps).to(dtype)
        inference = torch.is_inference_mode_enabled()
        key = (self.weight._version, self.weight.data_ptr(), self.weight.device, dtype, inference)
        if self._cache is None or self._cache[0] != key:
            self._cache = (key, standardize_weight(self.weight, self.eps).to(dtype))
        return self._cache[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.standardized_weight(x.dtype if x.is_floating_point() else self.weight.dtype)
        if self.pad is not None:
            x = self.pad(x)
        return F.conv2d(x, weight, None, self.stride, self.padding, self.dilation, self.groups)

    def train(self, mode: bool = True) -> WeightStandardizedConv2d:
        """Back to training, a kernel cached for an evaluation is dropped: it would hold device memory for the
        rest of the run, and the next optimiser step makes it stale anyway."""
        if mode:
            self._cache = None
        return super().train(mode)

    def _apply(self, fn, recurse=True):  # .to()/.cuda()/.half() invalidate the cached kernel
        self._cache = None
        return super()._apply(fn, recurse)


class _ReLUSquared(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.square(F.relu(x))


class _QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


ACTIVATIONS = {
    "relu": nn.ReLU,
    "relu6": nn.ReLU6,
    "relu2": _ReLUSquared,
    "leaky_relu": nn.LeakyReLU,
    "gelu": nn.GELU,
    "gelu_new": lambda: nn.GELU(approximate="tanh"),
    "gelu_fast": lambda: nn.GELU(approximate="tanh"),
    "gelu_pytorch_tanh": lambda: nn.GELU(approximate="tanh"),
    "quick_gelu": _QuickGELU,
    "silu": nn.SiLU,
    "swish": nn.SiLU,
    "mish": nn.Mish,
    "selu": nn.SELU,  # in the hidden_act list of transformers' docs, though its ACT2FN lacks it
    "hardswish": nn.Hardswish,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "linear": nn.Identity,
}


def activation(name: str) -> nn.Module:
    try:
        return ACTIVATIONS[name]()
    except KeyError:
        raise ValueError(f"Unknown hidden_act {name!r}; use one of {', '.join(sorted(ACTIVATIONS))}.") from None


class GroupNormActivation(nn.GroupNorm):
    """GroupNorm (eps 1e-5, affine) followed by an optional activation; keys `weight`, `bias`."""

    def __init__(self, num_channels: int, num_groups: int, act: str | None = "relu"):
        if num_channels % num_groups:
            raise ValueError(
                f"GroupNorm over {num_channels} channels cannot use num_groups={num_groups}: "
                "choose a num_groups that divides every stage width (and the bottleneck widths)."
            )
        super().__init__(num_groups, num_channels, eps=GN_EPS, affine=True)
        self.activation = activation(act) if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps))


class DropPath(nn.Module):
    """Stochastic depth: drops a whole residual branch per sample, rescaling the kept ones."""

    def __init__(self, drop_prob: float):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.drop_prob == 0.0:
            return x
        keep = 1.0 - self.drop_prob
        mask = torch.floor(keep + torch.rand((x.shape[0],) + (1,) * (x.ndim - 1), dtype=x.dtype, device=x.device))
        return x.div(keep) * mask

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"
