"""Building blocks of the deep convolutional sparse coding (CSC) networks of
Xu, Zhao et al. (CSC-IVFN, CSC-MEFN, CSC-MMFN): one implementation for all three.

A dictionary convolutional unit (DCU) is one unrolled step of a learned
iterative shrinkage algorithm for convolutional sparse coding. Given the input
signal ``x`` (``c_in`` channels) and the current codes ``z`` (``c`` channels),
it refines the codes by the back-projected residual of their reconstruction::

    z' = act(BN(z + E(x - D(z))))

where ``D`` (codes -> signal) and ``E`` (signal -> codes) are 3x3 convolutions
without bias on reflection-padded inputs and ``act`` is a soft-shrinkage with
one learnable threshold per channel (:class:`SoftShrink`) or a PReLU.

Reference
---------
Z. Zhao, J. Zhang, H. Bai, Y. Wang, Y. Cui, L. Deng, K. Sun, C. Zhang, J. Liu,
S. Xu, "Deep convolutional sparse coding networks for interpretable image
fusion", CVPR Workshops 2023 (CSC-IVFN, CSC-MEFN and CSC-MMFN).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def conv3x3(c_in: int, c_out: int) -> nn.Sequential:
    """3x3 convolution without bias on a reflection-padded input (size preserved)."""
    return nn.Sequential(nn.ReflectionPad2d(1), nn.Conv2d(c_in, c_out, 3, bias=False))


class SoftShrink(nn.Module):
    """Soft thresholding ``sign(x) * relu(|x| - theta)``, one learnable ``theta`` per channel.

    ``theta`` is kept non-negative by clamping in the forward pass (a negative
    threshold would turn shrinkage into expansion).
    """

    def __init__(self, channels: int, init: float = 1e-2):
        super().__init__()
        self.theta = nn.Parameter(torch.full((1, channels, 1, 1), float(init)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        theta = self.theta.clamp_min(0.0)
        return torch.sign(x) * F.relu(x.abs() - theta)


def make_activation(kind: str, channels: int, *, init: float | None = None) -> nn.Module:
    """``"sst"`` (soft shrinkage, theta init 1e-2) or ``"prelu"`` (slope init 0.25)."""
    if kind == "sst":
        return SoftShrink(channels, 1e-2 if init is None else init)
    if kind == "prelu":
        return nn.PReLU(channels, 0.25 if init is None else init)
    raise ValueError(f"activation must be 'sst' or 'prelu', got {kind!r}")


class DCU(nn.Module):
    """Dictionary convolutional unit: ``z' = act(BN(z + E(x - D(z))))``.

    Parameters
    ----------
    signal_channels:
        Channels of the signal ``x``.
    code_channels:
        Channels of the codes ``z``.
    activation:
        ``"sst"`` or ``"prelu"``.
    batch_norm:
        Apply batch normalisation before the activation (as the papers do).
    """

    def __init__(
        self,
        signal_channels: int,
        code_channels: int,
        *,
        activation: str = "sst",
        batch_norm: bool = True,
    ):
        super().__init__()
        self.decode = conv3x3(code_channels, signal_channels)
        self.encode = conv3x3(signal_channels, code_channels)
        self.norm = nn.BatchNorm2d(code_channels) if batch_norm else nn.Identity()
        self.act = make_activation(activation, code_channels)

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        residual = x - self.decode(z)
        return self.act(self.norm(z + self.encode(residual)))


#: Signals with more channels than this keep the convolutions: the inference path copies the
#: signal's nine shifted planes per channel, which pays for a few channels (a 256^2 tile, 32 code
#: channels, three units, one thread: 1 channel 36-72 against 100-158 ms, 4 channels 96-157 against
#: 150-191 ms) but not for many (31, CAVE's bands: 830-918 against 256-269 ms).
FAST_SIGNAL_CHANNELS = 4


def run_dcus(units, signals, z: torch.Tensor | None) -> torch.Tensor:
    """Codes after the chain of DCUs ``units``: ``z = units[k](signals[k], z)`` for each ``k``.

    ``signals``: one ``(B, s, H, W)`` tensor per unit; ``z``: the ``(B, c, H, W)`` codes
    to refine, or ``None`` for zero codes. Inference with units in eval mode and
    without autograd (:func:`dcus_can_run_fast`) goes through :func:`_run_dcus_fast`, the
    same arithmetic up to float rounding (a few 1e-6 relative) in 2-7x less time on a
    CPU; otherwise each unit's module runs.
    """
    units = list(units)
    if len(signals) != len(units):
        raise ValueError(f"need one signal per unit: {len(units)} units, {len(signals)} signals")
    if not units:
        if z is None:
            raise ValueError("no units and no codes")
        return z
    first = signals[0]
    if z is None:
        b, _, h, w = first.shape
        z = first.new_zeros((b, units[0].encode[1].out_channels, h, w))
    if not dcus_can_run_fast(units, first):
        for unit, x in zip(units, signals):
            z = unit(x, z)
        return z
    codes = [_run_dcus_fast(units, [x[i] for x in signals], z[i]) for i in range(z.shape[0])]
    return codes[0][None] if len(codes) == 1 else torch.stack(codes)


def dcus_can_run_fast(units, x: torch.Tensor) -> bool:
    """Whether :func:`run_dcus` may use its inference path: no unit training, no autograd
    recording, float32 maps of at least 2 x 2 pixels (reflection padding) on the CPU (a GPU
    keeps its convolution library's kernels), with at most :data:`FAST_SIGNAL_CHANNELS`
    signal channels."""
    return (
        not torch.is_grad_enabled()
        and x.device.type == "cpu"
        and x.shape[-3] <= FAST_SIGNAL_CHANNELS
        and not any(unit.training for unit in units)
        and x.dtype == torch.float32
        and min(x.shape[-2:]) >= 2
        and all(isinstance(unit.act, (SoftShrink, nn.PReLU)) for unit in units)
    )


def _folded_norm(unit: DCU, channels: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(scale, shift)``, ``(c, 1)`` each, of the unit's eval-mode batch norm (identity: 1, 0)."""
    norm = unit.norm
    if isinstance(norm, nn.BatchNorm2d):
        scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)
        shift = norm.bias - norm.running_mean * scale
    else:
        scale, shift = like.new_ones(channels), like.new_zeros(channels)
    return scale.reshape(channels, 1), shift.reshape(channels, 1)


