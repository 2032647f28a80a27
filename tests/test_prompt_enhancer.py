"""LayerPromptEnhancer: identity at init, masking of padded layers, modes."""

import pytest
import torch

from layergen.models.prompt_enhancer import PROMPT_ENHANCER_MODES, LayerPromptEnhancer


@pytest.mark.parametrize("mode", PROMPT_ENHANCER_MODES)
def test_identity_at_init(mode):
    enhancer = LayerPromptEnhancer(16, mode=mode, heads=2)
    layers, global_ = torch.randn(2, 3, 5, 16), torch.randn(2, 7, 16)
    torch.testing.assert_close(enhancer(layers, global_), layers)


def test_modes_build_their_modules():
    assert LayerPromptEnhancer(16, "s+c", heads=2).ff is None
    full = LayerPromptEnhancer(16, "s+c+f", heads=2)
    assert full.self_attn is not None and full.cross_attn is not None and full.ff is not None
    only_s = LayerPromptEnhancer(16, "s", heads=2)
    assert only_s.cross_attn is None


def trained(mode="s+c+f"):
    enhancer = LayerPromptEnhancer(16, mode=mode, heads=2)
    with torch.no_grad():
        for p in enhancer.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    return enhancer


def test_layers_attend_jointly_and_padded_layers_are_masked():
    enhancer = trained()
    layers, global_ = torch.randn(1, 3, 5, 16), torch.randn(1, 7, 16)
    changed = layers.clone()
    changed[0, 2] = torch.randn(5, 16)
    valid = torch.tensor([[True, True, False]])
    out, out_changed = enhancer(layers, global_, valid), enhancer(changed, global_, valid)
    torch.testing.assert_close(out_changed[0, :2], out[0, :2])
    # when layer 2 is valid, the other layers see it (self-attention across layers)
    out_valid = enhancer(changed, global_, torch.ones_like(valid))
    assert (out_valid[0, :2] - out[0, :2]).abs().max() > 1e-4
    # and the global prompt reaches the layer prompts (cross-attention "c")
    assert (enhancer(layers, global_ * 2, valid) - out)[0, :2].abs().max() > 1e-4


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown mode"):
        LayerPromptEnhancer(16, "s+x")
    with pytest.raises(ValueError, match="divisible"):
        LayerPromptEnhancer(10, "s", heads=4)
