from layergen.losses.adversarial import (  # noqa: F401
    adaptive_weight,
    generator_adversarial_loss,
    hinge_discriminator_loss,
)
from layergen.losses.image_loss import image_loss, kl_loss  # noqa: F401
from layergen.losses.mask_loss import (  # noqa: F401
    composition_loss,
    laplacian_loss,
    mask_l1_loss,
    mask_loss,
)
