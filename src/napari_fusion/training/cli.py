"""``napari-fusion train <model> ...``: train the learned methods' networks.

Each trainable model module provides ``add_arguments(parser)`` and
``main_from_args(args)``; add it to ``_MODELS`` to expose it here.
"""

from __future__ import annotations

import importlib

_MODELS = {
    "liu2017": ("napari_fusion.training.liu2017", "focus CNN of Liu et al. 2017 (method liu2017_cnn)"),
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
