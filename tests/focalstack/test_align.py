"""Alignment: known synthetic shifts/scales, chaining, the checks that make it harmless, real stacks."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from scipy import ndimage

from napari_fusion.errors import FusionInputError
from napari_fusion.focalstack import (
    Alignment,
    align_stack,
    apply_alignment,
    estimate_alignment,
    fuse_focal_stack,
    phase_correlation,
)


def _similar(img, s, t):
    """Slice whose pixel M x shows the reference's pixel x (M: scale s about the centre, shift t)."""
    h, w = img.shape
    c = np.array([(h - 1) / 2.0, (w - 1) / 2.0])
    m = np.eye(3)
    m[0, 0] = m[1, 1] = s
    m[:2, 2] = c - s * c + np.asarray(t)
    mi = np.linalg.inv(m)
    return ndimage.affine_transform(img, mi[:2, :2], offset=mi[:2, 2], order=3, mode="nearest"), m


def test_phase_correlation_sign_and_subpixel(grey_photo):
    moved = ndimage.shift(grey_photo, (4.3, -6.6), order=3, mode="nearest")  # content moves by +d
    d, peak = phase_correlation(grey_photo, moved)
    np.testing.assert_allclose(d, (4.3, -6.6), atol=0.15)
    assert peak > 0.5
    _, p_unrelated = phase_correlation(grey_photo, np.random.default_rng(0).random(grey_photo.shape))
    assert p_unrelated < 0.1


def test_translation_chain_recovers_known_shifts(grey_photo):
    shifts = [(0, 0), (2.0, -1.5), (3.5, -4.0), (6.0, -3.0)]
    stack = [ndimage.shift(grey_photo, s, order=3, mode="nearest") for s in shifts]
    al = estimate_alignment(stack, mode="translation", reference=0)
    np.testing.assert_allclose(al.shifts, shifts, atol=0.25)
    np.testing.assert_allclose(al.scales, 1.0)
    aligned = apply_alignment(stack, al)
    inner = (slice(12, -12), slice(12, -12))
    for a in aligned[1:]:
        assert np.abs(a[inner] - grey_photo[inner]).mean() < 0.02
    assert stack[1] is not aligned[1]  # new arrays; inputs untouched
    np.testing.assert_array_equal(stack[0], aligned[0])


def test_similarity_chain_recovers_known_scales(grey_photo):
    from skimage import data
    from skimage.transform import resize

    # magnification grows 1.5 % per slice, with a drift, as in a macro focus stack; slices are
    # cut from a larger view so that no slice has padded borders
    big = resize(data.camera(), (256, 256), anti_aliasing=True).astype(np.float32)
    truth = [(1.0, (0, 0)), (1.015, (1.0, -0.5)), (1.03, (2.0, -1.0))]
    stack = [_similar(big, s, t)[0][64:192, 64:192] for s, t in truth]
    grey_photo = big[64:192, 64:192]
    al = estimate_alignment(stack, mode="similarity", reference=0, max_size=128)
    np.testing.assert_allclose(al.scales, [s for s, _ in truth], atol=0.003)
    np.testing.assert_allclose(al.shifts, [t for _, t in truth], atol=0.4)
    r0, r1, c0, c1 = al.valid_box()
    assert r1 - r0 < 128 and c1 - c0 < 128
    # translation-only alignment cannot undo the scale: similarity fits better
    at, _ = align_stack(stack, mode="translation", reference=0)
    asim, _ = align_stack(stack, mode="similarity", reference=0, max_size=128)
    inner = (slice(16, -16), slice(16, -16))
    err_t = np.abs(at[2][inner] - grey_photo[inner]).mean()
    err_s = np.abs(asim[2][inner] - grey_photo[inner]).mean()
    assert err_s < 0.5 * err_t


def test_alignment_keeps_dtype_and_record(grey_photo):
    u16 = (grey_photo * 60000).astype(np.uint16)
    stack = [u16, ndimage.shift(u16, (1.0, 2.0), order=1, mode="nearest")]
    out, al = align_stack(stack, mode="translation", crop=True)
    assert out[0].dtype == np.uint16 and out[0].shape == out[1].shape
    rec = al.as_dict()
    assert rec["mode"] == "translation" and len(rec["matrices"]) == 2 and len(rec["pair_scores"]) == 1
    ident = Alignment.identity(3, (8, 8))
    assert ident.valid_box() == (0, 8, 0, 8)


def test_alignment_input_errors(grey_photo):
    with pytest.raises(FusionInputError, match="mode"):
        estimate_alignment([grey_photo, grey_photo], mode="affine")
    with pytest.raises(FusionInputError, match="reference"):
        estimate_alignment([grey_photo, grey_photo], reference=5)
    with pytest.raises(FusionInputError, match="at least two"):
        estimate_alignment([grey_photo])