_TAPS = [(dy, dx) for dy in range(3) for dx in range(3)]


def _reflect_pad_into(src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """``dst`` ``(n, h + 2, w + 2)`` := ``src`` ``(n, h, w)`` reflection-padded by one pixel."""
    dst[:, 1:-1, 1:-1].copy_(src)
    dst[:, 0, 1:-1].copy_(src[:, 1])
    dst[:, -1, 1:-1].copy_(src[:, -2])
    dst[:, :, 0].copy_(dst[:, :, 2])
    dst[:, :, -1].copy_(dst[:, :, -3])
    return dst


def _run_dcus_fast(units, signals, z: torch.Tensor) -> torch.Tensor:
    """:func:`run_dcus` for one image: ``signals`` ``(s, H, W)``, codes ``z`` ``(c, H, W)``.

    Each 3x3 convolution becomes a matrix product over channels (``c -> s``: the nine
    taps' planes, reflection-padded and summed shifted, which equals convolving the
    padded codes since padding is linear per channel; ``s -> c``: the nine shifted
    copies of the padded residual times the kernel, with the batch norm folded into
    the kernel and a bias). All maps live in buffers allocated once, so a chain of
    units touches no fresh memory: a CPU's convolution of few channels is limited by
    memory traffic, not arithmetic.
    """
    c, h, w = z.shape
    s = signals[0].shape[0]
    hw = h * w
    codes, new_codes, spare = z.reshape(c, hw).clone(), z.new_empty((c, hw)), z.new_empty((c, hw))
    planes = z.new_empty((9 * s, hw))
    padded = z.new_empty((9 * s, h + 2, w + 2))
    shifted = z.new_empty((s, 9, h, w))
    residual = z.new_empty((s, h, w))
    padded_res = z.new_empty((s, h + 2, w + 2))
    for unit, x in zip(units, signals):
        # residual = x - decode(codes)
        taps = unit.decode[1].weight.permute(0, 2, 3, 1).reshape(9 * s, c)
        torch.mm(taps, codes, out=planes)
        per_tap = _reflect_pad_into(planes.view(9 * s, h, w), padded).view(s, 9, h + 2, w + 2)
        residual.copy_(per_tap[:, 0, :h, :w])
        for k, (dy, dx) in enumerate(_TAPS[1:], start=1):
            residual.add_(per_tap[:, k, dy : dy + h, dx : dx + w])
        torch.sub(x, residual, out=residual)
        # new codes = act(BN(codes + encode(residual)))
        scale, shift = _folded_norm(unit, c, z)
        kernel = unit.encode[1].weight.reshape(c, 9 * s) * scale
        _reflect_pad_into(residual, padded_res)
        for k, (dy, dx) in enumerate(_TAPS):
            shifted[:, k].copy_(padded_res[:, dy : dy + h, dx : dx + w])
        torch.addmm(shift, kernel, shifted.view(9 * s, hw), out=new_codes)
        new_codes.addcmul_(codes, scale)
        _activation_(unit.act, new_codes, spare)
        codes, new_codes = new_codes, codes
    return codes.view(c, h, w)


def _activation_(act: nn.Module, y: torch.Tensor, spare: torch.Tensor) -> None:
    """Apply a DCU's activation to ``(c, n)`` maps ``y`` in place (``spare``: a buffer of its shape)."""
    if isinstance(act, SoftShrink):
        theta = act.theta.clamp_min(0.0).reshape(-1, 1)
        torch.clamp(y, -theta, theta, out=spare)
        y.sub_(spare)  # sign(y) * relu(|y| - theta)
    else:  # PReLU (dcus_can_run_fast admits no other)
        torch.clamp(y, max=0.0, out=spare)
        y.addcmul_(spare, act.weight.reshape(-1, 1) - 1.0)  # y > 0: y; y <= 0: slope * y


__all__ = ["conv3x3", "SoftShrink", "make_activation", "DCU", "run_dcus", "dcus_can_run_fast"]
