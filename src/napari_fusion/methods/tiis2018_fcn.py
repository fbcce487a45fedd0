"""End-to-end two-stream fully convolutional fusion (KSII TIIS 2018): ``tiis2018_fcn``.

The network (:mod:`napari_fusion.nets.tiis2018_fcn`: two conv streams, a 1x1
fusion layer, a transposed-conv decoder, ReLU after every layer; 2-1-2, 64
filters of 5x5) regresses the all-in-focus image directly from two
differently focused sources. No released code or weights exist; the network
is trained here (``napari-fusion train two_stream``) and the shipped weights
are checked against their sha256.

* **Colour.** The shipped network is grey. ``colour='luma'`` (default) fuses
  the BT.601 luma with the network and takes the chroma (Cb, Cr) from the
  sources with the soft decision weights below; ``colour='channels'`` runs
  the network on R, G and B separately (three times the cost; the channels
  are fused independently, so small colour shifts are possible at
  boundaries). Grey inputs use the network once.
* **Output range.** The final ReLU keeps the output non-negative; values
  above 1 are clamped.
* **Decision map.** Since the output is regressed, not selected, a label map
  is derived: for each source the mean absolute difference to the fused luma
  over a ``(2r+1)^2`` window (``smooth_radius``); each pixel is labelled
  with the closer source, and the soft weights are
  ``w_A = d_B / (d_A + d_B)``. In flat regions both distances are near zero
  and the label there means little.
* **Output.** ``output='network'`` (default, the paper) returns the regressed image;
  ``output='decision'`` (ours) copies each pixel from the source the label map
  names, which keeps the sources' exact values where the regression is
  imprecise (away from focus boundaries, with the shipped weights) at the price of a hard
  seam along the decision boundary.
* **Memory.** The network runs in tiles (``tile`` pixels plus an 8-pixel
  halo of real context); results do not depend on the tile size because
  every output pixel depends only on its receptive field.
"""

from __future__ import annotations

import copy
import json
import weakref
from pathlib import Path

import torch
import torch.nn.functional as F

from ..errors import FusionInputError, WeightsUnavailableError
from ..nets._conv import PRECISIONS, network_dtype
from ..nets.tiis2018_fcn import TwoStreamFusionNet, receptive_radius
from ..ops.colour import rgb_to_ycbcr, ycbcr_to_rgb
from ..ops.filters import box_filter
from ..ops.tiles import map_tiles, tile_with_unmapped_maps
from ..registry import FusionContext, MethodOutput, Param, register_method
from ..weights import LoadedWeights, how_to_train, load_shipped, shipped_path

CITATION = (
    "End-to-end two-stream fully convolutional network for multi-focus image fusion "
    "(conv - fusion - deconv), KSII Transactions on Internet and Information Systems 12(5), 2018."
)
WEIGHTS_NAME = "tiis2018_fcn"
HOW_TO_GET = how_to_train("tiis2018_fcn")


def default_weights_path() -> Path:
    """Where the shipped weights live."""
    return shipped_path(WEIGHTS_NAME)


def _weights_path(weights: str | Path | None) -> Path:
    return Path(weights).expanduser() if weights else default_weights_path()


def _build(w: LoadedWeights) -> TwoStreamFusionNet:
    cfg = w.manifest.get("net")
    if not isinstance(cfg, dict):
        raise WeightsUnavailableError(
            f"manifest of {w.path} has no 'net' entry describing the architecture. {HOW_TO_GET}"
        )
    try:
        net = TwoStreamFusionNet(
            channels=int(cfg.get("channels", 1)),
            width=int(cfg["width"]),
            kernel=int(cfg["kernel"]),
            layout=tuple(int(v) for v in cfg["layout"]),
            shared_streams=bool(cfg.get("shared_streams", False)),
            init="kaiming",
        )
        net.load_state_dict(w.state)
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise WeightsUnavailableError(
            f"weights {w.path} do not fit their declared architecture {cfg}: {exc}. {HOW_TO_GET}"
        ) from None
    if net.channels != 1:
        raise WeightsUnavailableError(
            f"weights {w.path} are for {net.channels}-channel input; this method uses grey networks. {HOW_TO_GET}"
        )
    # channels-last: its convolutions ran 1.3x faster on a CPU (256 px tiles, 2026-12-03)
    return net.eval().requires_grad_(False).to(w.device, memory_format=torch.channels_last)


