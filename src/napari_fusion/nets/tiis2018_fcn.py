"""End-to-end two-stream fully convolutional fusion network (KSII TIIS 2018).

Multi-focus fusion network described in KSII Transactions on Internet and
Information Systems 12(5), 2018 ("conv - fusion - deconv"): each of the two
sources goes through its own stack of convolutions (no pooling), the two
feature maps are concatenated along the channels and reduced by 1x1
convolutions (2D -> D), and transposed convolutions map the fused features
back to an image. Every layer is followed by a ReLU, the output layer
included. The paper's chosen layout is 2-1-2 (two conv layers per stream, one
fusion layer, two deconvolution layers) with 64 filters of 5x5; its ablation
varies width, depth and kernel size, so all three are parameters here.

No code was released; these are the choices made here where the paper is
silent (see ``docs/methods/tiis2018_fcn.md``):

* **Geometry.** Convolutions are 'valid' and the transposed convolutions are
  'valid' too (stride 1), so the encoder shrinks the map by ``k - 1`` per
  layer and the decoder grows it back, the usual conv/deconv pairing. To
  make the output exactly the input's size with every output pixel computed
  from a full receptive field, the inputs are reflect-padded by the receptive
  radius :func:`receptive_radius` and the output is cropped back. Training
  and inference use the same forward pass, so any ``H, W`` (at least
  ``halo + 1`` pixels, a limit of reflect padding) gives an ``H x W`` output.
* **Streams** have separate weights by default ("two-stream");
  ``shared_streams=True`` makes them siamese.
* **Output range.** The final ReLU (as in the paper) makes the output
  non-negative; the upper end is not bounded by the network, so callers clamp
  to [0, 1] (:func:`napari_fusion.methods.tiis2018_fcn` does).
* **Initialisation** (``init='average'``, ours, not the paper's): one channel
  of every layer is initialised as a pass-through (centred delta kernels,
  exact since inputs and activations are non-negative), the fusion layer
  averages the two pass-through channels and the output layer reads only that
  channel, so the untrained network outputs ``(A + B) / 2``; all other
  weights feeding the output start at zero and the rest is Kaiming-random.
  Training then only has to learn the departure from the average, a
  sensible start on a CPU budget. ``init='kaiming'`` is plain random
  initialisation.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

#: The paper's chosen layout: 2 conv layers per stream, 1 fusion layer, 2 deconv layers.
DEFAULT_LAYOUT = (2, 1, 2)
DEFAULT_WIDTH = 64
DEFAULT_KERNEL = 5


def receptive_radius(kernel: int = DEFAULT_KERNEL, layout: tuple[int, int, int] = DEFAULT_LAYOUT) -> int:
    """Pixels of context on each side that one output pixel depends on."""
    n_conv, _, n_deconv = layout
    return (kernel // 2) * (n_conv + n_deconv)


class TwoStreamFusionNet(nn.Module):
    """Two conv streams, 1x1 fusion, transposed-conv decoder; ReLU after every layer.

    ``forward(a, b)`` takes two ``(B, C, H, W)`` tensors (C = ``channels``,
    intensities in [0, 1]) and returns ``(B, C, H, W)``.
    """

    def __init__(
        self,
        *,
        channels: int = 1,
        width: int = DEFAULT_WIDTH,
        kernel: int = DEFAULT_KERNEL,
        layout: tuple[int, int, int] = DEFAULT_LAYOUT,
        shared_streams: bool = False,
        init: str = "average",
    ):
        super().__init__()
        n_conv, n_fuse, n_deconv = (int(v) for v in layout)
        if kernel < 1 or kernel % 2 == 0:
            raise ValueError(f"kernel must be odd and positive, got {kernel}")
        if n_conv < 1 or n_fuse < 1 or n_deconv < 1:
            raise ValueError(f"layout needs at least one layer of each kind, got {layout}")
        if width < 2:
            raise ValueError("width must be at least 2")
        if init not in ("average", "kaiming"):
            raise ValueError("init must be 'average' or 'kaiming'")
        self.channels = int(channels)
        self.width = int(width)
        self.kernel = int(kernel)
        self.layout = (n_conv, n_fuse, n_deconv)
        self.shared_streams = bool(shared_streams)

        def stream() -> nn.ModuleList:
            return nn.ModuleList(nn.Conv2d(self.channels if i == 0 else width, width, kernel) for i in range(n_conv))

        self.stream_a = stream()
        self.stream_b = self.stream_a if shared_streams else stream()
        self.fusion = nn.ModuleList(nn.Conv2d(2 * width if i == 0 else width, width, 1) for i in range(n_fuse))
        self.decoder = nn.ModuleList(
            nn.ConvTranspose2d(width, self.channels if i == n_deconv - 1 else width, kernel) for i in range(n_deconv)
        )
        self.reset_parameters(init)

    @property
    def halo(self) -> int:
        """Receptive radius: reflect padding applied to the inputs."""
        return receptive_radius(self.kernel, self.layout)

    def config(self) -> dict:
        """Constructor arguments that rebuild this architecture (``init`` aside)."""
        return {
            "channels": self.channels,
            "width": self.width,
            "kernel": self.kernel,
            "layout": list(self.layout),
            "shared_streams": self.shared_streams,
        }

    @torch.no_grad()
    def reset_parameters(self, init: str = "average") -> None:
        layers = [*self.stream_a, *([] if self.shared_streams else self.stream_b), *self.fusion, *self.decoder]
        for m in layers:
            nn.init.kaiming_normal_(
                m.weight, nonlinearity="relu", mode="fan_in" if isinstance(m, nn.Conv2d) else "fan_out"
            )
            nn.init.zeros_(m.bias)
        if init != "average":
            return
        c, k = self.channels, self.kernel
        mid = k // 2
        # pass-through channels: one per input channel (channels <= width is needed)
        if c > self.width:
            raise ValueError("init='average' needs width >= channels")
        for stream in {id(s): s for s in (self.stream_a, self.stream_b)}.values():
            for conv in stream:
                for ch in range(c):
                    conv.weight[ch].zero_()
                    conv.weight[ch, ch, mid, mid] = 1.0
        w = self.width
        for i, conv in enumerate(self.fusion):
            for ch in range(c):
                conv.weight[ch].zero_()
                if i == 0:
                    conv.weight[ch, ch, 0, 0] = 0.5
                    conv.weight[ch, w + ch, 0, 0] = 0.5
                else:
                    conv.weight[ch, ch, 0, 0] = 1.0
        for i, deconv in enumerate(self.decoder):
            last = i == len(self.decoder) - 1
            # ConvTranspose2d weight: (in, out, k, k); output channel ch reads only channel ch
            for ch in range(c):
                deconv.weight[:, ch].zero_()
                deconv.weight[ch, ch, mid, mid] = 1.0
            if not last:
                # the random channels of inner decoder layers must not leak into the
                # pass-through channels either (done above), nor the pass-through
                # channels into them: leave those random, they are features.
                pass

    def _run_stream(self, stream: nn.ModuleList, x: torch.Tensor) -> torch.Tensor:
        for conv in stream:
            x = F.relu(conv(x))
        return x

    @property
    def unpadded_offset(self) -> int | None:
        """Where, without the reflect padding, the output pixel aligned with input pixel 0 lies
        (the decoder's transposed convolutions widen what the streams narrowed); None when the
        output is narrower than the input (more conv than deconv layers): ``pad=False`` is refused."""
        n_conv, _, n_deconv = self.layout
        off = (self.kernel // 2) * (n_deconv - n_conv)
        return off if off >= 0 else None

    def forward(self, a: torch.Tensor, b: torch.Tensor, *, pad: bool = True) -> torch.Tensor:
        """The fused image, the size of ``a`` and ``b``.

        ``pad=False`` leaves out the reflect padding by :attr:`halo`: the output is then exact
        only :attr:`halo` pixels or more from the inputs' edges, for callers that give that much
        real context (:func:`napari_fusion.methods.tiis2018_fcn.run_net_tiled`); it saves
        computing the padding's share of every tile.
        """
        if a.shape != b.shape:
            raise ValueError(f"inputs differ in shape: {tuple(a.shape)} and {tuple(b.shape)}")
        h, w = a.shape[-2:]
        r = self.halo
        if min(h, w) <= r:
            raise ValueError(f"inputs must be larger than {r}x{r} pixels (reflect padding), got {h}x{w}")
        if not pad and self.unpadded_offset is None:
            raise ValueError(f"layout {self.layout} narrows its input: it needs pad=True")
        if pad:
            a, b = F.pad(a, (r, r, r, r), mode="reflect"), F.pad(b, (r, r, r, r), mode="reflect")
        fa = self._run_stream(self.stream_a, a)
        fb = self._run_stream(self.stream_b, b)
        x = torch.cat([fa, fb], dim=1)
        del fa, fb
        for conv in self.fusion:
            x = F.relu(conv(x))
        for deconv in self.decoder:
            x = F.relu(deconv(x))
        n_conv, _, n_deconv = self.layout
        start = (r if pad else 0) + (n_deconv - n_conv) * (self.kernel // 2)
        return x[..., start : start + h, start : start + w]


def count_parameters(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())
