"""The batch command: several inputs, records beside outputs, failures reported at the end."""

from __future__ import annotations

import json

import numpy as np
import tifffile

from napari_fusion.cli import main
from napari_fusion.synthetic import render_focal_stack


def _stack(seed):
    from skimage import data
    from skimage.transform import resize

    photo = (resize(data.camera(), (64, 64), anti_aliasing=True) * 60000).astype(np.uint16)
    return render_focal_stack(photo, n_slices=4, max_sigma=3.0, seed=seed).slices


def test_batch_writes_outputs_and_records(tmp_path, capsys):
    folder = tmp_path / "in" / "stackA"
    folder.mkdir(parents=True)
    for i, s in enumerate(_stack(0)):
        tifffile.imwrite(folder / f"slice_{i}.tif", s)
    multipage = tmp_path / "in" / "stackB.tif"
    tifffile.imwrite(multipage, _stack(1), photometric="minisblack")
    positions = tmp_path / "in" / "plate.tif"
    tifffile.imwrite(positions, np.stack([_stack(2), _stack(3)]), photometric="minisblack")  # (P, Z, Y, X)
    broken = tmp_path / "in" / "broken.tif"
    broken.write_bytes(b"not a tiff")
    out = tmp_path / "out"
    rc = main(
        [
            "batch",
            str(folder),
            str(multipage),
            str(broken),
            str(positions),
            "-o",
            str(out),
            "-p",
            "smooth=3",
            "--align",
            "translation",
            "--z-step",
            "0.5",
            "-q",
        ]
    )
    captured = capsys.readouterr()
    assert rc == 1
    assert "broken" in captured.err and "4 of 5" in captured.err
    for name in ("stackA", "stackB", "plate_p000", "plate_p001"):
        fused = tifffile.imread(out / f"{name}_fused.tif")
        assert fused.dtype == np.uint16 and fused.shape == (64, 64)
        height = tifffile.imread(out / f"{name}_height.tif")
        assert height.dtype == np.float32 and height.max() <= 1.5 + 1e-6
        rec = json.loads((out / f"{name}_record.json").read_text())
        assert rec["method"] == "focus_pyramid"  # the default
        assert rec["params"] == {"smooth": 3.0, "softness": 2.0, "feather": 3.0, "levels": 4, "prefilter": 1.0}
        assert rec["options"]["align"] == "translation"
        assert len(rec["alignment"]["matrices"]) == 4
        assert rec["z_positions"] == [0.0, 0.5, 1.0, 1.5]
        assert rec["versions"]["napari_fusion"] and rec["inputs"]
    assert json.loads((out / "stackA_record.json").read_text())["inputs"][0].endswith("slice_0.tif")
    assert not (out / "broken_fused.tif").exists()


def test_batch_all_good_exits_zero(tmp_path):
    p = tmp_path / "s.tif"
    tifffile.imwrite(p, _stack(0), photometric="minisblack")
    assert main(["batch", str(p), "-o", str(tmp_path / "o"), "-q"]) == 0
    assert (tmp_path / "o" / "s_labels.tif").exists()
    assert main(["batch", str(p), "-o", str(tmp_path / "o"), "-m", "nope"]) == 2
