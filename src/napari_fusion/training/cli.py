"""``napari-fusion train <model> ...``: train the learned methods' networks.

Each trainable model module provides ``add_arguments(parser)`` and
``main_from_args(args)``; add it to ``_MODELS`` to expose it here.
"""

from __future__ import annotations

import importlib

_MODELS = {
    "liu2017": ("napari_fusion.training.liu2017", "focus CNN of Liu et al. 2017 (method liu2017_cnn)"),
    "csc_mmfn": ("napari_fusion.training.csc_mmfn", "CSC-MMFN guided upsampling (CAVE or pansharpening, Wald protocol)"),
    "csc_mefn": ("napari_fusion.training.csc_mefn", "CSC-MEFN multi-exposure weight network (method csc_mefn)"),
    "two_stream": ("napari_fusion.training.two_stream", "two-stream conv-fusion-deconv network, KSII TIIS 2018 (method tiis2018_fcn)"),
    "cdl": ("napari_fusion.training.cdl", "coupled dictionaries of Veshki et al. (method veshki_cdl)"),
    "csc_ivfn": ("napari_fusion.training.csc_ivfn", "CSC-IVFN sparse-coding autoencoder of Zhao et al. 2023 (method csc_ivfn)"),
}


def add_subparser(sub) -> None:
    p = sub.add_parser("train", help="train a learned method's network on synthetic data")
    models = p.add_subparsers(dest="model", metavar="MODEL")
    models.required = True
    for name, (module, helptext) in _MODELS.items():
        mp = models.add_parser(name, help=helptext)
        mod = importlib.import_module(module)
        mod.add_arguments(mp)
        mp.set_defaults(func=mod.main_from_args)
