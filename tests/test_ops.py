"""Shared torch building blocks against independent references (SciPy, direct formulas)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from napari_fusion import ops
from napari_fusion.ops.filters import conv2d_same


@pytest.fixture
def img():
    rng = np.random.default_rng(0)
    return rng.random((37, 53)).astype(np.float64)


@pytest.mark.parametrize("radius", [1, 3, 10])
def test_box_filter_matches_scipy(img, radius):
    ours = ops.box_filter(torch.from_numpy(img), radius).numpy()
    ref = ndimage.uniform_filter(img, 2 * radius + 1, mode="mirror")
    np.testing.assert_allclose(ours, ref, atol=1e-10)
    zeros = ops.box_filter(torch.from_numpy(img), radius, border="zeros").numpy()
    ref0 = ndimage.uniform_filter(img, 2 * radius + 1, mode="constant", cval=0.0)
    np.testing.assert_allclose(zeros, ref0, atol=1e-10)


def test_box_filter_larger_than_image_is_defined():
    x = torch.rand(5, 6, dtype=torch.float64)
    y = ops.box_filter(x, 20)
    ref = ndimage.uniform_filter(x.numpy(), 41, mode="nearest")
    np.testing.assert_allclose(y.numpy(), ref, atol=1e-10)


@pytest.mark.parametrize("sigma", [0.8, 2.0, 5.0])
def test_gaussian_matches_scipy(img, sigma):
    ours = ops.gaussian_filter(torch.from_numpy(img), sigma).numpy()
    ref = ndimage.gaussian_filter(img, sigma, mode="mirror", truncate=np.ceil(3 * sigma) / sigma)
    np.testing.assert_allclose(ours, ref, atol=1e-7)


def test_laplacian_and_sobel(img):
    t = torch.from_numpy(img)
    np.testing.assert_allclose(ops.laplacian(t).numpy(), ndimage.laplace(img, mode="mirror"), atol=1e-10)
    gx, gy = ops.sobel_gradients(t)
    np.testing.assert_allclose(gx.numpy(), ndimage.sobel(img, axis=1, mode="mirror"), atol=1e-10)
    np.testing.assert_allclose(gy.numpy(), ndimage.sobel(img, axis=0, mode="mirror"), atol=1e-10)


def test_filters_batch_over_leading_dims(img):
    t = torch.from_numpy(np.stack([img, 2 * img]))[None]  # (1, 2, H, W)
    y = ops.gaussian_filter(t, 1.5)
    np.testing.assert_allclose(y[0, 1].numpy(), 2 * y[0, 0].numpy(), atol=1e-12)


def _guided_reference(I, p, r, eps):
    """He et al.'s algorithm written directly with SciPy means."""
    mean = lambda x: ndimage.uniform_filter(x, 2 * r + 1, mode="mirror")  # noqa: E731
    mi, mp = mean(I), mean(p)
    a = (mean(I * p) - mi * mp) / (mean(I * I) - mi * mi + eps)
    b = mp - a * mi
    return mean(a) * I + mean(b)


def test_guided_filter_grey(img):
    p = np.random.default_rng(1).random(img.shape)
    ours = ops.guided_filter(torch.from_numpy(img), torch.from_numpy(p), 4, 0.01).numpy()
    np.testing.assert_allclose(ours, _guided_reference(img, p, 4, 0.01), atol=1e-9)


def test_guided_filter_edge_preserving():
    """A step edge in the guide keeps a binary map sharp with small eps, blurs it with large eps."""
    guide = np.zeros((40, 40))
    guide[:, 20:] = 1.0
    p = guide.copy()
    sharp = ops.guided_filter(torch.from_numpy(guide), torch.from_numpy(p), 5, 1e-6).numpy()
    soft = ops.guided_filter(torch.from_numpy(guide), torch.from_numpy(p), 5, 10.0).numpy()
    assert np.abs(sharp - p).max() < 1e-3
    assert np.abs(soft - p).max() > 0.2


