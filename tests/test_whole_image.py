"""Whole-image steps of tiled runs (napari_fusion.whole_image): collect passes, then tiles."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

import napari_fusion as nf
from napari_fusion.errors import FusionCancelled
from napari_fusion.registry import MethodOutput, temporary_method
from napari_fusion.whole_image import Collected, KnownMap


def _mean_stat(v: torch.Tensor) -> torch.Tensor:
    return torch.stack([v.to(torch.float64).sum(), torch.tensor(float(v.numel()), dtype=torch.float64)])


def _flip(full: torch.Tensor) -> torch.Tensor:
    """A truly global step: every pixel takes the value of its mirror image across the width."""
    return torch.flip(full, dims=(-1,))


def _nway(stack, *, ctx):
    grey = stack.mean(1)  # (N, H, W)
    mean = ctx.whole_image_stat("mean", grey, _mean_stat, lambda t: float(t[0] / t[1]))
    keep = ctx.whole_image_map("mask", lambda: grey[0] > mean, _flip)
    fused = torch.where(keep, stack[0], stack[1])
    return MethodOutput(fused=fused, labels=(~keep).long())


def _pairwise(pair, *, ctx):
    keep = ctx.whole_image_map("mask", lambda: pair[0].mean(0) >= pair[1].mean(0), _flip)
    return MethodOutput(fused=torch.where(keep, pair[0], pair[1]), labels=(~keep).long())


REGISTRATION = dict(title="test", tasks=("multi-focus",), outputs=("fused", "labels"), halo=0, collect_halo=0)


def _images(n=3, h=37, w=53, seed=0):
    return np.random.default_rng(seed).random((n, h, w), dtype=np.float32)


def _passes(seen: list[str]) -> set[str]:
    return {m.split(":")[0] for m in seen if m.startswith("whole-image pass")}


@pytest.mark.parametrize("chunks", [8, (16, 24), 30])
def test_global_steps_in_tiles_equal_untiled(chunks):
    images = _images()
    with temporary_method(_nway, name="_whole_nway", mode="nway", **REGISTRATION):
        ref = nf.fuse(images, "_whole_nway", device="cpu")
        seen: list[str] = []
        lazy = nf.fuse(images, "_whole_nway", device="cpu", chunks=chunks, progress=lambda d, t, m: seen.append(m))
        got = lazy.compute()
    assert lazy.grid.n_tiles > 2
    assert _passes(seen) == {"whole-image pass 1", "whole-image pass 2"}  # the statistic, then the map
    np.testing.assert_array_equal(got.fused, ref.fused)
    np.testing.assert_array_equal(got.labels, ref.labels)


def _nway_computed_stat(stack, *, ctx):
    """A statistic of values computed only when it is asked for: each slice's 3x3 mean (a map
    that needs a halo), reduced over the core one slice at a time."""
    computed = []

    def smoothed(k):
        computed.append(k)
        return torch.nn.functional.avg_pool2d(stack[k].mean(0)[None], 3, 1, 1, count_include_pad=False)[0]

    def reduce_core(core):
        return torch.stack([_mean_stat(core(smoothed(k))) for k in range(len(stack))]).sum(0)

    mean = ctx.whole_image_stat_of("mean", reduce_core, lambda t: float(t[0] / t[1]))
    keep = smoothed(0) > mean
    assert not ctx.tiled or len(computed) == 1  # in the final tiles the statistic is known: not computed
    return MethodOutput(fused=torch.where(keep, stack[0], stack[1]), labels=(~keep).long())


def test_a_statistic_computed_when_needed_in_tiles_equals_untiled():
    images = _images()
    with temporary_method(_nway_computed_stat, name="_whole_of", mode="nway", **{**REGISTRATION, "halo": 1,
                                                                                "collect_halo": 1}):  # fmt: skip
        ref = nf.fuse(images, "_whole_of", device="cpu")
        got = nf.fuse(images, "_whole_of", device="cpu", chunks=16).compute()
    np.testing.assert_array_equal(got.fused, ref.fused)
    np.testing.assert_array_equal(got.labels, ref.labels)


@pytest.mark.parametrize(
    "fold, named",
    [
        # a sequential fold: one pass per fold step, each reading the one before
        ("sequential", {f"whole-image pass {k} (fold step {k} of 3)" for k in (1, 2, 3)}),
        # a tree: one pass per level, (I0 + I1) and (I2 + I3) collected together
        ("tree", {"whole-image pass 1 (fold steps 1, 2 of 3)", "whole-image pass 2 (fold step 3 of 3)"}),
    ],
)
def test_a_folded_method_has_one_pass_per_fold_level(fold, named):
    images = _images(n=4)
    with temporary_method(_pairwise, name="_whole_pair", mode="pairwise", **REGISTRATION):
        ref = nf.fuse(images, "_whole_pair", device="cpu", fold=fold)
        seen: list[str] = []
        lazy = nf.fuse(
            images, "_whole_pair", device="cpu", chunks=16, fold=fold, progress=lambda d, t, m: seen.append(m)
        )
        got = lazy.compute()
    # each pass's first tile finds which fold steps it collects for; the others say so
    passes = {f"whole-image pass {k}" for k in range(1, len(named) + 1)}
    assert named <= _passes(seen) <= named | passes
    np.testing.assert_array_equal(got.fused, ref.fused)
    np.testing.assert_array_equal(got.labels, ref.labels)


def test_control_steps_computed_on_each_tile_alone_differ():
    """Control: the same method with its steps computed on each tile alone (as if they were
    local) gives another result, so the equality above can fail."""

    def tile_alone(stack, *, ctx):
        ctx._steps = None  # the context of an untiled run: finish(local()) on the block
        return _nway(stack, ctx=ctx)

    images = _images()
    with temporary_method(tile_alone, name="_tile_alone", mode="nway", **{**REGISTRATION, "collect_halo": None}):
        ref = nf.fuse(images, "_tile_alone", device="cpu")
        got = nf.fuse(images, "_tile_alone", device="cpu", chunks=16).compute()
    assert (got.labels != ref.labels).mean() > 0.05


def test_data_without_a_step_run_no_pass():
    """The step is asked for only on colour data: a grey stack runs no pass (one probe tile)."""
    calls = []

    def run(stack, *, ctx):
        calls.append(tuple(stack.shape))
        if stack.shape[1] == 3:
            ctx.whole_image_stat("chroma", stack, lambda v: v.sum(), float)
        return MethodOutput(fused=stack.mean(0), labels=torch.zeros(stack.shape[-2:], dtype=torch.long))

    with temporary_method(run, name="_whole_probe", mode="nway", **REGISTRATION):
        lazy = nf.fuse(_images(), "_whole_probe", device="cpu", chunks=16)
        assert len(calls) == 1  # the probe
        lazy.compute()
        assert len(calls) == 1 + lazy.grid.n_tiles
        calls.clear()
        colour = np.repeat(_images()[..., None], 3, -1)
        lazy = nf.fuse(colour, "_whole_probe", device="cpu", chunks=16)
        assert len(calls) == lazy.grid.n_tiles + 1  # pass 1 (the probe is its first tile), then a probe


def test_cancel_stops_the_passes():
    def cancel(done, total, message):
        raise FusionCancelled("stop")

    with temporary_method(_nway, name="_whole_nway", mode="nway", **REGISTRATION), pytest.raises(FusionCancelled):
        nf.fuse(_images(), "_whole_nway", device="cpu", chunks=8, progress=cancel)


@pytest.mark.parametrize("box", [(0, 5, 0, 8), (3, 9, 5, 30), (0, 13, 17, 33), (12, 13, 32, 33)])
def test_known_maps_pack_booleans_and_cut_any_window(box):
    full = np.random.default_rng(1).random((13, 33)) > 0.5
    known = KnownMap.of(full)
    assert known.packed and known.nbytes < full.nbytes / 4
    y0, y1, x0, x1 = box
    np.testing.assert_array_equal(known.window(box), full[y0:y1, x0:x1])
    labels = np.arange(13 * 33, dtype=np.uint16).reshape(13, 33)
    np.testing.assert_array_equal(KnownMap.of(labels).window(box), labels[y0:y1, x0:x1])


def test_collected_parts_survive_pickling():
    """dask workers in other processes send a tile's part back as this exception."""
    part = Collected(("mask",), "map", np.ones((2, 3), bool), _flip, None)
    back = pickle.loads(pickle.dumps(part))
    assert back.key == ("mask",) and back.kind == "map" and back.finish is _flip
    np.testing.assert_array_equal(back.part, part.part)
    assert back.combine(2, 3) == 5


