"""The napari plugin of napari-fusion: the only package that imports napari, Qt or magicgui.

Contributions (declared in the top-level ``napari.yaml``):

* :class:`~napari_fusion._napari._widget.FusionWidget` - the "Image fusion" dock widget;
* sample data rendered at run time (:mod:`._sample_data`);
* a TIFF writer that keeps the dtype and records fusion provenance (:mod:`._io`).

The widget is a thin shell over :func:`napari_fusion.fuse` and the method
registry: the parameter panel is generated from each method's
:class:`napari_fusion.Param` metadata, so new methods need no widget code.
"""
