"""Stand-ins for weights this project cannot download, for benchmarks that measure time and memory.

``untrained_vgg19()`` runs ``li2018_vgg19`` with a randomly initialised full-size VGG19 in place of
torchvision's ImageNet weights: the same layers, tiles and passes, so the same time and memory,
and a meaningless image. Used by ``pass_memory.py`` and ``learned_speed.py`` (``--untrained-vgg19``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


@contextlib.contextmanager
def untrained_vgg19() -> Iterator[None]:
    import torch

    from napari_fusion.methods.li2018_vgg19 import _NET_DEPTH, untrained_network_for_tests
    from napari_fusion.nets.vgg19 import VGG19

    torch.manual_seed(0)
    with untrained_network_for_tests(VGG19(depth=_NET_DEPTH)):
        yield
