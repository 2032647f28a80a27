"""The library diffusers loads layergen's pipeline components from.

``model_index.json`` names each component as ``[library, class]``. For classes outside
diffusers and transformers, diffusers resolves ``library`` from ``sys.modules`` (it never
imports a module a repository names) and checks the class against its loadable base
classes (``ModelMixin``) looked up in that same module. This module holds both, so
``LayeredDiffusionPipeline`` records its autoencoder and UNet as
``["layergen.pipelines.components", "<class name>"]``; importing
``layergen.pipelines`` makes them loadable.
"""

from diffusers import ModelMixin

from layergen.models import (
    CompositeAutoencoder,
    LayeredAutoencoder,
    PerLayerAutoencoder,
    StackedSDAutoencoder,
)
from layergen.models.layered_unet import LayeredUNet

COMPONENTS_LIBRARY = __name__
COMPONENT_CLASSES: dict[str, type[ModelMixin]] = {
    cls.__name__: cls
    for cls in (
        LayeredAutoencoder,
        PerLayerAutoencoder,
        StackedSDAutoencoder,
        CompositeAutoencoder,
        LayeredUNet,
    )
}

__all__ = [
    "COMPONENTS_LIBRARY",
    "COMPONENT_CLASSES",
    "CompositeAutoencoder",
    "LayeredAutoencoder",
    "LayeredUNet",
    "ModelMixin",
    "PerLayerAutoencoder",
    "StackedSDAutoencoder",
]