def test_guided_filter_colour_reduces_to_grey_for_identical_channels(img):
    p = np.random.default_rng(2).random(img.shape)
    guide = torch.from_numpy(np.stack([img, img, img]))
    # identical channels make the 3x3 covariance singular without eps; with eps the
    # colour filter equals the grey filter with eps scaled by the channel count
    ours = ops.guided_filter(guide, torch.from_numpy(p), 3, 0.03).numpy()
    ref = _guided_reference(img, p, 3, 0.01)
    np.testing.assert_allclose(ours, ref, atol=1e-7)


@pytest.mark.parametrize("shape", [(64, 64), (37, 53), (9, 130)])
def test_laplacian_pyramid_reconstructs_exactly(shape):
    x = torch.rand(2, 3, *shape, dtype=torch.float64)
    levels = ops.pyramid_levels(*shape)
    pyr = ops.laplacian_pyramid(x, levels)
    assert len(pyr) == levels
    np.testing.assert_allclose(ops.reconstruct_laplacian_pyramid(pyr).numpy(), x.numpy(), atol=1e-12)


def test_gaussian_pyramid_preserves_constants():
    x = torch.full((1, 37, 53), 0.7, dtype=torch.float64)
    for level in ops.gaussian_pyramid(x, 4):
        np.testing.assert_allclose(level.numpy(), 0.7, atol=1e-12)
    pyr = ops.laplacian_pyramid(x, 4)
    for band in pyr[:-1]:
        assert band.abs().max() < 1e-12


def test_colour_roundtrip_and_luma():
    x = torch.rand(3, 10, 12, dtype=torch.float64)
    np.testing.assert_allclose(ops.ycbcr_to_rgb(ops.rgb_to_ycbcr(x)).numpy(), x.numpy(), atol=1e-3)
    grey = torch.full((3, 4, 4), 0.4, dtype=torch.float64)
    ycc = ops.rgb_to_ycbcr(grey)
    np.testing.assert_allclose(ycc[0].numpy(), 0.4, atol=1e-12)
    np.testing.assert_allclose(ycc[1:].numpy(), 0.5, atol=1e-12)
    np.testing.assert_allclose(ops.luminance(x).numpy(), 0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2], atol=1e-12)


def test_remove_small_regions():
    lab = torch.zeros(30, 30, dtype=torch.long)
    lab[:, 15:] = 1
    lab[5:7, 5:7] = 1  # 4-pixel island of 1 in the 0 region
    lab[20:23, 20:23] = 0  # 9-pixel hole in the 1 region
    lab[0:2, 28:30] = 2  # 4-pixel region of a third label
    out = ops.remove_small_regions(lab, 10)
    expected = torch.zeros(30, 30, dtype=torch.long)
    expected[:, 15:] = 1
    assert torch.equal(out, expected)
    assert torch.equal(lab[5:7, 5:7], torch.ones(2, 2, dtype=torch.long))  # input untouched


def test_remove_small_regions_joins_regions_across_bands(monkeypatch):
    """Regions are labelled a band of rows at a time and joined across the band edges: labelled
    one row at a time, a 12-pixel region over three rows is kept at min_area 12, removed at 13, and
    a U-shaped region whose arms meet only in its last row is one region."""
    from napari_fusion.ops import regions

    monkeypatch.setattr(regions, "_BAND_PIXELS", 7)
    lab = torch.zeros(20, 20, dtype=torch.long)
    lab[2:5, 3:7] = 1  # 12 pixels over three rows, so over three bands
    assert torch.equal(ops.remove_small_regions(lab, 12), lab)
    assert torch.equal(ops.remove_small_regions(lab, 13), torch.zeros_like(lab))
    u = torch.zeros(20, 20, dtype=torch.long)
    u[8:14, 10] = 1
    u[8:14, 14] = 1
    u[13, 10:15] = 1  # 6 + 6 + 3 = 15 pixels, joined only in row 13
    assert torch.equal(ops.remove_small_regions(u, 15), u)
    assert torch.equal(ops.remove_small_regions(u, 16), torch.zeros_like(u))


