"""The convolutional part of VGG19 (Simonyan & Zisserman 2015) in plain torch.

The module layout reproduces torchvision's ``vgg19().features`` index by
index, so the parameters are named ``features.{i}.weight`` /
``features.{i}.bias`` exactly as in torchvision's ImageNet checkpoint
``vgg19-dcbb9e9d.pth`` and that state dict loads without renaming
(torchvision itself is not needed).

Index map (torchvision numbering)::

    0 conv1_1   1 relu1_1   2 conv1_2   3 relu1_2   4 pool1
    5 conv2_1   6 relu2_1   7 conv2_2   8 relu2_2   9 pool2
    10 conv3_1 11 relu3_1  12 conv3_2 ... 17 relu3_4 18 pool3
    19 conv4_1 20 relu4_1  ...                       27 pool4
    28 conv5_1 29 relu5_1  ...                       36 pool5

The ReLUs are *not* in place: torchvision's are, which silently overwrites a
captured conv output with its rectified version; here every captured tensor
is the layer's own output.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import nn

from ._conv import conv3x3_relu

#: Output channels per block in the real network.
VGG19_WIDTHS = (64, 128, 256, 512, 512)
#: Convolutions per block.
VGG19_CONVS = (2, 2, 4, 4, 4)


def _layer_names() -> list[str]:
    names = []
    for b, n_conv in enumerate(VGG19_CONVS, start=1):
        for c in range(1, n_conv + 1):
            names += [f"conv{b}_{c}", f"relu{b}_{c}"]
        names.append(f"pool{b}")
    return names


#: torchvision index of every named layer (``"conv4_1" -> 19``).
LAYER_INDEX: dict[str, int] = {name: i for i, name in enumerate(_layer_names())}
#: Name of every index.
LAYER_NAME: dict[int, str] = {i: name for name, i in LAYER_INDEX.items()}
N_FEATURE_MODULES = len(LAYER_INDEX)  # 37


def layer_stride(index: int) -> int:
    """Down-sampling factor of the output of ``features[index]`` (1, 2, 4, 8, 16, 32)."""
    pools = sum(1 for i in range(index + 1) if LAYER_NAME[i].startswith("pool"))
    return 2**pools


def receptive_radius(index: int) -> int:
    """Pixels of input context on each side that the output of ``features[index]`` depends on.

    A 3x3 convolution at input stride ``s`` adds ``s``; a 2x2 max pool at
    stride ``s`` adds ``s`` (its window reaches one more input row at that
    stride); ReLUs add nothing.
    """
    radius, stride = 0, 1
    for i in range(index + 1):
        name = LAYER_NAME[i]
        if name.startswith(("conv", "pool")):
            radius += stride
        if name.startswith("pool"):
            stride *= 2
    return radius


class VGG19(nn.Module):
    """``features`` of VGG19, optionally truncated and/or narrowed.

    Parameters
    ----------
    depth:
        Number of ``features`` modules to build (default: all 37). A network
        built to ``LAYER_INDEX["relu4_1"] + 1`` holds only what the
        Li et al. 2018 fusion needs.
    widths:
        Channels of the five blocks. The default is the real network; tests
        use narrow widths to get a small network of the same shape and layer
        numbering.
    """

    def __init__(self, *, depth: int = N_FEATURE_MODULES, widths: Iterable[int] = VGG19_WIDTHS):
        super().__init__()
        widths = tuple(int(w) for w in widths)
        if len(widths) != 5 or min(widths) < 1:
            raise ValueError("widths must be five positive channel counts")
        if not 1 <= depth <= N_FEATURE_MODULES:
            raise ValueError(f"depth must be between 1 and {N_FEATURE_MODULES}")
        self.widths = widths
        layers: list[nn.Module] = []
        channels = 3
        for block, n_conv in enumerate(VGG19_CONVS):
            for _ in range(n_conv):
                layers.append(nn.Conv2d(channels, widths[block], kernel_size=3, padding=1))
                layers.append(nn.ReLU(inplace=False))
                channels = widths[block]
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        self.features = nn.Sequential(*layers[:depth])

    @property
    def depth(self) -> int:
        return len(self.features)

    def extract(self, x: torch.Tensor, indices: Iterable[int]) -> dict[int, torch.Tensor]:
        """Outputs of ``features[i]`` for each ``i`` in ``indices``, from one forward pass.

        ``x`` is ``(B, 3, H, W)``; only the layers up to the deepest index run.
        """
        wanted = sorted(set(int(i) for i in indices))
        if not wanted:
            return {}
        if wanted[0] < 0 or wanted[-1] >= self.depth:
            raise ValueError(f"layer indices must lie in 0..{self.depth - 1}, got {wanted}")
        if x.device.type == "cpu" and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)  # 1.3x faster convolutions on a CPU
        out: dict[int, torch.Tensor] = {}
        modules = list(self.features)
        i = 0
        while i <= wanted[-1]:
            module = modules[i]
            if isinstance(module, nn.Conv2d) and i not in wanted and i + 1 < len(modules):
                # a convolution whose own output is not asked for, and its ReLU, in one call
                x = conv3x3_relu(x, _channels_last(module.weight), module.bias)
                i += 1
            else:
                x = module(x)
            if i in wanted:
                out[i] = x
            i += 1
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


def _channels_last(weight: torch.Tensor) -> torch.Tensor:
    """``weight`` in channels-last memory (itself, not a copy, when it already is: networks are moved
    there once, ``net.to(memory_format=torch.channels_last)``)."""
    return weight.contiguous(memory_format=torch.channels_last)


def load_torchvision_state_dict(model: VGG19, state: Mapping[str, torch.Tensor]) -> VGG19:
    """Copy torchvision-named VGG19 parameters (``features.{i}.weight``...) into ``model``.

    Keys the model does not have (``classifier.*``, layers beyond its depth)
    are ignored; a missing key or a shape mismatch raises ``ValueError``.
    Returns ``model``.
    """
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    if missing:
        raise ValueError(
            f"the state dict lacks {len(missing)} VGG19 parameter(s), e.g. {missing[:3]}; "
            "expected torchvision's key names (features.0.weight, features.0.bias, ...)"
        )
    bad = [
        f"{k}: {tuple(state[k].shape)} != {tuple(v.shape)}"
        for k, v in own.items()
        if tuple(state[k].shape) != tuple(v.shape)
    ]
    if bad:
        raise ValueError("VGG19 parameter shapes do not match: " + "; ".join(bad[:3]))
    model.load_state_dict({k: state[k] for k in own}, strict=True)
    return model


__all__ = [
    "VGG19",
    "VGG19_WIDTHS",
    "LAYER_INDEX",
    "LAYER_NAME",
    "N_FEATURE_MODULES",
    "layer_stride",
    "load_torchvision_state_dict",
]
