"""``python -m napari_fusion.cli ...``: the same as the ``napari-fusion`` command."""

import sys

from . import main

sys.exit(main())
