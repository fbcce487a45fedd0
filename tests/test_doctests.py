"""The examples in the docstrings of the public entry points run and print what they show."""

from __future__ import annotations

import doctest

import pytest

import napari_fusion
from napari_fusion import api, upsample
from napari_fusion.focalstack import pipeline


@pytest.mark.parametrize(
    "func",
    [api.fuse, upsample.guided_upsample, pipeline.fuse_focal_stack],
    ids=["fuse", "guided_upsample", "fuse_focal_stack"],
)
def test_docstring_examples(func):
    assert ">>>" in func.__doc__
    finder = doctest.DocTestFinder(recurse=False)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for test in finder.find(func, func.__name__, globs={"napari_fusion": napari_fusion}):
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.attempted > 0 and result.failed == 0
