"""ops.tiles.map_tiles: tiles with a halo equal a whole-image pass; progress and cancel per tile."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from napari_fusion.errors import FusionCancelled
from napari_fusion.ops import tiles as T
from napari_fusion.ops.tiles import map_tiles


def _net() -> nn.Module:
    torch.manual_seed(0)
    # two reflect-padded 3x3 convolutions: receptive radius 2
    return nn.Sequential(
        nn.ReflectionPad2d(1), nn.Conv2d(1, 3, 3), nn.ReLU(), nn.ReflectionPad2d(1), nn.Conv2d(3, 2, 3)
    ).eval()


@torch.no_grad()
@pytest.mark.parametrize("tile", [1, 7, 16, 50, 500])
def test_tiles_equal_whole_image(tile):
    net = _net()
    x = torch.rand(2, 1, 45, 38)
    whole = net(x)
    pooled = nn.functional.max_pool2d(whole, 2)
    a, b = map_tiles(lambda t: (net(t), nn.functional.max_pool2d(net(t), 2)), x, halo=2, tile=tile, strides=(1, 2))
    assert a.shape == whole.shape and b.shape == pooled.shape
    torch.testing.assert_close(a, whole, rtol=0, atol=1e-6)
    torch.testing.assert_close(b, pooled, rtol=0, atol=1e-6)


@torch.no_grad()
def test_too_small_halo_differs():
    net = _net()
    x = torch.rand(1, 1, 40, 40)
    (a,) = map_tiles(net, x, halo=1, tile=10)
    assert (a - net(x)).abs().max() > 1e-3


def test_several_inputs_and_out_buffers():
    x, y = torch.rand(1, 30, 20), torch.rand(1, 30, 20)
    out = torch.zeros(1, 30, 20)
    (got,) = map_tiles(lambda a, b: a * b, (x, y), halo=0, tile=8, out=(out,))
    assert got is out
    torch.testing.assert_close(out, x * y)
    with pytest.raises(ValueError, match="same height and width"):
        map_tiles(lambda a, b: a, (x, y[..., :10]), halo=0)


def test_reports_every_tile_and_stops_when_the_report_raises():
    calls, reports = [], []

    def fn(t):
        calls.append(t.shape)
        return t

    x = torch.rand(1, 25, 25)
    map_tiles(fn, x, halo=3, tile=10, report=lambda d, t: reports.append((d, t)))
    assert reports == [(k, 9) for k in range(1, 10)] and len(calls) == 9

    calls.clear()

    def cancel(done, total):
        if done == 2:
            raise FusionCancelled("stop")

    with pytest.raises(FusionCancelled):
        map_tiles(fn, x, halo=3, tile=10, report=cancel)
    assert len(calls) == 2


@torch.no_grad()
def test_out_of_memory_tiles_are_split_and_the_result_is_unchanged():
    """A block larger than the 'device' holds raises OutOfMemoryError: the tile is split in four
    (same halo) until its blocks fit; progress still ends at the tile count."""
    net = _net()
    x = torch.rand(1, 1, 90, 70)
    sizes = []

    def small_device(block):
        sizes.append(tuple(block.shape[-2:]))
        if block.shape[-2] * block.shape[-1] > 40 * 40:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return net(block)

    reports = []
    (got,) = map_tiles(small_device, x, halo=2, tile=64, report=lambda d, t: reports.append((d, t)))
    torch.testing.assert_close(got, net(x), rtol=0, atol=1e-6)
    assert any(h * w > 40 * 40 for h, w in sizes)  # some blocks failed first
    assert reports[-1] == (4, 4) and all(b[0] >= a[0] for a, b in zip(reports, reports[1:]))

    def never_fits(block):
        raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    with pytest.raises(torch.OutOfMemoryError):  # splitting stops at MIN_SPLIT_TILE
        map_tiles(never_fits, x, halo=2, tile=64)

    def other_error(block):
        raise ValueError("not a memory problem")

    with pytest.raises(ValueError, match="not a memory problem"):  # other errors are not retried
        map_tiles(other_error, x, halo=2, tile=64)


def test_tile_with_unmapped_maps(monkeypatch):
    """Outside tiled runs the tile is kept; in them, the largest multiple of 8 (within
    [floor, tile]) whose channels x (tile + grow)^2 float32 maps stay below the mapped size."""
    monkeypatch.setattr(T, "large_allocations_mapped", lambda: False)
    assert T.tile_with_unmapped_maps(256, channels=64, grow=28) == 256
    monkeypatch.setattr(T, "large_allocations_mapped", lambda: True)
    for tile, channels, grow in ((256, 64, 28), (256, 32, 42), (512, 8, 0), (1000, 24, 30), (64, 64, 28)):
        t = T.tile_with_unmapped_maps(tile, channels=channels, grow=grow)
        assert t % 8 == 0 and 32 <= t <= tile
        assert channels * (t + grow) ** 2 * 4 < T.LARGE_ALLOCATION_BYTES
        assert t == tile or channels * (t + 8 + grow) ** 2 * 4 >= T.LARGE_ALLOCATION_BYTES
    assert T.tile_with_unmapped_maps(256, channels=64, grow=28) == 96  # tiis2018_fcn's shipped network
    assert T.tile_with_unmapped_maps(256, channels=4096, grow=0, floor=48) == 48  # never below the floor
    assert T.tile_with_unmapped_maps(10, channels=4096, grow=0, floor=48) == 10  # nor above a smaller tile


def test_threads_per_tile_and_torch_threads(monkeypatch):
    if not T._threads_are_per_thread():
        pytest.skip("torch's thread count is not per calling thread here (not OpenMP)")
    monkeypatch.setattr(T, "cpus_allowed_by_quota", lambda: None)  # as without a container's CPU quota
    before = torch.get_num_threads()
    torch.set_num_threads(4)
    try:
        assert T.threads_per_tile(1) is None
        assert T.threads_per_tile(2) == (2, 4)
        assert T.threads_per_tile(3) == (1, 4)
        assert T.threads_per_tile(8) == (1, 4)
        with T.torch_threads((1, 3)):
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 3  # the planner's count, not the one before
        torch.set_num_threads(4)
        with T.torch_threads(None):
            assert torch.get_num_threads() == 4
        torch.set_num_threads(1)
        assert T.threads_per_tile(2) is None  # nothing to share
    finally:
        torch.set_num_threads(before)
