"""``napari-fusion train <model> ...``: train the learned methods' networks.

Models are named as the fusion methods they serve (``liu2017_cnn``,
``tiis2018_fcn``, ``veshki_cdl``, ``csc_mefn``, ``csc_ivfn``, ``csc_mmfn``).
The older names written in model cards and documentation (``liu2017``,
``two_stream``, ``cdl``) keep working as aliases that ``--help`` does not list.

Each trainable model module provides ``add_arguments(parser)`` and
``main_from_args(args)``; add it to ``_MODELS`` to expose it here.
"""

from __future__ import annotations

import importlib

_MODELS = {
    "liu2017_cnn": ("napari_fusion.training.liu2017_cnn", "focus CNN of Liu et al. 2017 (method liu2017_cnn)"),
    "csc_mmfn": (
        "napari_fusion.training.csc_mmfn",
        "CSC-MMFN guided upsampling (CAVE or pansharpening, Wald protocol)",
    ),
    "csc_mefn": ("napari_fusion.training.csc_mefn", "CSC-MEFN multi-exposure weight network (method csc_mefn)"),
    "tiis2018_fcn": (
        "napari_fusion.training.tiis2018_fcn",
        "two-stream conv-fusion-deconv network, KSII TIIS 2018 (method tiis2018_fcn)",
    ),
    "veshki_cdl": ("napari_fusion.training.veshki_cdl", "coupled dictionaries of Veshki et al. (method veshki_cdl)"),
    "csc_ivfn": (
        "napari_fusion.training.csc_ivfn",
        "CSC-IVFN sparse-coding autoencoder of Zhao et al. 2023 (method csc_ivfn)",
    ),
}

#: older ``napari-fusion train`` names (used in model cards) -> the names above
_ALIASES = {"liu2017": "liu2017_cnn", "two_stream": "tiis2018_fcn", "cdl": "veshki_cdl"}


def add_subparser(sub) -> None:
    p = sub.add_parser("train", help="train a learned method's network on synthetic data")
    models = p.add_subparsers(dest="model", metavar="MODEL")
    models.required = True
    for name, (module, helptext) in _MODELS.items():
        mod = importlib.import_module(module)
        mp = models.add_parser(name, help=helptext, description=helptext)
        mod.add_arguments(mp)
        mp.set_defaults(func=mod.main_from_args)
    for alias, name in _ALIASES.items():
        # no help=: argparse leaves the alias out of the list of models
        mod = importlib.import_module(_MODELS[name][0])
        mp = models.add_parser(alias, description=f"{_MODELS[name][1]}; the older name of `train {name}`")
        mod.add_arguments(mp)
        mp.set_defaults(func=mod.main_from_args)
