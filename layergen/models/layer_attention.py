"""Layer-collaborative attention block (LayerDiff section 3.2.2, figure 3b, appendix A.1).

After every Stable Diffusion transformer block (each diffusers ``BasicTransformerBlock``
inside a ``Transformer2DModel``, on its inner tokens: after ``proj_in``, before ``proj_out``)
the layered UNet adds a :class:`LayerCollaborativeBlock` made of three residual modules, each
with a pre-``LayerNorm`` and a zero-initialised output projection (appendix A.1), so that a
freshly added block is the identity and the wrapped UNet reproduces the base UNet. Running
on the inner tokens puts the block in the feature space where SD's cross-attention
(``norm2``, ``attn2.to_q``) was trained, so the intra-layer attention initialised from it
starts with SD's own text-to-pixel attention maps:

(a) :class:`InterLayerAttention`: self-attention across the ``L`` layers at every pixel,
    ``# (B*L, C, h, w) -> (B*h*w, L, C)``, key-padding-masked by ``layer_valid`` so that a
    padded layer never changes a valid layer's output;
(b) :class:`IntraLayerCrossAttention`: cross-attention of each layer's pixels to that
    layer's own (enhanced) prompt, initialised from the SD block's cross-attention (attn2);
(c) a feed-forward network (diffusers ``FeedForward``, GEGLU).

The per-call layer context (number of layers, layer prompts, ``layer_valid``) travels
through the UNet's ``cross_attention_kwargs`` under :data:`LAYER_CONTEXT_KEY`;
:class:`LayerCollaborativeTransformerBlock` strips it before the SD block sees the kwargs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from diffusers.models.attention import BasicTransformerBlock, FeedForward
from diffusers.models.attention_processor import Attention
from torch import Tensor, nn

LAYER_CONTEXT_KEY = "layer_context"


@dataclass
class LayerContext:
    """Per-call layer information read by every layer-collaborative block.

    Attributes:
        num_layers: ``L``, the number of layers folded into the batch.
        layer_hidden_states: ``(B*L, S, D)`` enhanced layer-prompt embeddings.
        layer_valid: ``(B, L)`` bool, False for padded layers; None means all valid.
    """

    num_layers: int
    layer_hidden_states: Tensor
    layer_valid: Tensor | None = None


def zero_module(module: nn.Module) -> nn.Module:
    """Set every parameter of ``module`` to zero (appendix A.1 zero-initialisation)."""
    for parameter in module.parameters():
        nn.init.zeros_(parameter)
    return module


class InterLayerAttention(nn.Module):
    """Self-attention across layers at each pixel (LayerDiff section 3.2.2, module (a)).

    Tokens are the ``L`` layer features at one pixel; a learned layer-index embedding is
    added to the normalised queries/keys so the module knows which layer is the background
    and the depth order (the residual stream itself is untouched). The output projection
    is zero-initialised.

    Args:
        dim: channel width ``C`` of the UNet features.
        heads: attention heads.
        dim_head: channels per head.
        max_layers: largest ``L`` supported by the layer-index embedding.
    """

    def __init__(self, dim: int, heads: int, dim_head: int, max_layers: int = 8) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.layer_embedding = nn.Parameter(torch.randn(max_layers, dim) * 0.02)
        self.attn = Attention(query_dim=dim, heads=heads, dim_head=dim_head, out_bias=True)
        zero_module(self.attn.to_out[0])

    def forward(self, tokens: Tensor, num_layers: int, layer_valid: Tensor | None) -> Tensor:
        """Add inter-layer attention to ``tokens`` ``(B*L, N, C)``; returns the same shape."""
        batch_layers, num_tokens, dim = tokens.shape
        batch = batch_layers // num_layers
        if num_layers > self.layer_embedding.shape[0]:
            raise ValueError(
                f"InterLayerAttention: {num_layers} layers exceed max_layers="
                f"{self.layer_embedding.shape[0]}"
            )
        # (B*L, N, C) -> (B*N, L, C)
        x = tokens.view(batch, num_layers, num_tokens, dim).permute(0, 2, 1, 3)
        x = x.reshape(batch * num_tokens, num_layers, dim)
        x = self.norm(x) + self.layer_embedding[:num_layers].to(x.dtype)
        mask = None
        if layer_valid is not None and not bool(layer_valid.all()):
            # key-padding mask (B, L) -> (B*N, 1, L): True = may attend
            mask = layer_valid.bool().repeat_interleave(num_tokens, dim=0)[:, None, :]
        x = self.attn(x, attention_mask=mask)
        # (B*N, L, C) -> (B*L, N, C)
        x = x.view(batch, num_tokens, num_layers, dim).permute(0, 2, 1, 3)
        return tokens + x.reshape(batch_layers, num_tokens, dim)


class IntraLayerCrossAttention(nn.Module):
    """Text-guided intra-layer attention (LayerDiff section 3.2.2, module (b)).

    The pixels of each layer attend to that layer's own prompt embedding. Query, key and
    value projections (and the pre-norm) are copied from the SD block's cross-attention
    (attn2) by :meth:`init_from_cross_attention`; the output projection is zero-initialised
    (appendix A.1).
    """

    def __init__(
        self, dim: int, cross_attention_dim: int, heads: int, dim_head: int, qkv_bias: bool = False
    ) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.attn = Attention(
            query_dim=dim,
            cross_attention_dim=cross_attention_dim,
            heads=heads,
            dim_head=dim_head,
            bias=qkv_bias,
            out_bias=True,
        )
        zero_module(self.attn.to_out[0])

    @torch.no_grad()
    def init_from_cross_attention(self, attn2: Attention, norm: nn.Module | None = None) -> None:
        """Copy ``to_q``/``to_k``/``to_v`` of an SD cross-attention (and its pre-norm)."""
        for name in ("to_q", "to_k", "to_v"):
            getattr(self.attn, name).load_state_dict(getattr(attn2, name).state_dict())
        if isinstance(norm, nn.LayerNorm) and norm.weight is not None:
            self.norm.load_state_dict(norm.state_dict())

    def forward(self, tokens: Tensor, layer_hidden_states: Tensor) -> Tensor:
        """``tokens`` ``(B*L, N, C)``, ``layer_hidden_states`` ``(B*L, S, D)`` -> ``(B*L, N, C)``."""
        return tokens + self.attn(self.norm(tokens), encoder_hidden_states=layer_hidden_states)


class LayerFeedForward(nn.Module):
    """Pre-norm GEGLU feed-forward (module (c)) with a zero-initialised output layer."""

    def __init__(self, dim: int, mult: int = 4) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.ff = FeedForward(dim, mult=mult, activation_fn="geglu")
        zero_module([m for m in self.ff.net if isinstance(m, nn.Linear)][-1])

    def forward(self, tokens: Tensor) -> Tensor:
        """``(..., C) -> (..., C)``."""
        return tokens + self.ff(self.norm(tokens))


class LayerCollaborativeBlock(nn.Module):
    """Inter-layer attention, text-guided intra-layer attention and FFN (figure 3b).

    Operates on the transformer tokens of all layers folded into the batch,
    ``(B*L, h*w, C)``, and returns the same shape. At initialisation it is the identity.
    """

    def __init__(
        self,
        dim: int,
        cross_attention_dim: int,
        heads: int,
        dim_head: int,
        max_layers: int = 8,
        qkv_bias: bool = False,
    ) -> None:
        super().__init__()
        self.inter_layer = InterLayerAttention(dim, heads, dim_head, max_layers)
        self.intra_layer = IntraLayerCrossAttention(
            dim, cross_attention_dim, heads, dim_head, qkv_bias=qkv_bias
        )
        self.ff = LayerFeedForward(dim)
        self.gradient_checkpointing = False

    def _forward(
        self, tokens: Tensor, layer_hidden_states: Tensor, layer_valid: Tensor | None,
        num_layers: int,
    ) -> Tensor:
        tokens = self.inter_layer(tokens, num_layers, layer_valid)
        tokens = self.intra_layer(tokens, layer_hidden_states)
        return self.ff(tokens)

    def forward(self, tokens: Tensor, context: LayerContext) -> Tensor:
        """Apply the block to ``tokens`` ``(B*L, N, C)`` with ``context``."""
        args = (tokens, context.layer_hidden_states, context.layer_valid, context.num_layers)
        if torch.is_grad_enabled() and self.gradient_checkpointing:
            return self._gradient_checkpointing_func(self._forward, *args)
        return self._forward(*args)


class LayerCollaborativeTransformerBlock(nn.Module):
    """An SD ``BasicTransformerBlock`` followed by a :class:`LayerCollaborativeBlock`.

    Replaces a block in a ``Transformer2DModel``'s ``transformer_blocks`` with the same call
    signature (positional order included, as the transformer's gradient checkpointing calls
    it positionally). The :class:`LayerContext` is taken out of ``cross_attention_kwargs``
    so the SD block (and its attention processors) never see it; without a context the
    layer block is skipped.
    """

    def __init__(self, block: BasicTransformerBlock, max_layers: int = 8) -> None:
        super().__init__()
        self.block = block
        dim = block.attn1.to_q.in_features
        heads = block.attn1.heads
        attn2 = block.attn2
        if attn2 is not None and attn2.is_cross_attention:
            cross_dim = attn2.to_k.in_features
            qkv_bias = attn2.to_q.bias is not None
        else:
            cross_dim = dim
            qkv_bias = False
        self.layer_block = LayerCollaborativeBlock(
            dim, cross_dim, heads, dim // heads, max_layers=max_layers, qkv_bias=qkv_bias
        )
        self.init_from_transformer()

    def init_from_transformer(self) -> None:
        """(Re-)initialise the intra-layer attention from the SD block's attn2 and norm2."""
        if self.block.attn2 is not None and self.block.attn2.is_cross_attention:
            self.layer_block.intra_layer.init_from_cross_attention(self.block.attn2, self.block.norm2)

    def forward(
        self,
        hidden_states: Tensor,
        attention_mask: Tensor | None = None,
        encoder_hidden_states: Tensor | None = None,
        encoder_attention_mask: Tensor | None = None,
        timestep: Tensor | None = None,
        cross_attention_kwargs: dict[str, Any] | None = None,
        class_labels: Tensor | None = None,
        added_cond_kwargs: dict[str, Tensor] | None = None,
    ) -> Tensor:
        """``BasicTransformerBlock.forward``: tokens ``(B*L, N, C)`` in and out."""
        cross_attention_kwargs = dict(cross_attention_kwargs or {})
        context = cross_attention_kwargs.pop(LAYER_CONTEXT_KEY, None)
        out = self.block(
            hidden_states,
            attention_mask=attention_mask,
            encoder_hidden_states=encoder_hidden_states,
            encoder_attention_mask=encoder_attention_mask,
            timestep=timestep,
            cross_attention_kwargs=cross_attention_kwargs or None,
            class_labels=class_labels,
            added_cond_kwargs=added_cond_kwargs,
        )
        if context is not None:
            out = self.layer_block(out, context)
        return out
