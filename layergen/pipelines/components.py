"""The library diffusers loads layergen's pipeline components from.

``model_index.json`` names each component as ``[library, class]``. For classes outside
diffusers and transformers, diffusers resolves ``library`` from ``sys.modules`` (it never
imports a module a repository names), looks the class up as an attribute of it and checks
it against its loadable base classes (``ModelMixin``) looked up in that same module. This
module holds both, so ``LayeredDiffusionPipeline`` records its autoencoder and UNet as
``["layergen.pipelines.components", "<class name>"]``; importing ``layergen.pipelines``
makes them loadable. Autoencoders are looked up among the ``LayeredAutoencoderInterface``
subclasses (:func:`component_class`): one of your own is loadable once its module is
imported, and old class names (``LayeredAutoencoder``) resolve to the current classes.
"""

from typing import Any

from diffusers import ModelMixin

from layergen.models import (
    CompositeAutoencoder,
    JointAutoencoder,
    LayeredAutoencoderInterface,
    PerLayerAutoencoder,
    StackedSDAutoencoder,
    autoencoder_classes,
)
from layergen.models.layered_unet import LayeredUNet

COMPONENTS_LIBRARY = __name__


def component_class(name: str) -> type[ModelMixin] | None:
    """The layergen component class called ``name`` (a layered autoencoder, also by an old
    name, or ``LayeredUNet``); None if there is none."""
    if name == LayeredUNet.__name__:
        return LayeredUNet
    return autoencoder_classes().get(name)


def __getattr__(name: str) -> Any:
    """Module attributes for diffusers' class lookup by name: every layered autoencoder
    class (:func:`component_class`)."""
    cls = component_class(name)
    if cls is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return cls


__all__ = [
    "COMPONENTS_LIBRARY",
    "CompositeAutoencoder",
    "JointAutoencoder",
    "LayeredAutoencoderInterface",
    "LayeredUNet",
    "ModelMixin",
    "PerLayerAutoencoder",
    "StackedSDAutoencoder",
    "component_class",
]