_IN_BFLOAT16: weakref.WeakKeyDictionary[TwoStreamFusionNet, TwoStreamFusionNet] = weakref.WeakKeyDictionary()


def in_precision(net: TwoStreamFusionNet, dtype: torch.dtype) -> TwoStreamFusionNet:
    """``net`` itself for float32, else a bfloat16 copy of it (made once per network)."""
    if dtype == torch.float32:
        return net
    if net not in _IN_BFLOAT16:
        _IN_BFLOAT16[net] = copy.deepcopy(net).to(dtype)
    return _IN_BFLOAT16[net]


def load_two_stream_net(weights: str | Path | None, device: torch.device) -> TwoStreamFusionNet:
    """The trained network on ``device`` (sha256-verified, cached by path, mtime, size and device)."""
    return load_shipped(
        WEIGHTS_NAME,
        path=weights or None,
        device=device,
        build=_build,
        expect={"architecture": "TwoStreamFusionNet"},
        how_to_get=HOW_TO_GET,
    )


def _halo(params: dict) -> int:
    """Receptive radius of the network (from the weights' manifest when readable) plus the label window."""
    radius = receptive_radius()
    try:
        m = json.loads(_weights_path(params.get("weights")).with_suffix(".json").read_text())
        radius = receptive_radius(int(m["net"]["kernel"]), tuple(int(v) for v in m["net"]["layout"]))
    except Exception:  # noqa: BLE001 - unreadable manifests are reported when the method runs
        pass
    return radius + int(params.get("smooth_radius", 0))


@torch.no_grad()
def run_net_tiled(
    net: TwoStreamFusionNet, a: torch.Tensor, b: torch.Tensor, *, tile: int = 256, ctx=None
) -> torch.Tensor:
    """Fuse grey planes ``(P, H, W)`` pairwise with the network, in tiles; returns ``(P, H, W)`` in [0, 1].

    The planes are reflect-padded by ``net.halo`` once, as the network pads its input, and each
    tile is cut with ``net.halo`` pixels of that context on every side and run without padding
    (``net(..., pad=False)``), so the result equals a whole-image pass and no tile computes a
    padding of its own; progress is reported after every tile.

    In tiled runs, where every allocation of 4 MiB or more gets fresh pages, the tiles shrink
    so that the network's ``width``-channel feature maps stay below that size
    (:func:`~napari_fusion.ops.tiles.tile_with_unmapped_maps`; 112 px with the shipped weights).
    On a 10 x 1024 x 2048 band in tiles of 1024 (``benchmarks/pass_memory.py tiis2018_fcn --rows
    1024 --cols 2048``), 256 px network tiles took 190 s user + 101 s system; 96 px tiles with
    the network padding each tile 244 s + 30 s (2026-12-02).
    """

    def report(done: int, total: int) -> None:
        if ctx is not None:
            ctx.report(done, total + 1, f"network, tile {done}/{total}")

    dtype = next(net.parameters()).dtype  # bfloat16 when the user chose it (in_precision): float32 out

    def run(ta: torch.Tensor, tb: torch.Tensor, *, pad: bool) -> torch.Tensor:
        return net(ta.unsqueeze(1).to(dtype), tb.unsqueeze(1).to(dtype), pad=pad)[:, 0].float()

    r = net.halo
    if net.unpadded_offset is None:  # a layout without an unpadded form: each tile padded by the network
        grow = 4 * r - (net.kernel - 1)
        tile = tile_with_unmapped_maps(tile, channels=net.width, grow=grow)
        (out,) = map_tiles(lambda ta, tb: run(ta, tb, pad=True), (a, b), halo=r, tile=tile, report=report)
        return out.clamp_(0, 1)
    # The image is reflect-padded once, as the network pads it, and the tiles run without padding:
    # every kept pixel then has real (or reflected) context, and no tile computes a padding of its own.
    h, w = a.shape[-2:]
    pa, pb = (F.pad(x.unsqueeze(1), (r, r, r, r), mode="reflect")[:, 0] for x in (a, b))
    # the largest map: the first convolution's output on a block (tile + 2 halo)
    tile = tile_with_unmapped_maps(tile, channels=net.width, grow=2 * r - (net.kernel - 1))
    (out,) = map_tiles(lambda ta, tb: run(ta, tb, pad=False), (pa, pb), halo=r, tile=tile, report=report)
    return out[..., r : r + h, r : r + w].clamp_(0, 1)


