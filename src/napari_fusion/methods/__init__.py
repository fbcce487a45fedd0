"""Built-in fusion methods. Importing this package registers them all.

One module per method; each registers itself with
:func:`napari_fusion.registry.register_method`.
"""

from . import (  # noqa: F401
    average,
    csc_ivfn,  # noqa: F401
    csc_mefn,  # noqa: F401
    focus_measure,
    focus_pyramid,
    gff,
    laplacian_pyramid,
    li2018_vgg19,  # noqa: F401
    liu2017_cnn,
    mertens,
    tiis2018_fcn,  # noqa: F401
    veshki_cdl,  # noqa: F401
)
