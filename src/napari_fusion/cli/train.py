"""``napari-fusion train MODEL ...``: train a learned method's network.

A thin wrapper: the models and their options are defined by
:mod:`napari_fusion.training.cli` (its ``_MODELS`` table), whose parser
imports the training modules and torch. :func:`napari_fusion.cli.build_parser`
therefore calls :func:`add_subparser` only when ``train`` is the command being
run; for ``napari-fusion --help`` it registers ``train`` with :data:`HELP`
alone, and imports nothing from :mod:`napari_fusion.training`.
"""

from __future__ import annotations

NAME = "train"
HELP = "train a learned method's network on synthetic data"


def add_subparser(sub) -> None:
    from ..training.cli import add_subparser as add_training_subparser

    add_training_subparser(sub)
