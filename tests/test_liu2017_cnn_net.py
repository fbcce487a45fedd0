"""The Liu et al. 2017 network: sizes, parameter counts, fast dense inference."""

from __future__ import annotations

import pytest
import torch

from napari_fusion.nets.liu2017_cnn import (
    LiuFocusNet,
    count_parameters,
    difference_filters,
    folded_head,
    image_terms,
    pair_scores,
    score_map_size,
    spread_scores,
)


def _net(variant: str) -> LiuFocusNet:
    torch.manual_seed(1)
    net = LiuFocusNet(variant).eval()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.Conv2d):
                m.bias.normal_(0, 0.1)
    return net


def test_parameter_counts():
    # the paper's slight model: 435,202 parameters
    assert count_parameters(LiuFocusNet("slight")) == 435_202
    # original: + fc1 (512*8*8*256 + 256) and fc2 (256*2 + 2) instead of the 8x8 512->2 head
    assert (
        count_parameters(LiuFocusNet("original")) == 435_202 - (512 * 64 * 2 + 2) + 512 * 64 * 256 + 256 + 256 * 2 + 2
    )


@pytest.mark.parametrize("variant", ["slight", "original"])
@pytest.mark.parametrize("size", [(16, 16), (17, 16), (16, 31), (33, 47), (53, 68)])
def test_dense_output_shape_any_size(variant, size):
    net = LiuFocusNet(variant)
    a = torch.rand(2, 1, *size)
    with torch.no_grad():
        out = net(a, a.flip(0))
    h, w = score_map_size(*size)
    assert h == (size[0] + 1) // 2 - 7 and w == (size[1] + 1) // 2 - 7
    assert out.shape == (2, 2, h, w)


@pytest.mark.parametrize("variant", ["slight", "original"])
def test_folded_head_and_tiles_are_exact(variant):
    net = _net(variant)
    a, b = torch.rand(1, 1, 37, 43), torch.rand(1, 1, 37, 43)
    with torch.no_grad():
        ref = net.score_map(a, b)[0]
    w, bias = folded_head(net)
    assert w.shape == (2, 512, 8, 8) and bias.shape == (2,)
    filt, db = difference_filters(net)
    for tile in (6, 500):
        s = pair_scores(image_terms(net, a[0, 0], tile=tile), image_terms(net, b[0, 0], tile=tile), db)
        torch.testing.assert_close(s, ref, atol=2e-6, rtol=0)


def test_spread_scores_averages_patches():
    h, w = 40, 36
    sh, sw = score_map_size(h, w)
    ones = spread_scores(torch.ones(sh, sw), h, w)
    assert ones.shape == (h, w)
    torch.testing.assert_close(ones, torch.ones(h, w))
    s = torch.zeros(sh, sw)
    s[3, 4] = 1.0  # patch rows 6..21, cols 8..23
    fm = spread_scores(s, h, w)
    inside = torch.zeros(h, w, dtype=torch.bool)
    inside[6:22, 8:24] = True
    assert (fm[~inside] == 0).all() and (fm[inside] > 0).all()
    # pixel (6, 8) is covered only by patch (3, 4) and patches above/left of it: (0..3) x (0..4)
    assert fm[6, 8] == pytest.approx(1.0 / (4 * 5))


def test_small_input_rejected():
    with pytest.raises(ValueError, match="16x16"):
        LiuFocusNet()(torch.rand(1, 1, 15, 40), torch.rand(1, 1, 15, 40))


def test_stack_terms_batches_progress_and_cancel():
    from napari_fusion.nets.liu2017_cnn import DenseScorer, stack_terms

    net = _net("slight")
    scorer = DenseScorer(net)
    grey = torch.rand(3, 50, 61)
    ref = torch.stack([image_terms(net, g, tile=500) for g in grey])
    calls = []
    out = stack_terms(scorer, grey, tile=7, batch=2, progress=lambda d, t: calls.append((d, t)))
    torch.testing.assert_close(out, ref, atol=2e-6, rtol=0)
    assert calls[-1][0] == calls[-1][1] and len(calls) > 4  # per batch, to the end

    class Stop(Exception):
        pass

    def cancel(done, total):
        raise Stop

    with pytest.raises(Stop):
        stack_terms(scorer, grey, tile=7, progress=cancel)