def test_an_undeclared_step_is_an_error_in_tiles_not_a_silent_tile_local_result():
    registration = {**REGISTRATION, "collect_halo": None}
    with temporary_method(_nway, name="_undeclared", mode="nway", **registration):
        nf.fuse(_images(), "_undeclared", device="cpu")  # untiled: fine
        with pytest.raises(nf.FusionError, match="collect_halo"):
            nf.fuse(_images(), "_undeclared", device="cpu", chunks=16).compute()


def test_passes_count_their_tiles_and_never_move_back():
    """Each whole-image pass reports every tile as it finishes ("tile 4/4"), and the progress of a
    phase never goes back while tiles computed at the same time report from inside. (The passes'
    dask callbacks were handed to dask as objects, refused, and the pass then ran without them:
    its bar stayed at "tile 2/N" for the whole pass.)"""
    images = _images(h=64, w=64)
    calls: list[tuple[float, str]] = []

    def method(stack, *, ctx):
        for k in range(4):
            ctx.report(k, 4, f"part {k}")
        return _nway(stack, ctx=ctx)

    with temporary_method(method, name="_whole_report", mode="nway", **REGISTRATION):
        lazy = nf.fuse(images, "_whole_report", device="cpu", chunks=32, progress=lambda d, t, m: calls.append((d, m)))
        lazy.compute()
    n = lazy.grid.n_tiles
    assert n == 4
    for p in (1, 2):
        done = [m for _, m in calls if m == f"whole-image pass {p}: tile {n}/{n}"]
        assert done, f"pass {p} never reported its last tile"
    phases = [m.split(": tile")[0] if m.startswith("whole-image") else "tiles" for _, m in calls]
    for phase in dict.fromkeys(phases):
        values = [d for (d, _), ph in zip(calls, phases) if ph == phase]
        assert values == sorted(values), f"{phase} went back: {values}"


