"""Layer-specific prompt enhancer (LayerDiff section 3.2.3, figure 3c, table 3 ablation).

The layer prompts ``T(p_i)`` are refined before they guide the intra-layer attention:

- "s": self-attention over the layer prompts. The tokens of *all* layers attend jointly,
  ``# (B, L, S, D) -> (B, L*S, D)``, so that each layer prompt can tell itself apart from
  the others ("enhance their distinctiveness"); a learned layer-index embedding is added
  to the attention input and tokens of padded layers are masked out as keys.
- "c": cross-attention with the layer-prompt tokens as queries and the global prompt
  ``T(y)`` as keys/values (the paper's best variant is "s+c").
- "f": a feed-forward network after the attentions (the "S + C + F" ablation).

Every module is residual with a pre-``LayerNorm`` and a zero-initialised output projection
(appendix A.1), so a fresh enhancer returns the layer prompts unchanged.
"""

from __future__ import annotations

import torch
from diffusers.models.attention_processor import Attention
from torch import Tensor, nn

from layergen.models.layer_attention import LayerFeedForward, zero_module

PROMPT_ENHANCER_MODES = ("none", "s", "s+c", "s+c+f")


class LayerPromptEnhancer(nn.Module):
    """Refine layer prompts with self-attention and cross-attention to the global prompt.

    Args:
        dim: text embedding width ``D``.
        mode: one of :data:`PROMPT_ENHANCER_MODES`.
        heads: attention heads (``D`` must be divisible by it).
        max_layers: largest ``L`` supported by the layer-index embedding.
    """

    def __init__(self, dim: int, mode: str = "s+c", heads: int = 8, max_layers: int = 8) -> None:
        super().__init__()
        if mode not in PROMPT_ENHANCER_MODES:
            raise ValueError(f"prompt_enhancer: unknown mode {mode!r}; use one of {PROMPT_ENHANCER_MODES}")
        if dim % heads:
            raise ValueError(f"prompt_enhancer: text width {dim} is not divisible by heads={heads}")
        self.mode = mode
        self.self_attn = self.cross_attn = self.ff = None
        if "s" in mode:
            self.self_norm = nn.LayerNorm(dim)
            self.layer_embedding = nn.Parameter(torch.randn(max_layers, dim) * 0.02)
            self.self_attn = Attention(dim, heads=heads, dim_head=dim // heads, out_bias=True)
            zero_module(self.self_attn.to_out[0])
        if "c" in mode:
            self.cross_norm = nn.LayerNorm(dim)
            self.cross_attn = Attention(
                dim, cross_attention_dim=dim, heads=heads, dim_head=dim // heads, out_bias=True
            )
            zero_module(self.cross_attn.to_out[0])
        if "f" in mode:
            self.ff = LayerFeedForward(dim)

    def forward(
        self,
        layer_hidden_states: Tensor,
        encoder_hidden_states: Tensor,
        layer_valid: Tensor | None = None,
    ) -> Tensor:
        """Enhance layer prompts.

        Args:
            layer_hidden_states: ``(B, L, S, D)`` layer-prompt embeddings ``T(p_i)``.
            encoder_hidden_states: ``(B, S', D)`` global-prompt embedding ``T(y)``.
            layer_valid: ``(B, L)`` bool; padded layers are never attended to.

        Returns:
            ``(B, L, S, D)`` enhanced layer-prompt embeddings.
        """
        if self.mode == "none":
            return layer_hidden_states
        batch, num_layers, seq, dim = layer_hidden_states.shape
        # (B, L, S, D) -> (B, L*S, D)
        x = layer_hidden_states.reshape(batch, num_layers * seq, dim)
        if self.self_attn is not None:
            h = self.self_norm(x).view(batch, num_layers, seq, dim)
            h = (h + self.layer_embedding[:num_layers, None].to(h.dtype)).view(batch, -1, dim)
            mask = None
            if layer_valid is not None and not bool(layer_valid.all()):
                # (B, L) -> (B, 1, L*S): key padding over the tokens of padded layers
                mask = layer_valid.bool().repeat_interleave(seq, dim=1)[:, None, :]
            x = x + self.self_attn(h, attention_mask=mask)
        if self.cross_attn is not None:
            x = x + self.cross_attn(self.cross_norm(x), encoder_hidden_states=encoder_hidden_states)
        if self.ff is not None:
            x = self.ff(x)
        return x.view(batch, num_layers, seq, dim)
