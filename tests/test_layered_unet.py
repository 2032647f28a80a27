"""LayeredUNet: equivalence with the base UNet at init, masking, loading, layouts."""

import pytest
import torch
from diffusers import UNet2DConditionModel
from diffusers.models.attention import BasicTransformerBlock
from diffusers.models.transformers.transformer_2d import Transformer2DModel

from layergen.models.input_convs import box_maps, widen_conv
from layergen.models.layer_attention import LayerCollaborativeTransformerBlock
from layergen.models.layered_unet import LayeredUNet

UNET_CONFIG = dict(
    sample_size=8,
    in_channels=4,
    out_channels=4,
    block_out_channels=(8, 16),
    layers_per_block=1,
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=16,
    attention_head_dim=4,
    norm_num_groups=4,
)
B, L, S, D = 2, 3, 5, 16


def base_unet(**overrides):
    torch.manual_seed(0)
    return UNet2DConditionModel(**{**UNET_CONFIG, **overrides}).eval()


def inputs(channels=4):
    torch.manual_seed(1)
    return (
        torch.randn(B, L, channels, 8, 8),
        torch.randint(0, 1000, (B, L)),
        torch.randn(B, S, D),
        torch.randn(B, L, S, D),
    )


def randomise_new_modules(model):
    """Give every zero-initialised new parameter random values (a 'trained' model)."""
    torch.manual_seed(2)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".layer_block." in name or "prompt_enhancer" in name or "mask_" in name:
                p.add_(torch.randn_like(p) * 0.1)


def test_equivalence_at_init_per_layer():
    base = base_unet()
    model = LayeredUNet.from_unet(base, prompt_enhancer="s+c+f", prompt_enhancer_heads=2).eval()
    x, t, g, lh = inputs()
    valid = torch.tensor([[True, True, True], [True, True, False]])
    with torch.no_grad():
        out = model(x, t, g, lh, valid).sample
        ref = torch.stack([base(x[:, i], t[:, i], g).sample for i in range(L)], dim=1)
    assert out.shape == (B, L, 4, 8, 8)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
    n_wrapped = sum(".layer_block.inter_layer.attn.to_q.weight" in k for k in model.state_dict())
    n_transformers = sum(isinstance(m, Transformer2DModel) for m in base.modules())
    assert n_wrapped == n_transformers == 4  # down 1, mid 1, up 2


def test_equivalence_with_mask_channels_and_gate():
    base = base_unet()
    model = LayeredUNet.from_unet(base, mask_channels=4, prompt_enhancer_heads=2).eval()
    x, t, g, lh = inputs(channels=8)
    with torch.no_grad():
        out = model(x, t, g, lh).sample
        ref = torch.stack([base(x[:, i, :4], t[:, i], g).sample for i in range(L)], dim=1)
    assert out.shape == (B, L, 8, 8, 8)
    torch.testing.assert_close(out[:, :, :4], ref, atol=1e-5, rtol=0)
    conv_in = model.unet.conv_in
    assert conv_in.mask_gate.item() == 0.0
    torch.testing.assert_close(conv_in.mask_conv.weight, base.conv_in.weight)
    torch.testing.assert_close(model.unet.conv_out.mask_conv.weight, base.conv_out.weight)


def test_padded_layer_never_changes_valid_layers():
    model = LayeredUNet.from_unet(base_unet(), mask_channels=4, prompt_enhancer_heads=2).eval()
    randomise_new_modules(model)
    x, t, g, lh = inputs(channels=8)
    valid = torch.tensor([[True, True, True], [True, True, False]])
    x2, lh2, t2 = x.clone(), lh.clone(), t.clone()
    x2[1, 2], lh2[1, 2], t2[1, 2] = torch.randn_like(x2[1, 2]) * 5, torch.randn_like(lh2[1, 2]), 3
    with torch.no_grad():
        out = model(x, t, g, lh, valid).sample
        out2 = model(x2, t2, g, lh2, valid).sample
        # the same change in a *valid* layer does change the other layers (not vacuous)
        out3 = model(x2, t2, g, lh2, torch.ones_like(valid)).sample
    torch.testing.assert_close(out2[1, :2], out[1, :2], atol=1e-5, rtol=0)
    torch.testing.assert_close(out2[0], out[0], atol=1e-5, rtol=0)
    assert (out3[1, :2] - out[1, :2]).abs().max() > 1e-3