def _pairwise_smoothed(pair, *, ctx):
    """A pair step that reads one pixel of context around each pixel (3x3 means) before its
    whole-image step and one after it, so a tile's context must grow with the fold steps
    chained beneath it, in the collect passes too."""

    def mean3(x):
        return torch.nn.functional.avg_pool2d(x[:, None], 3, 1, 1, count_include_pad=False)[:, 0]

    grey = mean3(pair.mean(1))
    mask = ctx.whole_image_map("mask", lambda: grey[0] >= grey[1], _flip)
    keep = mean3(mask[None].float())[0] >= 0.5
    return MethodOutput(fused=torch.where(keep, pair[0], pair[1]), labels=(~keep).long())


@pytest.mark.parametrize("fold", ["sequential", "tree"])
def test_a_folded_method_with_context_in_tiles_equals_untiled(fold):
    images = _images(n=5)
    registration = {**REGISTRATION, "halo": 2, "collect_halo": 1}
    with temporary_method(_pairwise_smoothed, name="_whole_pair_ctx", mode="pairwise", **registration):
        ref = nf.fuse(images, "_whole_pair_ctx", device="cpu", fold=fold)
        lazy = nf.fuse(images, "_whole_pair_ctx", device="cpu", chunks=8, fold=fold)
        got = lazy.compute()
    assert lazy.grid.halo == {"sequential": 8, "tree": 6}[fold]  # 2 x the chained steps: n - 1, ceil(log2 n)
    np.testing.assert_array_equal(got.fused, ref.fused)
    np.testing.assert_array_equal(got.labels, ref.labels)