@pytest.mark.parametrize("cell,margin", [(256, 32), (8, 2), (5, 1)])
def test_remove_small_regions_fills_from_the_nearest_kept_pixel(monkeypatch, cell, margin):
    """Each removed pixel takes the value of a nearest kept pixel (checked per value with SciPy's
    transform of the whole map, so ties may go either way), with cells and margins small enough
    that most pixels are settled by the search over groups of cells."""
    from scipy import ndimage

    from napari_fusion.ops import regions

    monkeypatch.setattr(regions, "_CELL", cell)
    monkeypatch.setattr(regions, "_MARGIN", margin)
    rng = np.random.default_rng(3)
    coarse = rng.integers(0, 3, (12, 14))
    lab = np.kron(coarse, np.ones((6, 6), dtype=np.int64))[:70, :81]
    lab[rng.random(lab.shape) < 0.05] = 3  # specks of a fourth value everywhere
    lab[10:40, 20:60] = rng.integers(0, 2, (30, 40))  # a large noisy area: nothing kept inside
    out = ops.remove_small_regions(torch.from_numpy(lab), 40).numpy()
    sizes_ok = np.zeros(lab.shape, dtype=bool)
    for v in np.unique(lab):
        comp, _ = ndimage.label(lab == v)
        sizes_ok |= (np.bincount(comp.ravel()) >= 40)[comp] & (comp > 0)
    assert sizes_ok.any() and (~sizes_ok).sum() > 1000
    np.testing.assert_array_equal(out[sizes_ok], lab[sizes_ok])
    dist = {v: ndimage.distance_transform_edt(~(sizes_ok & (lab == v))) for v in np.unique(lab[sizes_ok])}
    nearest = np.min(np.stack(list(dist.values())), axis=0)
    chosen = np.choose(np.searchsorted(sorted(dist), out), [dist[v] for v in sorted(dist)])
    np.testing.assert_allclose(chosen[~sizes_ok], nearest[~sizes_ok])


def test_mode_filter_removes_speckle():
    lab = torch.zeros(20, 20, dtype=torch.long)
    lab[:, 10:] = 3
    noisy = lab.clone()
    noisy[4, 4] = 3
    noisy[12, 15] = 0
    assert torch.equal(ops.mode_filter(noisy, 1), lab)


def test_weighted_sum_and_select():
    stack = torch.rand(3, 2, 5, 6)
    labels = torch.randint(0, 3, (5, 6))
    sel = ops.select(stack, labels)
    w = ops.one_hot(labels, 3)
    np.testing.assert_allclose(ops.weighted_sum(stack, w).numpy(), sel.numpy(), atol=1e-7)
    zero = torch.zeros(3, 5, 6)
    np.testing.assert_allclose(ops.normalise_weights(zero).numpy(), 1 / 3)


def test_conv2d_same_identity(img):
    k = torch.zeros(3, 3)
    k[1, 1] = 1
    np.testing.assert_allclose(conv2d_same(torch.from_numpy(img), k).numpy(), img)


@pytest.mark.parametrize("sigma", [0.7, 3.0])
def test_shifted_sum_filters_equal_the_conv2d_path(img, sigma):
    """The CPU shifted-sum path gives conv2d's values (conv2d still serves GPUs and autograd)."""
    from napari_fusion.ops.filters import gaussian_filter, laplacian

    x = torch.as_tensor(img, dtype=torch.float32)[None].repeat(2, 1, 1)
    ref = x.clone().requires_grad_(True)  # autograd inputs take the conv2d path
    np.testing.assert_allclose(gaussian_filter(x, sigma), gaussian_filter(ref, sigma).detach(), atol=1e-6)
    np.testing.assert_allclose(laplacian(x), laplacian(ref).detach(), atol=1e-5)


@pytest.mark.parametrize("border", ["reflect", "replicate", "zeros"])
@pytest.mark.parametrize("shape", [(37, 29), (5, 40), (40, 5)])
def test_row_blocked_filter_is_bit_identical_to_one_block(monkeypatch, border, shape):
    """The CPU filter works in blocks of rows that stay in cache; blocks of 1, 3 or 7 rows give the
    one-block values bit for bit (also where reflection falls back to replication on one axis only),
    and match conv2d's values."""
    from napari_fusion.ops import filters

    x = torch.rand(2, *shape, generator=torch.Generator().manual_seed(3))
    k = filters.gaussian_kernel1d(2.0)
    whole = filters.separable_filter(x, k, border=border)
    for rows in (1, 3, 7):
        monkeypatch.setattr(filters, "FILTER_BLOCK_ELEMENTS", rows * (shape[1] + k.numel() - 1))
        assert torch.equal(filters.separable_filter(x, k, border=border), whole)
    ref = filters.separable_filter(x.clone().requires_grad_(True), k, border=border).detach()
    np.testing.assert_allclose(whole, ref, atol=1e-6)