def test_tiny_sd_unet_loads_through_full_size_path(tmp_path):
    base = base_unet()
    base.save_pretrained(tmp_path / "sd" / "unet")
    model = LayeredUNet.from_pretrained_unet(str(tmp_path / "sd"), prompt_enhancer_heads=2).eval()
    x, t, g, lh = inputs()
    with torch.no_grad():
        ref = torch.stack([base(x[:, i], t[:, i], g).sample for i in range(L)], dim=1)
        torch.testing.assert_close(model(x, t, g, lh).sample, ref, atol=1e-5, rtol=0)
    # intra-layer attention starts from the SD cross-attention (attn2)
    wrapper = model.unet.down_blocks[0].attentions[0].transformer_blocks[0]
    attn2 = base.down_blocks[0].attentions[0].transformer_blocks[0].attn2
    torch.testing.assert_close(wrapper.layer_block.intra_layer.attn.to_k.weight, attn2.to_k.weight)
    assert wrapper.layer_block.intra_layer.attn.to_out[0].weight.abs().max() == 0
    # a trained LayeredUNet round-trips through save_pretrained / from_pretrained
    randomise_new_modules(model)
    model.save_pretrained(tmp_path / "layered")
    loaded = LayeredUNet.from_pretrained(tmp_path / "layered").eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, t, g, lh).sample, model(x, t, g, lh).sample)


def test_no_layer_blocks_is_the_plain_unet():
    base = base_unet()
    model = LayeredUNet.from_unet(base, layer_blocks=False).eval()
    assert model.layer_prompt_enhancer is None
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in base.parameters())
    x, t, g, _ = inputs()
    with torch.no_grad():
        out = model(x[:, :1], t[:, 0], g).sample
        torch.testing.assert_close(out[:, 0], base(x[:, 0], t[:, 0], g).sample)


def test_stacked_and_folded_layouts():
    # stacked SD-AE latents (B, 2L-1, C, h, w): images then foreground masks
    model = LayeredUNet.from_unet(base_unet(), mask_channels=4, latent_layout="stacked",
                                  prompt_enhancer_heads=2).eval()
    z = torch.randn(B, 2 * L - 1, 4, 8, 8)
    with torch.no_grad():
        assert model(z, torch.full((B, 2 * L - 1), 10), torch.randn(B, S, D)).sample.shape == z.shape
    # folded into channels with widened convs: identical components give SD's response
    base = base_unet()
    folded = LayeredUNet.from_unet(base, in_channels=12, out_channels=12, layer_blocks=False,
                                   latent_layout="folded").eval()
    one = torch.randn(B, 1, 4, 8, 8)
    g = torch.randn(B, S, D)
    with torch.no_grad():
        out = folded(one.expand(B, 3, 4, 8, 8), torch.tensor([5, 7]), g).sample
        ref = base(one[:, 0], torch.tensor([5, 7]), g).sample
    assert out.shape == (B, 3, 4, 8, 8)
    for i in range(3):
        torch.testing.assert_close(out[:, i], ref, atol=1e-5, rtol=0)
    assert not folded.per_layer_timesteps


def test_widen_conv_rejects_non_multiples():
    with pytest.raises(ValueError, match="multiples"):
        widen_conv(torch.nn.Conv2d(4, 8, 3), 6, 8)