@pytest.mark.parametrize("fold", ["sequential", "tree"])
def test_collect_passes_survive_tiles_split_for_memory(fold):
    """A collect-pass tile that runs out of memory is split; its sub-tiles' parts (packed boolean
    maps, several fold steps at once for a tree; statistics) are joined as the tile's."""
    calls: list[tuple[int, int]] = []

    def fragile(run):
        def wrapped(stack, *, ctx):
            calls.append(tuple(stack.shape[-2:]))
            if stack.shape[-2] * stack.shape[-1] > 50 * 50:
                raise torch.OutOfMemoryError("out of memory (fake)")
            return run(stack, ctx=ctx)

        return wrapped

    images = _images(n=5, h=130, w=150)
    with temporary_method(_pairwise, name="_whole_pair", mode="pairwise", **REGISTRATION):
        ref = nf.fuse(images, "_whole_pair", device="cpu", fold=fold)
    with temporary_method(fragile(_pairwise), name="_fragile_pair", mode="pairwise", **REGISTRATION):
        got = nf.fuse(images, "_fragile_pair", device="cpu", fold=fold, chunks=(130, 75)).compute()
    np.testing.assert_array_equal(got.fused, ref.fused)
    np.testing.assert_array_equal(got.labels, ref.labels)
    assert max(h * w for h, w in calls) > 50 * 50 and sum(h * w <= 50 * 50 for h, w in calls) > 8
    with temporary_method(_nway, name="_whole_nway", mode="nway", **REGISTRATION):
        ref = nf.fuse(images[:3], "_whole_nway", device="cpu")
    with temporary_method(fragile(_nway), name="_fragile_nway", mode="nway", **REGISTRATION):
        got = nf.fuse(images[:3], "_fragile_nway", device="cpu", chunks=(130, 75)).compute()
    np.testing.assert_array_equal(got.fused, ref.fused)
    np.testing.assert_array_equal(got.labels, ref.labels)


def test_one_tile_split_for_memory_says_to_give_smaller_chunks():
    """One tile for the whole image runs as untiled (no passes); split for memory, its parts
    cannot compute a whole-image step: a clear error that says what to do, not a wrong result."""

    def fragile(stack, *, ctx):
        if stack.shape[-2] * stack.shape[-1] > 50 * 50:
            raise torch.OutOfMemoryError("out of memory (fake)")
        return _nway(stack, ctx=ctx)

    images = _images(n=3, h=130, w=150)
    with temporary_method(fragile, name="_fragile_whole", mode="nway", **REGISTRATION):
        with pytest.raises(nf.FusionError, match="whole image as one tile.*smaller chunks"):
            nf.fuse(images, "_fragile_whole", device="cpu", chunks=(130, 150)).compute()
        got = nf.fuse(images, "_fragile_whole", device="cpu", chunks=(65, 75)).compute()  # passes, then tiles
    with temporary_method(_nway, name="_whole_nway", mode="nway", **REGISTRATION):
        np.testing.assert_array_equal(got.fused, nf.fuse(images, "_whole_nway", device="cpu").fused)


def test_pass_names_say_which_fold_steps_they_collect():
    from napari_fusion.tiling import _pass_name

    assert _pass_name(3, [(4, "decision")], "pairwise", 10) == "whole-image pass 4 (fold step 5 of 9): tile"
    assert _pass_name(1, [(1, "d"), (5, "d")], "pairwise", 10) == "whole-image pass 2 (fold steps 2, 6 of 9): tile"
    many = [(i, "d") for i in range(0, 40, 2)]  # the first level of a 40-slice tree
    assert _pass_name(0, many, "pairwise", 40) == "whole-image pass 1 (20 fold steps of 39): tile"
    assert _pass_name(0, [("chroma",)], "nway", 3) == "whole-image pass 1: tile"