@pytest.mark.parametrize("shape", [(4, 4), (5, 7), (33, 18), (64, 65)])
def test_polyphase_reduce_and_expand_equal_the_definitions(shape):
    """Burt's reduce (blur then decimate) and normalised expand, computed directly."""
    from napari_fusion.ops import pyramids as P

    x = torch.rand(2, 3, *shape, generator=torch.Generator().manual_seed(0))
    small = P._reduce_reference(x)
    np.testing.assert_allclose(P._reduce(x), small, atol=1e-6)
    np.testing.assert_allclose(P._expand(small, shape), P._expand_reference(small, shape), atol=1e-6)


@pytest.mark.parametrize("radius", [1, 2, 7, 45])
@pytest.mark.parametrize("border", ["reflect", "replicate", "zeros"])
def test_box_filter_window_sums_equal_the_zero_padded_form(radius, border):
    """The box filter takes window sums from running sums without padding them with a zero row
    and column: the same values bit for bit as the padded form (and a box of constant is constant)."""
    import torch.nn.functional as F

    from napari_fusion.ops.filters import _pad, box_filter

    x = torch.rand(2, 40, 33, generator=torch.Generator().manual_seed(radius))
    k = 2 * radius + 1
    c = _pad(x.double()[:, None], (radius,) * 4, border).cumsum(-1)
    c = F.pad(c, (1, 0))
    c = (c[..., k:] - c[..., :-k]).cumsum(-2)
    c = F.pad(c, (0, 0, 1, 0))
    expected = ((c[..., k:, :] - c[..., :-k, :]) / (k * k)).float()[:, 0]
    assert torch.equal(box_filter(x, radius, border=border), expected)
    np.testing.assert_allclose(box_filter(torch.full((30, 30), 0.25), radius, border="reflect"), 0.25, atol=1e-7)


@pytest.mark.parametrize("rows", [1, 2, 65, 257])
def test_running_sums_down_equal_cumsum_bit_for_bit(rows):
    """The box filter's vertical running sums, one row added to the next in place, are
    ``cumsum(-2)`` exactly (the same additions in the same order), and so is a box filter over them."""
    from scipy import ndimage

    from napari_fusion.ops.filters import box_filter, running_sums_down

    x = torch.rand(2, 1, rows, 37, generator=torch.Generator().manual_seed(rows), dtype=torch.float64)
    assert torch.equal(running_sums_down(x.clone()), x.cumsum(-2))
    img = torch.rand(rows + 40, 37, generator=torch.Generator().manual_seed(rows))
    want = ndimage.uniform_filter(img.double().numpy(), size=2 * 7 + 1, mode="mirror")
    np.testing.assert_allclose(box_filter(img, 7).numpy(), want, atol=1e-6)


