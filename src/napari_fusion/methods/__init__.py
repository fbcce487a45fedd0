"""Built-in fusion methods. Importing this package registers them all.

One module per method; each registers itself with
:func:`napari_fusion.registry.register_method`.
"""

from . import average, cnn_focus, focus_measure, gff, laplacian_pyramid, mertens  # noqa: F401
from . import vgg19_li2018  # noqa: F401
from . import csc_mefn  # noqa: F401
from . import two_stream  # noqa: F401
from . import cdl_jsr  # noqa: F401
from . import csc_ivfn  # noqa: F401
