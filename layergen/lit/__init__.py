from layergen.lit.autoencoder import LayeredAutoencoderModule  # noqa: F401
from layergen.lit.callbacks import LayeredImageLogger, SavePretrained  # noqa: F401
from layergen.lit.classifier import QualityClassifierModule  # noqa: F401
from layergen.lit.diffusion import LayeredDiffusionModule  # noqa: F401