# --------------------------------------------------------------------------- kept on disk


def test_steps_kept_on_disk_read_back_equal_and_only_for_their_run(tmp_path):
    from napari_fusion.whole_image import StepResults, load_steps, save_steps

    with temporary_method(_nway, name="_whole_nway", mode="nway", **REGISTRATION):
        steps = nf.fuse(_images(), "_whole_nway", device="cpu", chunks=16).whole_image_steps
    assert steps.maps and steps.stats  # a packed boolean map and a float statistic
    steps.stats[("odd", 3)] = (np.float32(1.5), np.arange(4, dtype=np.uint16), {"k": [1, None, "s"]}, torch.ones(2))
    steps.maps[("scaled",)] = KnownMap.of(np.linspace(0, 1, 12, dtype=np.float32).reshape(3, 4), scale=4)
    path = tmp_path / "steps.pt"
    assert save_steps(steps, path, fingerprint="run-a")
    back = load_steps(path, fingerprint="run-a")
    assert set(back.maps) == set(steps.maps) and set(back.stats) == set(steps.stats)
    for key, known in steps.maps.items():
        got = back.maps[key]
        assert (got.shape, got.packed, got.scale) == (known.shape, known.packed, known.scale)
        np.testing.assert_array_equal(got.window((0, 37, 0, 53)), known.window((0, 37, 0, 53)))
    f32, ints, plain, tensor = back.stats[("odd", 3)]
    assert type(f32) is np.float32 and f32 == 1.5 and ints.dtype == np.uint16 and ints.tolist() == [0, 1, 2, 3]
    assert plain == {"k": [1, None, "s"]} and torch.equal(tensor, torch.ones(2))
    assert back.stats[("mean",)] == steps.stats[("mean",)]
    assert load_steps(path, fingerprint="run-b") is None  # another run's steps are never used
    assert load_steps(tmp_path / "absent.pt", fingerprint="run-a") is None
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    assert load_steps(tmp_path / "junk.pt", fingerprint="run-a") is None
    odd = StepResults(stats={("f",): object()})
    assert not save_steps(odd, tmp_path / "odd.pt", fingerprint="run-a") and not (tmp_path / "odd.pt").exists()


def test_known_steps_are_not_computed_again_and_give_the_same_result():
    """All of an earlier run's steps (``complete``): no pass and no probe tile; some of them: the
    passes compute only the others."""
    from napari_fusion.whole_image import StepResults

    images, calls = _images(), []

    def counted(stack, *, ctx):
        calls.append(1)
        return _nway(stack, ctx=ctx)

    with temporary_method(counted, name="_whole_nway", mode="nway", **REGISTRATION):
        ref = nf.fuse(images, "_whole_nway", device="cpu")
        first = nf.fuse(images, "_whole_nway", device="cpu", chunks=16)
        steps = first.whole_image_steps
        assert steps.complete and calls
        calls.clear()
        seen: list[str] = []
        again = nf.fuse(images, "_whole_nway", device="cpu", chunks=16, progress=lambda d, t, m: seen.append(m),
                        whole_image_steps=steps)  # fmt: skip
        assert calls == []  # the lazy result is made without running the method on any tile
        got = again.compute()
        part = StepResults(stats=dict(steps.stats))  # the statistic alone: the map's pass still runs
        seen.clear()
        nf.fuse(images, "_whole_nway", device="cpu", chunks=16, progress=lambda d, t, m: seen.append(m),
                whole_image_steps=part)  # fmt: skip
        assert _passes(seen) == {"whole-image pass 1"}
    np.testing.assert_array_equal(got.fused, ref.fused)
    np.testing.assert_array_equal(got.labels, ref.labels)
