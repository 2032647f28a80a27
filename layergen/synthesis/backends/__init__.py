"""Interchangeable implementations of the synthesis stages (chosen in YAML by class_path).

Salient masks (:mod:`.saliency`), inpainting (:mod:`.inpainting`), quality scoring
(:mod:`.quality`) and tiny random models of the real architectures for tests (:mod:`.tiny`).
Importing this package loads no model and no heavy optional library.
"""
