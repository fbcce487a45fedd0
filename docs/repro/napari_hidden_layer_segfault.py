"""Minimal reproduction, without napari-fusion: napari segfaults in vispy's glDrawArrays.

Found while chasing the crash of issue "The napari side a lab lives in" (hide the input stack,
re-run the Image fusion widget with ``average``, draw). It needs no plugin code: a hidden 3-D
Image layer plus 2-D layers, then removing any 2-D layer, crashes the next draw every time
(napari 0.9.2, vispy 0.17.0, PyQt5, Mesa llvmpipe under Xvfb, 2026-11-30). With the 3-D layer
visible, removing one layer does not crash. Upstream reports of the same kind: napari/napari#6472
and #8471 (access violations in glDrawArrays after deleting or toggling layers).

    QT_QPA_PLATFORM=xcb xvfb-run -a -s "-screen 0 1600x1000x24" python docs/repro/napari_hidden_layer_segfault.py [full|nolabels|noimage]

Prints "no crash" when the bug is gone.
"""

import faulthandler
import sys

import numpy as np
from qtpy.QtWidgets import QApplication

import napari

faulthandler.enable()

v = napari.Viewer(show=True)
app = QApplication.instance()
rng = np.random.default_rng(0)
variant = sys.argv[1] if len(sys.argv) > 1 else "full"
stk = v.add_image((rng.random((4, 256, 256)) * 255).astype(np.uint8), name="stack")
if variant in ("full", "nolabels"):
    v.add_image(rng.random((256, 256)).astype(np.float32), name="a")
if variant in ("full", "noimage"):
    v.add_labels(rng.integers(0, 3, (256, 256)).astype(np.uint8), name="b")
v.add_image((rng.random((256, 256)) * 255).astype(np.uint8), name="fused")
for _ in range(10):
    app.processEvents()
stk.visible = False
for _ in range(5):
    app.processEvents()
for name in ("a", "b"):
    if name in v.layers:
        v.layers.remove(name)
for _ in range(20):
    app.processEvents()
print("no crash", v.screenshot(canvas_only=True).shape, flush=True)
v.close()
