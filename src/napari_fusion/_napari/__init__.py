"""The napari plugin of napari-fusion: the only package that imports napari or Qt.

Contributions (declared in the top-level ``napari.yaml``):

* :class:`~napari_fusion._napari._widget.FusionWidget` - "Image fusion": fuse checked
  2-D layers or one stack layer with any registered method (tiled or lazy if asked);
* :class:`~napari_fusion._napari._focal.FocalStackWidget` - "Focal stack": alignment,
  height map in physical units, 3-D surface, retouching of the decision by painting;
* :class:`~napari_fusion._napari._metrics_widget.MetricsWidget` - "Fusion metrics";
* :class:`~napari_fusion._napari._upsample_widget.GuidedUpsampleWidget` - "Guided
  upsampling" of a multiband layer by a high-resolution guide;
* sample data rendered at run time (:mod:`._sample_data`);
* a TIFF writer that keeps the dtype and records fusion provenance (:mod:`._io`).

Helpers used by those modules:

* :mod:`._layers` - napari layers to fusion inputs and results back to layers (no Qt);
* :mod:`._params` - :class:`~._params.ParamPanel`, the parameter form generated from a
  method's :class:`napari_fusion.Param` metadata, so new methods need no widget code;
* :mod:`._common` - Qt set-up shared by the two run widgets (status labels, layer
  choosers, layer-event wiring, Run/Cancel around a thread worker).

The widgets are thin shells over :func:`napari_fusion.fuse`,
:func:`napari_fusion.focalstack.fuse_focal_stack`, the metrics and the method registry.
"""