def test_alignment_is_never_forced(rgb_stack):
    from napari_fusion import fuse

    r = fuse_focal_stack(rgb_stack.slices, height=False)
    assert r.alignment is None
    np.testing.assert_array_equal(r.fused, fuse(rgb_stack.slices).fused)


def _pcb_scores(fused, ref):
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    al = estimate_alignment([ref, fused], mode="similarity", reference=0)
    reg = apply_alignment([ref, fused], al)[1]
    r0, r1, c0, c1 = al.valid_box()
    g = lambda a: a.astype(np.float64) @ np.array([0.299, 0.587, 0.114])  # noqa: E731
    a, b = g(ref)[r0 + 4 : r1 - 4, c0 + 4 : c1 - 4], g(reg)[r0 + 4 : r1 - 4, c0 + 4 : c1 - 4]
    return peak_signal_noise_ratio(a, b, data_range=255), structural_similarity(a, b, data_range=255)


def test_pcb_similarity_alignment_beats_unaligned(dataset):
    from skimage.transform import downscale_local_mean

    from napari_fusion.io import read_image, read_stack

    folder = dataset("focalstack/pcb/pcb")
    f = 8
    down = lambda a: downscale_local_mean(a.astype(np.float32), (f, f, 1)).round().astype(np.uint8)  # noqa: E731
    stack = [down(a) for a in read_stack(folder)]
    ref = down(read_image(folder / "reference" / "focus-stack.jpg"))
    plain = fuse_focal_stack(stack, height=False)
    aligned = fuse_focal_stack(stack, align="similarity", height=False)
    al = aligned.alignment
    # magnification changes monotonically with focus, by a few percent over the stack
    assert np.all(np.diff(al.scales) < 0)
    assert 0.02 < al.scales[0] - al.scales[-1] < 0.10
    p0, s0 = _pcb_scores(plain.fused, ref)
    p1, s1 = _pcb_scores(aligned.fused, ref)
    assert p1 > p0 + 1.0
    assert s1 > s0 + 0.05


# --------------------------------------------------------------------------- alignment that does no harm


@pytest.fixture(scope="module")
def registered_stack():
    """A registered 192x192 RGB synthetic stack of 6 slices."""
    from skimage import data
    from skimage.transform import resize

    from napari_fusion.synthetic import render_focal_stack

    photo = (resize(data.astronaut(), (192, 192), anti_aliasing=True) * 255).astype(np.uint8)
    return render_focal_stack(photo, n_slices=6, seed=2)


def _psnr(a, b):
    from skimage.metrics import peak_signal_noise_ratio

    return peak_signal_noise_ratio(a, b, data_range=255)