def test_box_filter_is_differentiable_and_equal_with_autograd():
    """Training back-propagates through the box filter (guided filters): the autograd path gives
    the inference path's values and the gradient of a sum of box means (each pixel's weight)."""
    from napari_fusion.ops.filters import box_filter

    x = torch.rand(1, 130, 90, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    with torch.no_grad():
        plain = box_filter(x, 3)
    xg = x.clone().requires_grad_(True)
    out = box_filter(xg, 3)
    torch.testing.assert_close(out.detach(), plain)
    out.sum().backward()
    assert xg.grad is not None and torch.isfinite(xg.grad).all()
    torch.testing.assert_close(xg.grad[0, 40:90, 30:60], torch.ones(50, 30, dtype=torch.float64))


def _padded_reduce_axis(x, dim, taps):
    """Burt reduce along ``dim`` on an explicitly reflected copy (the form before the copy-free one)."""
    n = x.shape[dim]
    p = torch.cat([x.narrow(dim, 1, 2).flip(dim), x, x.narrow(dim, n - 3, 2).flip(dim)], dim)
    out = None
    for t, k in enumerate(taps):
        tap = p.narrow(dim, t, 2 * ((n + 1) // 2) - 1)
        tap = tap[(slice(None),) * dim + (slice(None, None, 2),)]
        out = tap * k if out is None else out.add_(tap, alpha=k)
    return out


def _padded_expand_axis(x, length, dim, taps):
    n = x.shape[dim]
    tail = x.narrow(dim, n - 1 if length % 2 == 0 else n - 2, 1)
    xe = torch.cat([x.narrow(dim, 1, 1), x, tail], dim)
    even = xe.narrow(dim, 0, n) * (2 * taps[0])
    even.add_(xe.narrow(dim, 1, n), alpha=2 * taps[2]).add_(xe.narrow(dim, 2, n), alpha=2 * taps[4])
    odd = xe.narrow(dim, 1, length // 2) * (2 * taps[1])
    odd.add_(xe.narrow(dim, 2, length // 2), alpha=2 * taps[3])
    out = torch.empty([length if d == dim else s for d, s in enumerate(x.shape)])
    out[(slice(None),) * dim + (slice(0, None, 2),)] = even
    out[(slice(None),) * dim + (slice(1, None, 2),)] = odd
    return out


@pytest.mark.parametrize("n", [2, 3, 4, 5, 6, 7, 8, 9, 16, 33])
def test_copy_free_reduce_and_expand_are_bit_identical_to_padded_copies(n):
    """The pyramid steps read the image in place and patch only the reflected ends: the same
    values bit for bit as filtering an explicitly padded copy, at every length and parity."""
    from napari_fusion.ops import pyramids as P

    x = torch.rand(2, n, 11, generator=torch.Generator().manual_seed(n))
    for dim in (1, 2):
        size = x.shape[dim]
        if size >= 4:
            assert torch.equal(P._reduce_axis(x, dim), _padded_reduce_axis(x, dim, P._K))
        for length in (2 * size, 2 * size - 1):
            assert torch.equal(P._expand_axis(x, length, dim), _padded_expand_axis(x, length, dim, P._K))


def test_blend_in_pyramid_selects_one_hot_and_averages_uniform_weights():
    from napari_fusion.ops.pyramids import blend_in_pyramid

    stack = torch.rand(3, 2, 40, 48, generator=torch.Generator().manual_seed(1))
    for levels in (1, 3):
        onehot = torch.zeros(3, 40, 48)
        onehot[1] = 1.0
        np.testing.assert_allclose(blend_in_pyramid(stack, onehot, levels), stack[1], atol=1e-5)
        uniform = torch.full((3, 40, 48), 1 / 3)
        np.testing.assert_allclose(blend_in_pyramid(stack, uniform, levels), stack.mean(0), atol=1e-5)
    seen = []
    blend_in_pyramid(stack, uniform, 2, progress=seen.append)
    assert seen == [0, 1, 2]


def test_blend_in_pyramid_under_autograd_matches_and_has_gradients():
    """Under autograd the pyramids take the reference forms (the direct ones write into ``out=``
    buffers): same values as without gradients, and gradients that pass a numerical check."""
    from napari_fusion.ops.pyramids import blend_in_pyramid

    gen = torch.Generator().manual_seed(2)
    stack = torch.rand(3, 2, 19, 22, dtype=torch.float64, generator=gen)
    logits = torch.randn(3, 19, 22, dtype=torch.float64, generator=gen, requires_grad=True)
    with torch.no_grad():
        plain = blend_in_pyramid(stack, torch.softmax(logits, 0), 3)
    tracked = blend_in_pyramid(stack, torch.softmax(logits, 0), 3)
    assert tracked.requires_grad
    np.testing.assert_allclose(tracked.detach(), plain, atol=1e-12)
    small, z = stack[:2, :1, :9, :10], logits[:2, :9, :10].detach().clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda z: blend_in_pyramid(small, torch.softmax(z, 0), 2), (z,))


def test_gaussian_level_and_collapse_onto_split_a_pyramid_exactly():
    """A pyramid split at level m: its level-m Gaussian image and a collapse continued from the
    coarse part give bit for bit the whole pyramid's values (the tiled pyramid methods use this)."""
    from napari_fusion.ops.pyramids import (
        blend_in_pyramid,
        collapse_onto,
        gaussian_level,
        gaussian_pyramid,
        laplacian_pyramid,
        reconstruct_laplacian_pyramid,
    )

    gen = torch.Generator().manual_seed(5)
    x = torch.rand((37, 53), generator=gen)
    g = gaussian_pyramid(x, 5)
    for m in range(5):
        assert torch.equal(gaussian_level(x, m), g[m])
    pyr = laplacian_pyramid(x, 5)
    coarse = reconstruct_laplacian_pyramid(laplacian_pyramid(g[2], 3))
    assert torch.equal(collapse_onto(coarse, pyr[:2]), reconstruct_laplacian_pyramid(pyr))
    stack, weights = torch.rand((3, 2, 37, 53), generator=gen), torch.rand((3, 37, 53), generator=gen)
    whole = blend_in_pyramid(stack, weights, 5)
    low = torch.stack([torch.cat([gaussian_level(stack[k], 2), gaussian_level(weights[k], 2)[None]]) for k in range(3)])
    coarse = blend_in_pyramid(low[:, :-1], low[:, -1], 3)
    assert torch.equal(blend_in_pyramid(stack, weights, 2, coarse=coarse), whole)
    # control: the coarse part split at another level gives another image
    assert not torch.allclose(blend_in_pyramid(stack, weights, 3, coarse=coarse), whole, atol=1e-3)


def test_most_colourful_source_from_chroma_sums_of_parts():
    from napari_fusion.ops.colour import chroma_sums, most_colourful, rgb_to_ycbcr, visible_source

    gen = torch.Generator().manual_seed(2)
    grey = torch.rand((1, 1, 20, 30), generator=gen).expand(1, 3, 20, 30)
    colour = torch.rand((1, 3, 20, 30), generator=gen)
    stack = torch.cat([grey, colour])
    assert visible_source(stack) == 1 and visible_source(stack.flip(0)) == 0
    ycc = rgb_to_ycbcr(stack, channel_dim=1)
    parts = chroma_sums(ycc[..., :7]) + chroma_sums(ycc[..., 7:])
    torch.testing.assert_close(parts, chroma_sums(ycc), rtol=1e-12, atol=1e-9)  # sums over tiles add up
    assert most_colourful(parts) == 1


@pytest.mark.parametrize("border", ["reflect", "replicate", "zeros"])
@pytest.mark.parametrize(("shape", "radius"), [((3, 50, 41), 4), ((1, 70, 23), 12), ((2, 9, 60), 5), ((1, 6, 40), 8)])
def test_box_filter_in_row_strips_equals_the_whole_image_sums(monkeypatch, border, shape, radius):
    """The CPU box filter runs in cache-sized blocks; with blocks so small that every image is cut
    into strips of rows (context rows made by the border rule at the top and bottom strips), it
    gives the whole-image sums up to float64 rounding. Also a radius above the image height (the
    reflection falls back to replication), and several planes per block."""
    from napari_fusion.ops import filters

    x = torch.rand(shape, generator=torch.Generator().manual_seed(radius))
    mode = filters._border_mode(x[:, None], radius, border)
    whole = filters._box_sums(x[:, None], radius, mode)[:, 0].float()
    for elements in (300, 1 << 19):  # strips of rows; whole planes, all in one block
        monkeypatch.setattr(filters, "BOX_BLOCK_ELEMENTS", elements)
        np.testing.assert_allclose(filters.box_filter(x, radius, border=border), whole, rtol=0, atol=2e-7)
    monkeypatch.setattr(filters, "BOX_BLOCK_ELEMENTS", 300)
    if border == "reflect" and radius < min(shape[-2:]):
        from scipy import ndimage

        want = ndimage.uniform_filter(x[0].double().numpy(), size=2 * radius + 1, mode="mirror")
        np.testing.assert_allclose(filters.box_filter(x[0], radius), want, atol=1e-6)
