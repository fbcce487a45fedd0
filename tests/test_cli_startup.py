"""The command line starts without torch: ``--help``, ``--version`` and argument errors are instant.

Each check runs in a fresh interpreter, because the test session itself has
imported torch long before.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

_PROBE = """
import json, sys
import napari_fusion.cli as c
try:
    code = c.main({argv!r})
except SystemExit as exc:
    code = exc.code
print(json.dumps({{"code": code, "torch": "torch" in sys.modules}}), file=sys.__stdout__)
"""


def _run(argv: list[str]) -> tuple[int, bool, str, str]:
    r = subprocess.run(
        [sys.executable, "-c", _PROBE.format(argv=argv)], capture_output=True, text=True, timeout=120, check=False
    )
    import json

    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout.strip().splitlines()[-1])
    return report["code"], report["torch"], r.stdout, r.stderr


@pytest.mark.parametrize(
    "argv, code, text",
    [
        (["--help"], 0, "COMMAND"),
        (["--version"], 0, "napari-fusion "),
        (["fuse", "--help"], 0, "--chunks"),
        (["batch", "--help"], 0, "--output-dir"),
        (["evaluate", "--help"], 0, "DATASET_DIR"),
        (["fuse", "a.tif"], 2, "the following arguments are required: -o/--output"),
        (["fuse", "a.tif", "b.tif", "-o", "f.tif", "-p", "nope"], 2, "must look like NAME=VALUE"),
        (["batch", "folder"], 2, "the following arguments are required: -o/--output-dir"),
        (["nonsense"], 2, "invalid choice: 'nonsense'"),
        ([], 2, "the following arguments are required: COMMAND"),
    ],
)
def test_help_and_argument_errors_do_not_import_torch(argv, code, text):
    got, torch_imported, out, err = _run(argv)
    assert got == code
    assert text in out + err
    assert not torch_imported, f"napari-fusion {' '.join(argv)} imported torch"


def test_help_lists_every_subcommand():
    _, _, out, _ = _run(["--help"])
    for name in ("fuse", "methods", "demo", "weights", "upsample", "batch", "evaluate", "train"):
        assert f"\n    {name} " in out


def test_importing_the_package_is_light_and_its_names_resolve():
    probe = (
        "import sys, napari_fusion as nf; assert 'torch' not in sys.modules; "
        "assert set(nf.__all__) <= set(dir(nf)); assert nf.DEFAULT_METHOD == 'focus_pyramid'; "
        "print('torch' in sys.modules)"
    )
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 0 and r.stdout.strip() == "False", r.stderr


def test_lazy_package_attributes_are_the_library_objects():
    import napari_fusion as nf
    from napari_fusion import api, registry, results, upsample

    assert nf.fuse is api.fuse and nf.list_methods is registry.list_methods and nf.Param is registry.Param
    assert nf.FusionResult is results.FusionResult and nf.guided_upsample is upsample.guided_upsample
    assert nf.DEFAULT_METHOD == api.DEFAULT_METHOD  # _defaults and api agree
    with pytest.raises(AttributeError):
        nf.no_such_name  # noqa: B018


def test_lazy_parser_lists_the_same_help_as_the_full_parser():
    """The NAME/HELP of each subcommand module match what its full parser registers
    (train's help lives in napari_fusion.training.cli)."""
    from napari_fusion.cli import build_parser

    assert build_parser(["--help"]).format_help() == build_parser().format_help()


def test_only_the_named_subcommand_gets_its_full_parser():
    from napari_fusion.cli import build_parser

    args = build_parser(["fuse", "a.tif", "-o", "f.tif"]).parse_args(["fuse", "a.tif", "-o", "f.tif"])
    assert args.command == "fuse" and args.method == "focus_pyramid" and callable(args.func)
    argv = ["train", "csc_mmfn", "--task", "cave", "--config", "smoke"]
    args = build_parser(argv).parse_args(argv)
    assert args.model == "csc_mmfn" and callable(args.func)


def test_methods_listing_is_torch_free_and_matches_the_registry():
    code = (
        "import sys, napari_fusion.cli as c; "
        "rc = c.main(['methods', '-v']); "
        "assert rc == 0; assert 'torch' not in sys.modules, 'methods imported torch'"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "focus_measure" in proc.stdout and "cite:" in proc.stdout
    from napari_fusion.cli.methods import live_catalogue, read_catalogue

    # the snapshot the listing reads must equal the live registry (regenerate with
    # `python -m napari_fusion.cli.methods` after changing a method's metadata)
    assert read_catalogue() == json.loads(json.dumps(live_catalogue()))


def test_a_classical_fusion_does_not_import_scipy_ndimage():
    """``scipy.ndimage`` takes ~0.5 s to import; only the steps that need it (region removal,
    alignment, simulation) import it, so a plain ``fuse`` run does not pay for it."""
    probe = (
        "import sys, numpy as np, napari_fusion as nf\n"
        "rng = np.random.default_rng(0)\n"
        "nf.fuse([rng.random((32, 32)).astype('float32') for _ in range(3)], method='focus_pyramid', device='cpu')\n"
        "before = 'scipy.ndimage' in sys.modules\n"
        "import torch\n"
        "from napari_fusion.ops.regions import remove_small_regions\n"
        "remove_small_regions(torch.zeros(8, 8, dtype=torch.long), 4)\n"
        "print(before, 'scipy.ndimage' in sys.modules)\n"
    )
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["False", "True"]  # the control: region removal does import it