def test_gradient_checkpointing_same_gradients():
    model = LayeredUNet.from_unet(base_unet(), prompt_enhancer_heads=2)
    randomise_new_modules(model)
    x, t, g, lh = inputs()
    grads = []
    for checkpointing in (False, True):
        model.zero_grad()
        if checkpointing:
            model.enable_gradient_checkpointing()
        model.train()
        model(x, t, g, lh).sample.square().mean().backward()
        grads.append([p.grad.clone() for p in model.parameters() if p.grad is not None])
    assert len(grads[0]) == len(grads[1]) > 0
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_bad_inputs_name_the_field():
    model = LayeredUNet.from_unet(base_unet(), prompt_enhancer_heads=2, max_layers=2)
    x, t, g, lh = inputs()
    with pytest.raises(ValueError, match="max_layers"):
        model(x, t, g, lh)
    with pytest.raises(ValueError, match=r"sample must be \(B, L, C, h, w\)"):
        model(x[:, 0], t, g)
    with pytest.raises(ValueError, match="timestep"):
        model(x[:, :2], torch.zeros(B, 3), g)
    with pytest.raises(ValueError, match="latent_layout"):
        LayeredUNet(unet_config=UNET_CONFIG, latent_layout="diagonal")


def test_stacked_layout_accepts_per_latent_layer_validity():
    model = LayeredUNet.from_unet(base_unet(), mask_channels=4, latent_layout="stacked",
                                  prompt_enhancer_heads=2).eval()
    randomise_new_modules(model)
    z, g = torch.randn(B, 2 * L - 1, 4, 8, 8), torch.randn(B, S, D)
    with torch.no_grad():
        per_layer = model(z, 10, g, layer_valid=torch.ones(B, L, dtype=torch.bool)).sample
        per_latent = model(z, 10, g, layer_valid=torch.ones(B, 2 * L - 1, dtype=torch.bool)).sample
    torch.testing.assert_close(per_latent, per_layer)


def _record_attention_maps(attn, maps):
    """Switch ``attn`` to diffusers' plain processor and record its softmax maps."""
    from diffusers.models.attention_processor import AttnProcessor

    attn.set_processor(AttnProcessor())
    scores = attn.get_attention_scores

    def recording(query, key, attention_mask=None):
        probs = scores(query, key, attention_mask)
        maps.append(probs)
        return probs

    attn.get_attention_scores = recording


def test_intra_layer_attention_maps_equal_sd_cross_attention_at_init():
    # LayerDiff 3.2.2 / A.1: the layer block runs on the transformer's inner tokens, where
    # attn2 was trained. With the SD block's attn2 output and FFN silenced, the tokens after
    # the block are those attn2 attends from, so at init the intra-layer maps equal SD's
    # cross-attention maps for the same text (after proj_out they would not).
    base = base_unet()
    with torch.no_grad():
        for block in base.modules():
            if isinstance(block, BasicTransformerBlock):
                block.attn2.to_out[0].weight.zero_()
                block.attn2.to_out[0].bias.zero_()
                block.ff.net[-1].weight.zero_()
                block.ff.net[-1].bias.zero_()
    model = LayeredUNet.from_unet(base, prompt_enhancer="none").eval()
    sd_maps, intra_maps = [], []
    wrappers = [m for m in model.modules() if isinstance(m, LayerCollaborativeTransformerBlock)]
    assert len(wrappers) == 4
    for wrapper in wrappers:
        _record_attention_maps(wrapper.block.attn2, sd_maps)
        _record_attention_maps(wrapper.layer_block.intra_layer.attn, intra_maps)
    x, t, g, _ = inputs()
    with torch.no_grad():
        model(x, t, g, g[:, None].expand(B, L, S, D))
    assert len(sd_maps) == len(intra_maps) == 4
    for sd, intra in zip(sd_maps, intra_maps):
        assert sd.shape == intra.shape and sd.shape[-1] == S
        torch.testing.assert_close(intra, sd, atol=1e-5, rtol=0)


def test_pipeline_saved_with_the_old_block_placement_is_refused(tmp_path):
    model = LayeredUNet.from_unet(base_unet(), prompt_enhancer_heads=2)
    model.save_pretrained(tmp_path / "unet")
    from safetensors.torch import load_file, save_file

    path = tmp_path / "unet" / "diffusion_pytorch_model.safetensors"
    state = load_file(path)
    old = {}
    for key, value in state.items():  # the layout before the layer blocks moved inside
        key = key.replace(".transformer_blocks.0.layer_block.", ".layer_block.")
        old[key.replace(".transformer_blocks.0.block.", ".transformer.transformer_blocks.0.")] = value
    save_file(old, path)
    with pytest.raises(ValueError, match="re-train|retrain"):
        LayeredUNet.from_pretrained(tmp_path / "unet")