def test_known_tiles_are_reused_exactly():
    from napari_fusion.nets.liu2017_cnn import DenseScorer, stack_terms, tile_grid

    scorer = DenseScorer(_net("slight"))
    a, b = torch.rand(70, 66), torch.rand(70, 66)
    known = torch.stack([a, b])
    known_terms = stack_terms(scorer, known, tile=8)
    blend = a.clone()
    blend[40:] = b[40:]  # bottom from b: tiles there reuse b's, the seam is recomputed
    calls = []
    out = stack_terms(
        scorer, blend[None], tile=8, known=(known, known_terms), batch=1, progress=lambda d, t: calls.append(d)
    )
    torch.testing.assert_close(out, stack_terms(scorer, blend[None], tile=8), atol=2e-6, rtol=0)
    assert torch.equal(out[0, :, :5], known_terms[0, :, :5])
    assert torch.equal(out[0, :, -3:], known_terms[1, :, -3:])
    assert calls[-1] == len(tile_grid(70, 66, 8))  # progress reaches the end


def test_fused_convolution_and_relu_equals_conv2d_then_relu(monkeypatch):
    """``nets._conv.conv3x3_relu``: oneDNN's fused call (where available) and the fallback both give
    ``relu(conv2d(x, w, b, padding=1))``, channels-last or not; inside autograd it is not fused."""
    import torch
    import torch.nn.functional as F

    from napari_fusion.nets import _conv

    g = torch.Generator().manual_seed(2)
    x, w, b = torch.randn(2, 5, 19, 23, generator=g), torch.randn(7, 5, 3, 3, generator=g), torch.randn(7, generator=g)
    want = F.conv2d(x, w, b, padding=1).clamp_min(0)
    cl = torch.channels_last
    with torch.no_grad():
        torch.testing.assert_close(_conv.conv3x3_relu(x, w, b), want, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(
            _conv.conv3x3_relu(x.contiguous(memory_format=cl), w.contiguous(memory_format=cl), b), want,
            rtol=1e-5, atol=1e-5,
        )  # fmt: skip
        rows_unpadded = F.conv2d(x, w, b, padding=(0, 1)).clamp_min(0)
        torch.testing.assert_close(_conv.conv3x3_relu(x, w, b, pad_rows=False), rows_unpadded, rtol=1e-5, atol=1e-5)
        monkeypatch.setattr(_conv, "has_fused_conv", lambda: False)
        torch.testing.assert_close(_conv.conv3x3_relu(x, w, b), want, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(_conv.conv3x3_relu(x, w, b, pad_rows=False), rows_unpadded, rtol=1e-5, atol=1e-5)
    monkeypatch.undo()
    assert not _conv.fusable(x, w.requires_grad_(True))


@pytest.mark.parametrize("shape", [(1, 1, 37, 43), (2, 1, 16, 16), (3, 1, 35, 20)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_scorer_bands_equal_whole_maps(monkeypatch, shape, dtype):
    """``DenseScorer.features`` computes conv1, conv2 and the pooling in bands of ``BAND`` rows on a
    CPU: the same numbers, bit for bit, as one band over the whole tile (odd heights, a short last
    band, batches) and as the layered branch up to float rounding."""
    from napari_fusion.nets import liu2017_cnn

    net = _net("slight")
    scorer = liu2017_cnn.DenseScorer(net, dtype=dtype)
    x = torch.rand(*shape, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        monkeypatch.setattr(liu2017_cnn, "BAND", 1000)
        whole = scorer.features(x)
        for band in (2, 4, 6):
            monkeypatch.setattr(liu2017_cnn, "BAND", band)
            assert torch.equal(scorer.features(x), whole)
        if dtype == torch.float32:
            torch.testing.assert_close(whole, net.branch(x), atol=1e-5, rtol=1e-5)