@pytest.mark.parametrize("mode", ["translation", "similarity"])
def test_registered_stack_is_left_unchanged(registered_stack, mode):
    st = registered_stack
    plain = fuse_focal_stack(st.slices, height=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing worth a warning on a clean stack
        aligned = fuse_focal_stack(st.slices, align=mode, height=False)
    al = aligned.alignment
    np.testing.assert_array_equal(al.matrices, np.tile(np.eye(3), (al.n, 1, 1)))
    assert al.fallback == [(k, k + 1) for k in range(al.n - 1)]
    assert all(c.model == "identity" and c.reason for c in al.checks)
    assert abs(_psnr(st.ground_truth, aligned.fused) - _psnr(st.ground_truth, plain.fused)) < 0.1


def test_known_shift_of_a_synthetic_stack_is_recovered(registered_stack):
    truth = np.array([(0, 0), (0, 0), (1.6, -2.3), (1.6, -2.3), (-0.8, 3.4), (-0.8, 3.4)])
    stack = [
        np.stack([ndimage.shift(s[..., c].astype(np.float32), t, order=3, mode="nearest") for c in range(3)], -1)
        for s, t in zip(registered_stack.slices, truth)
    ]
    al = estimate_alignment(stack, mode="translation", reference=0)
    np.testing.assert_allclose(al.shifts, truth, atol=0.5)
    assert [c.model for c in al.checks] == ["identity", "translation", "identity", "translation", "identity"]
    assert all(c.gain > 0.1 for c in al.checks if c.model == "translation")
    assert al.confidence[0] == 1.0 and al.confidence[2] > 0.1


def test_noise_slice_falls_back_to_identity_with_a_warning(grey_photo):
    rng = np.random.default_rng(3)
    stack = [ndimage.shift(grey_photo, (k * 1.5, -k), order=3, mode="nearest") for k in range(4)]
    stack[2] = rng.random(grey_photo.shape).astype(np.float32)
    with pytest.warns(UserWarning, match=r"neighbour slices 1-2, 2-3"):
        al = estimate_alignment(stack, mode="translation", reference=0)
    assert al.fallback == [(1, 2), (2, 3)]
    np.testing.assert_allclose(al.shifts[:2], [(0, 0), (1.5, -1)], atol=0.25)
    np.testing.assert_array_equal(al.matrices[2], al.matrices[1])  # the noise slice is not moved
    rec = al.as_dict()
    assert rec["fallback_pairs"] == [[1, 2], [2, 3]]
    assert rec["pairs"][1]["model"] == "identity" and rec["pairs"][1]["reason"]


def test_shift_beyond_the_bound_falls_back(grey_photo):
    stack = [grey_photo, ndimage.shift(grey_photo, (6.0, 0.0), order=3, mode="nearest")]
    assert abs(estimate_alignment(stack, reference=0).shifts[1, 0] - 6.0) < 0.25
    with pytest.warns(UserWarning, match="beyond 3% of the size"):
        al = estimate_alignment(stack, reference=0, max_shift=0.03)
    np.testing.assert_array_equal(al.matrices[1], np.eye(3))
    with pytest.raises(FusionInputError, match="scale_bounds"):
        estimate_alignment(stack, scale_bounds=(1.01, 1.1))


@pytest.mark.parametrize("mode", ["translation", "similarity"])
def test_registered_real_widefield_stack_stays_put(dataset, mode):
    from napari_fusion.io import read_stack

    stack = read_stack(dataset("focalstack/dapi_widefield/dapi"))
    if mode == "similarity":
        stack = stack[12:28]  # the in-focus part; keeps the test short
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the blurred end planes give unreliable estimates
        al = estimate_alignment(stack, mode=mode)
    assert np.abs(al.shifts).max() <= 2.0
    np.testing.assert_allclose(al.scales, 1.0, atol=0.01)


@pytest.mark.parametrize("shape, dtype", [((37, 53), np.float32), ((40, 31, 3), np.float32), ((29, 33), np.float64)])
def test_warp_bilinear_matches_ndimage(shape, dtype):
    """The torch warp equals scipy's order-1 affine_transform with edge extension (within rounding)."""
    from scipy import ndimage

    from napari_fusion.focalstack.align import warp_bilinear

    rng = np.random.default_rng(1)
    img = (rng.random(shape) * 255).astype(dtype)
    m = np.array([[1.03, 0.02, -2.4], [-0.015, 0.97, 4.1], [0.0, 0.0, 1.0]])  # reaches past the border
    planes = [img] if img.ndim == 2 else [img[..., i] for i in range(img.shape[-1])]
    ref = [ndimage.affine_transform(p, m[:2, :2], offset=m[:2, 2], order=1, mode="nearest") for p in planes]
    ref = ref[0] if img.ndim == 2 else np.stack(ref, -1)
    got = warp_bilinear(img, m)
    assert got.shape == img.shape and got.dtype == img.dtype
    np.testing.assert_allclose(got, ref, atol=1e-2 if dtype == np.float32 else 1e-9)


def test_progress_through_alignment_fusion_and_slabs(small_focal_stack):
    """One progress bar over the stages: it only moves forward and ends at 1; alignment reports
    per slice pair and per warped slice."""
    from napari_fusion.focalstack import fuse_focal_stack

    slices = small_focal_stack.slices
    for kw in ({"align": "translation"}, {"slab": 2}, {}):
        seen = []
        fuse_focal_stack(slices, progress=lambda d, t, m: seen.append((d / t, m)), **kw)
        fractions = [f for f, _ in seen]
        assert fractions[-1] == pytest.approx(1.0)
        assert all(b >= a - 1e-9 for a, b in zip(fractions, fractions[1:])), kw
        if "align" in kw:
            messages = [m for _, m in seen]
            assert sum(m.startswith("alignment, slices") for m in messages) == len(slices) - 1
            assert any(m.startswith("warping slice") for m in messages)


@pytest.mark.parametrize("iterations", [1, 2, 3])
@pytest.mark.parametrize("shape", [(1, 1), (2, 7), (5, 5), (37, 29)])
def test_erode_cross_equals_scipy(shape, iterations):
    import torch

    from napari_fusion.focalstack.align import erode_cross

    rng = np.random.default_rng(sum(shape) + iterations)
    for fill in (0.5, 0.9, 1.0):
        mask = rng.random(shape) < fill
        got = erode_cross(torch.from_numpy(mask), iterations=iterations)
        assert got.dtype == torch.bool
        np.testing.assert_array_equal(got.numpy(), ndimage.binary_erosion(mask, iterations=iterations))