def test_pooled_layer_prompt_class_embedding():
    """class_embed_type 'projection': each layer's enhanced prompt, mean over its tokens, is the
    UNet's class label, so a layer prompt changes that layer alone (inter-layer attention is
    zero at init, and so is text-guided intra-layer attention: the class embedding is the
    only path here)."""
    config = {**UNET_CONFIG, "class_embed_type": "projection", "projection_class_embeddings_input_dim": D}
    torch.manual_seed(0)
    model = LayeredUNet(config, prompt_enhancer="none", prompt_enhancer_heads=2).eval()
    x, t, g, lh = inputs()
    changed = lh.clone()
    changed[:, 1] += 1.0
    with torch.no_grad():
        out = model(x, t, g, lh).sample
        out_changed = model(x, t, g, changed).sample
        pooled = model.pooled_prompts(lh.flatten(0, 1))
    torch.testing.assert_close(pooled, lh.flatten(0, 1).mean(dim=1))
    diff = (out_changed - out).abs().amax(dim=(2, 3, 4))  # (B, L)
    assert (diff[:, 1] > 1e-3).all() and (diff[:, [0, 2]] == 0).all()
    plain = LayeredUNet(UNET_CONFIG, prompt_enhancer="none", prompt_enhancer_heads=2)
    assert plain.pooled_prompts(lh.flatten(0, 1)) is None


def test_box_maps_inside_outside_and_missing():

    boxes = torch.tensor([[[0.0, 0.0, 0.5, 0.25], [float("nan")] * 4]])  # (1, 2, 4)
    maps = box_maps(boxes, 1, 2, 4, 4)  # cell centres 0.125, 0.375, ...
    assert maps.shape == (1, 2, 1, 4, 4)
    expected = -torch.ones(4, 4)
    expected[0, :2] = 1.0  # y centre 0.125 <= 0.25, x centres 0.125, 0.375 <= 0.5
    torch.testing.assert_close(maps[0, 0, 0], expected)
    assert (maps[0, 1] == 0).all()
    assert (box_maps(None, 1, 2, 4, 4) == 0).all()
    with pytest.raises(ValueError, match="layer_boxes must be"):
        box_maps(boxes[:, :1], 1, 2, 4, 4)


def test_conditions_start_at_zero_and_carry_over_from_a_saved_model(tmp_path):
    """A conditioned model made from a saved one first predicts what the saved one does,
    composite or boxes given or not; once its condition conv is trained, they matter."""
    torch.manual_seed(0)
    saved = LayeredUNet(UNET_CONFIG, mask_channels=0, prompt_enhancer_heads=2).eval()
    randomise_new_modules(saved)
    saved.save_pretrained(tmp_path / "unet")
    model = LayeredUNet.from_layered_unet(
        str(tmp_path / "unet"), composite_condition=True, box_condition=True
    ).eval()
    assert model.condition_channels == 4 + 1 + 1
    x, t, g, lh = inputs()
    composite = torch.randn(B, 4, 8, 8)
    boxes = torch.rand(B, L, 4).sort(dim=-1).values
    with torch.no_grad():
        ref = saved(x, t, g, lh).sample
        torch.testing.assert_close(model(x, t, g, lh).sample, ref)
        torch.testing.assert_close(model(x, t, g, lh, composite_latents=composite,
                                         layer_boxes=boxes).sample, ref)
        model.unet.conv_in.cond_conv.weight.normal_()
        with_composite = model(x, t, g, lh, composite_latents=composite).sample
        composite[1] = float("nan")  # sample 1: no composite
        partly = model(x, t, g, lh, composite_latents=composite).sample
        without = model(x, t, g, lh).sample
    assert not torch.allclose(with_composite, without)
    torch.testing.assert_close(partly[0], with_composite[0])
    torch.testing.assert_close(partly[1], without[1])
    with pytest.raises(ValueError, match="built without"):
        saved(x, t, g, lh, composite_latents=composite)
