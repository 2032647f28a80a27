"""Image loss of the layered autoencoder: L1 + LPIPS per component, plus the KL term.

Text2Layer appendix III: the latent-diffusion autoencoder loss is "separately applied to each of
F, B, I with equal weights". Each component (the background, every foreground, the composite)
gets ``mean|x - x_hat| + w_lpips * LPIPS(x, x_hat)``; the component losses are summed. The
adversarial part lives in ``adversarial.py``.
"""

from __future__ import annotations

from torch import Tensor, nn

from layergen.models.autoencoder_outputs import LayeredDiagonalGaussian


def _valid_mean(values: Tensor, valid: Tensor) -> Tensor:
    """Mean of ``(B,)`` values over the samples where ``valid`` is True (0 if none)."""
    weight = valid.to(values.dtype)
    return (values * weight).sum() / weight.sum().clamp_min(1.0)


def component_reconstruction(
    pred: Tensor,
    target: Tensor,
    lpips: nn.Module | None = None,
    lpips_weight: float = 1.0,
) -> tuple[Tensor, Tensor | None]:
    """Per-sample L1 and LPIPS of one image component.

    Args:
        pred: ``(N, 3, H, W)`` reconstruction in [-1, 1].
        target: ``(N, 3, H, W)`` ground truth in [-1, 1].
        lpips: LPIPS module taking ``(N, 3, H, W)`` pairs and returning ``(N,)``; None skips it.
        lpips_weight: 0 skips LPIPS.

    Returns:
        ``(N,)`` L1 (mean over pixels) and ``(N,)`` LPIPS (or None).
    """
    l1 = (pred - target).abs().flatten(1).mean(1)
    if lpips is None or lpips_weight == 0:
        return l1, None
    return l1, lpips(pred.float(), target.float()).view(-1)


def image_loss(
    pred_images: Tensor,
    images: Tensor,
    layer_valid: Tensor,
    pred_composite: Tensor | None,
    composite: Tensor,
    lpips: nn.Module | None = None,
    lpips_weight: float = 1.0,
) -> dict[str, Tensor]:
    """``L_img`` without the adversarial part: L1 + LPIPS per component, equal weights.

    Components: the background (layer 0), each foreground (layers 1..K; padded layers are left
    out) and the composite I (when predicted).

    Args:
        pred_images: ``(B, L, 3, H, W)`` decoded layers.
        images: ``(B, L, 3, H, W)`` ground-truth layers in [-1, 1].
        layer_valid: ``(B, L)`` bool.
        pred_composite: ``(B, 3, H, W)`` predicted composite, or None (no composite term).
        composite: ``(B, 3, H, W)`` ground-truth composite.
        lpips: LPIPS module, or None.
        lpips_weight: weight of LPIPS inside each component.

    Returns:
        dict: ``l1/{name}`` and ``lpips/{name}`` per component (``background``, ``foreground``
        averaged over the foregrounds, ``composite``) and ``rec``, the sum over components.
    """
    batch, num_layers = images.shape[:2]
    # (B, L, 3, H, W) -> (B*L, 3, H, W)
    l1, lp = component_reconstruction(
        pred_images.flatten(0, 1), images.flatten(0, 1), lpips, lpips_weight
    )
    per_layer = l1 if lp is None else l1 + lpips_weight * lp
    per_layer, l1 = per_layer.view(batch, num_layers), l1.view(batch, num_layers)
    lp = None if lp is None else lp.view(batch, num_layers)
    rec = sum(_valid_mean(per_layer[:, i], layer_valid[:, i]) for i in range(num_layers))
    fg_valid = layer_valid[:, 1:]
    terms = {
        "l1/background": l1[:, 0].mean(),
        "l1/foreground": _valid_mean(l1[:, 1:].flatten(), fg_valid.flatten()),
    }
    if lp is not None:
        terms["lpips/background"] = lp[:, 0].mean()
        terms["lpips/foreground"] = _valid_mean(lp[:, 1:].flatten(), fg_valid.flatten())
    if pred_composite is not None:
        l1_c, lp_c = component_reconstruction(pred_composite, composite, lpips, lpips_weight)
        terms["l1/composite"] = l1_c.mean()
        rec = rec + l1_c.mean()
        if lp_c is not None:
            terms["lpips/composite"] = lp_c.mean()
            rec = rec + lpips_weight * lp_c.mean()
    terms["rec"] = rec
    return terms


def kl_loss(
    posterior: LayeredDiagonalGaussian,
    image_size: tuple[int, int],
    layer_valid: Tensor | None = None,
) -> Tensor:
    """KL term of the KL-regularised latent, scaled like latent diffusion's.

    Latent diffusion sums both the reconstruction error (over the pixels of an image) and the
    KL (over latent elements); here each component's reconstruction is a mean over its
    ``3 H W`` values, so the KL is divided by ``3 H W``: the usual KL weight (1e-6) keeps its
    meaning.

    Args:
        posterior: posterior over ``(B, L', C, h, w)``.
        image_size: ``(H, W)`` of the decoded images.
        layer_valid: ``(B, L')`` bool for per-layer latents (padded layers left out), or None.

    Returns:
        scalar: the batch mean of ``KL / (3 H W)``.
    """
    height, width = image_size
    # in float32: under bf16 autocast the moments are bf16, and ``var - 1 - logvar`` cancels
    # to a wrong (even negative) KL near the prior at bf16's 8-bit mantissa
    posterior = LayeredDiagonalGaussian(posterior.parameters.float(), posterior.deterministic)
    return posterior.kl(layer_valid).mean() / (3.0 * height * width)
