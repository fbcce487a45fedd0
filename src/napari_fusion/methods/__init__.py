"""Built-in fusion methods. Importing this package registers them all.

One module per method; each registers itself with
:func:`napari_fusion.registry.register_method`.
"""

from . import average, liu2017_cnn, focus_measure, gff, laplacian_pyramid, mertens  # noqa: F401
from . import li2018_vgg19  # noqa: F401
from . import csc_mefn  # noqa: F401
from . import tiis2018_fcn  # noqa: F401
from . import veshki_cdl  # noqa: F401
from . import csc_ivfn  # noqa: F401