def decision_from_output(fused_grey: torch.Tensor, grey_a: torch.Tensor, grey_b: torch.Tensor, radius: int):
    """(labels, weight of A): which source the fused image is locally closer to."""
    da = box_filter((fused_grey - grey_a).abs(), radius)
    db = box_filter((fused_grey - grey_b).abs(), radius)
    labels = (db < da).long()  # 1 where the second source is closer
    wa = db / (da + db).clamp_min(1e-8)
    wa = torch.where((da + db) > 1e-8, wa, torch.full_like(wa, 0.5))
    return labels, wa


@register_method(
    name="tiis2018_fcn",
    title="Two-stream fully convolutional fusion network (KSII TIIS 2018)",
    tasks=("multi-focus",),
    mode="pairwise",
    learned=True,
    outputs=("fused", "labels", "weights", "depth"),
    params=(
        Param(
            "colour",
            "luma",
            str,
            "Colour inputs: network on luma, chroma by the decision weights ('luma'), or on each RGB channel ('channels').",
            choices=("luma", "channels"),
        ),
        Param(
            "output",
            "network",
            str,
            "'network': the regressed image (the paper); 'decision': each pixel copied from the source the network's output is locally closer to.",
            choices=("network", "decision"),
        ),
        Param(
            "smooth_radius",
            4,
            int,
            "Window radius for the decision map (which source the output is closer to).",
            low=0,
            high=50,
        ),
        Param(
            "tile",
            256,
            int,
            "Tile size for the network (memory bound; results do not depend on it).",
            low=32,
            high=8192,
        ),
        Param(
            "weights", "", str, "Path to other trained weights (.pt with its .json manifest); empty: shipped weights."
        ),
        Param(
            "precision",
            "float32",
            str,
            "Arithmetic of the network: 'float32', or 'bfloat16' (faster where the CPU has AMX or AVX512-BF16 "
            "units, or on a GPU; the fused image changes slightly; slower on other CPUs).",
            choices=PRECISIONS,
        ),
    ),
    citation=CITATION,
    description="A conv-fusion-deconv network maps two differently focused images straight to the fused image.",
    halo=_halo,
)
def fuse_two_stream(
    stack: torch.Tensor,
    *,
    ctx: FusionContext,
    colour: str,
    output: str,
    smooth_radius: int,
    tile: int,
    weights: str,
    precision: str,
) -> MethodOutput:
    if stack.ndim != 4 or stack.shape[0] != 2:
        raise FusionInputError(f"tiis2018_fcn fuses two images at a time, got a stack of shape {tuple(stack.shape)}")
    _, c, h, w = stack.shape
    if c not in (1, 3):
        raise FusionInputError(f"tiis2018_fcn needs grey or RGB images, got {c} channels")
    net = in_precision(load_two_stream_net(weights, ctx.device), network_dtype(precision, ctx.device))
    if min(h, w) <= net.halo:
        raise FusionInputError(f"tiis2018_fcn needs images larger than {net.halo}x{net.halo} pixels, got {h}x{w}")
    x = stack.float()
    if c == 1:
        fused = run_net_tiled(net, x[0], x[1], tile=tile, ctx=ctx)
        ga, gb, gf = x[0, 0], x[1, 0], fused[0]
        labels, wa = decision_from_output(gf, ga, gb, smooth_radius)
    elif colour == "channels":
        fused = run_net_tiled(net, x[0], x[1], tile=tile, ctx=ctx)
        ycc = rgb_to_ycbcr(torch.cat([x, fused.unsqueeze(0)]))
        labels, wa = decision_from_output(ycc[2, 0], ycc[0, 0], ycc[1, 0], smooth_radius)
    else:
        ycc = rgb_to_ycbcr(x)
        y = run_net_tiled(net, ycc[0, :1], ycc[1, :1], tile=tile, ctx=ctx)[0]
        labels, wa = decision_from_output(y, ycc[0, 0], ycc[1, 0], smooth_radius)
        chroma = wa * ycc[0, 1:] + (1 - wa) * ycc[1, 1:]
        fused = ycbcr_to_rgb(torch.cat([y.unsqueeze(0), chroma])).clamp_(0, 1)
    ctx.report(1, 1, "fused")
    if output == "decision":
        sel = labels == 0
        fused = torch.where(sel, x[0], x[1])
        wa = sel.float()
    return MethodOutput(fused=fused.to(stack.dtype), labels=labels, weights=torch.stack([wa, 1 - wa]))
