from layergen.models.autoencoder_interface import (  # noqa: F401
    LayeredAutoencoderInterface,
    autoencoder_class,
    autoencoder_classes,
)
from layergen.models.autoencoder_outputs import (  # noqa: F401
    LayeredDecoderOutput,
    LayeredDiagonalGaussian,
    LayeredEncoderOutput,
)
from layergen.models.composite_autoencoder import CompositeAutoencoder  # noqa: F401
from layergen.models.discriminator import PatchDiscriminator  # noqa: F401
from layergen.models.joint_autoencoder import (  # noqa: F401
    JointAutoencoder,
    LayeredAutoencoder,  # the old name of JointAutoencoder
)
from layergen.models.layer_attention import (  # noqa: F401
    InterLayerAttention,
    IntraLayerCrossAttention,
    LayerCollaborativeBlock,
)
from layergen.models.layered_unet import LayeredUNet, LayeredUNetOutput  # noqa: F401
from layergen.models.loading import load_autoencoder  # noqa: F401
from layergen.models.per_layer_autoencoder import PerLayerAutoencoder  # noqa: F401
from layergen.models.prompt_enhancer import LayerPromptEnhancer  # noqa: F401
from layergen.models.quality_classifier import QualityClassifier, select_threshold  # noqa: F401
from layergen.models.sd_autoencoder import StackedSDAutoencoder  # noqa: F401
from layergen.models.text_encoder import (  # noqa: F401
    build_tiny_text_encoder,
    encode_prompts,
    load_text_encoder,
)
