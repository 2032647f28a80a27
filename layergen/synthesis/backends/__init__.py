"""Interchangeable implementations of the synthesis stages (chosen in YAML by class_path).

Salient masks (:mod:`.saliency`), inpainting (:mod:`.inpainting`), quality scoring
(:mod:`.quality`); for the LayerDiff mode and decomposition, captioning
(:mod:`.captioning`), depth (:mod:`.depth`), detection (:mod:`.detection`) and
segmentation (:mod:`.segmentation`). Tiny random models of the real architectures for
tests are written by the ``build_tiny_*`` functions beside the loaders (e.g.
:func:`.saliency.build_tiny_saliency`, :func:`.inpainting.build_tiny_inpainting`).
Importing this package loads no model and no heavy optional library.
"""
