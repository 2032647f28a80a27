"""LayeredDiffusionPipeline: sampling, guidance, editing, save/load (tiny models, 2 steps)."""

import json

import pytest
import torch
from diffusers import DPMSolverMultistepScheduler, EulerDiscreteScheduler
from pipeline_components import SIZE, tiny_pipeline, tiny_unet_config

from layergen.data.shapes import ShapeScenes
from layergen.latent_layout import LatentLayout
from layergen.layers import BACKGROUND_PROMPT, LayeredImage
from layergen.models.layered_unet import LayeredUNet
from layergen.pipelines import (
    LayeredDiffusionPipeline,
    derive_layer_prompts,
    layerdiff_negative_prompts,
    merge_kept_layers,
)

PROMPT = (
    "a large red star on the left and a small blue circle in the center on a green plain background"
)
LAYERS = ["a green plain background", "a large red star", "a small blue circle"]


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    return tiny_pipeline(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def joint_pipe(tmp_path_factory):
    return tiny_pipeline(tmp_path_factory.mktemp("tiny_joint"), layout="joint")


@pytest.fixture(scope="module")
def stacked_pipe(tmp_path_factory):
    return tiny_pipeline(tmp_path_factory.mktemp("tiny_stacked"), layout="stacked")


@pytest.fixture(params=["layers", "stacked"])
def edit_pipe(request):
    """Both editable latent layouts: per-layer and stacked SD-AE (image + mask latents)."""
    return request.getfixturevalue("pipe" if request.param == "layers" else "stacked_pipe")


def run(pipe, seed=0, **kwargs):
    kwargs.setdefault("num_inference_steps", 2)
    kwargs.setdefault("guidance_scale", 3.0)
    return pipe(generator=torch.Generator().manual_seed(seed), **kwargs)


def scene(k: int = 2) -> LayeredImage:
    return ShapeScenes(size=SIZE * 2, min_foregrounds=k, max_foregrounds=k, split="test", length=4)[
        0
    ]


def small_scene(k: int = 2) -> LayeredImage:
    """A test scene at the tiny pipeline's 16x16."""
    image = scene(k)
    pool = torch.nn.functional.avg_pool2d
    return LayeredImage(
        background=pool(image.background[None], 2)[0],
        foregrounds=pool(image.foregrounds, 2),
        masks=pool(image.masks, 2),
        prompt=image.prompt,
        layer_prompts=image.layer_prompts,
    ).validate()


def test_shapes_ranges_and_batches_with_different_layer_counts(pipe):
    out = run(
        pipe,
        prompt=[PROMPT, "a small red star on a blue plain background"],
        layer_prompts=[LAYERS, LAYERS[:2]],
        output_type="pil",
    )
    assert [im.num_layers for im in out.layers] == [3, 2]
    for im in out.layers:
        assert im.size == (SIZE, SIZE)
        assert im.background.abs().max() <= 1 and im.foregrounds.abs().max() <= 1
        assert im.masks.min() >= 0 and im.masks.sum(0).max() <= 1 + 1e-5
        assert im.metadata["steps"] == 2 and im.metadata["guidance"] == 3.0
    assert out.layers[0].layer_prompts == LAYERS
    assert [c.size for c in out.images] == [(SIZE, SIZE)] * 2  # PIL composites
    latent = run(pipe, prompt=PROMPT, layer_prompts=LAYERS, output_type="latent")
    assert latent.layers is None and latent.images is latent.latents
    assert latent.latents.shape == (1, 3, 4, SIZE // 2, SIZE // 2)


def test_num_layers_without_layer_prompts(pipe):
    """``num_layers`` is L = K + 1, the background included; foreground prompts are empty."""
    out = run(pipe, prompt=PROMPT, num_layers=4)
    image = out.images[0]
    assert image.num_layers == 4 and image.num_foregrounds == 3
    assert image.layer_prompts == ["a green plain background", "", "", ""]
    doc = LayeredDiffusionPipeline.__call__.__doc__
    assert "num_layers: number of layers including the background, L = K + 1" in doc


def test_auto_layer_prompts_and_determinism(pipe):
    a = run(pipe, prompt=PROMPT, layer_prompts="auto").images[0]
    b = run(pipe, prompt=PROMPT, layer_prompts="auto").images[0]
    c = run(pipe, seed=1, prompt=PROMPT, layer_prompts="auto").images[0]
    assert a.layer_prompts == LAYERS
    assert torch.equal(a.foregrounds, b.foregrounds) and torch.equal(a.masks, b.masks)
    assert not torch.equal(a.foregrounds, c.foregrounds)


def test_text2layer_joint_mode(joint_pipe):
    out = run(joint_pipe, prompt=["a large red star on a blue plain background"] * 2)
    assert [im.num_layers for im in out.images] == [2, 2]
    assert out.images[0].layer_prompts == ["a blue plain background", ""]
    with pytest.raises(ValueError, match="exactly L = 2 layers"):
        run(joint_pipe, prompt=PROMPT, layer_prompts=LAYERS)


def test_layerdiff_negative_prompts():
    global_neg, layer_neg = layerdiff_negative_prompts(LAYERS, 4)  # one padded layer
    assert global_neg == "a large red star, a small blue circle"
    assert layer_neg == [global_neg, BACKGROUND_PROMPT, BACKGROUND_PROMPT, ""]


def test_guidance_batches_negatives_first(pipe):
    enc, layers, valid = pipe.prepare_conditions([PROMPT], [LAYERS], None, True, True)
    assert enc.shape[0] == 2 and layers.shape[:2] == (2, 3) and valid.shape == (2, 3)
    expected = pipe.encode_prompt(["a large red star, a small blue circle", PROMPT])
    assert torch.allclose(enc, expected)
    expected_layers = pipe.encode_prompt(
        ["a large red star, a small blue circle", BACKGROUND_PROMPT, BACKGROUND_PROMPT]
    )
    assert torch.allclose(layers[0], expected_layers) and torch.allclose(
        layers[1], pipe.encode_prompt(LAYERS)
    )
    enc, _, _ = pipe.prepare_conditions([PROMPT], [LAYERS], "blurry", True, False)
    assert torch.allclose(enc[0], pipe.encode_prompt(["blurry"])[0])


def test_classifier_free_guidance_formula(pipe, monkeypatch):
    """The guided prediction is eps_neg + w (eps_cond - eps_neg), from one doubled UNet call."""
    calls = []
    forward = pipe.unet.forward

    def spy(sample, timestep, **kwargs):
        out = forward(sample, timestep, **kwargs)
        calls.append((sample.shape[0], out.sample.clone()))
        return out

    monkeypatch.setattr(pipe.unet, "forward", spy)
    captured = []
    step = pipe.scheduler.step

    def spy_step(model_output, t, sample, **kwargs):
        captured.append(model_output.clone())
        return step(model_output, t, sample, **kwargs)

    monkeypatch.setattr(pipe.scheduler, "step", spy_step)
    run(pipe, prompt=PROMPT, layer_prompts=LAYERS, guidance_scale=4.0, num_inference_steps=1)
    (batch, raw), guided = calls[0], captured[0]
    neg, cond = raw.chunk(2)
    assert batch == 2 and torch.allclose(guided, neg + 4.0 * (cond - neg), atol=1e-6)
    calls.clear()
    run(pipe, prompt=PROMPT, layer_prompts=LAYERS, guidance_scale=1.0, num_inference_steps=1)
    assert calls[0][0] == 1


@pytest.mark.parametrize("scheduler_class", [EulerDiscreteScheduler, DPMSolverMultistepScheduler])
def test_any_scheduler(pipe, scheduler_class):
    original = pipe.scheduler
    pipe.scheduler = scheduler_class.from_config(original.config)
    try:
        im = run(pipe, prompt=PROMPT, layer_prompts=LAYERS).images[0]
        assert torch.isfinite(im.foregrounds).all()
    finally:
        pipe.scheduler = original


def test_check_inputs_errors(pipe):
    with pytest.raises(ValueError, match="num_layers=4 needs 4 layer prompts"):
        run(pipe, prompt=PROMPT, layer_prompts=LAYERS, num_layers=4)
    with pytest.raises(ValueError, match="multiples of the latent factor 2"):
        run(pipe, prompt=PROMPT, layer_prompts=LAYERS, height=15)
    with pytest.raises(ValueError, match="set guidance_scale > 1"):
        run(pipe, prompt=PROMPT, layer_prompts=LAYERS, negative_prompt="blurry", guidance_scale=1.0)
    with pytest.raises(ValueError, match="at least one foreground"):
        run(pipe, prompt=PROMPT, layer_prompts=[BACKGROUND_PROMPT])
    with pytest.raises(ValueError, match="exceed the UNet's max_layers=4"):
        run(pipe, prompt=PROMPT, layer_prompts=[BACKGROUND_PROMPT] + ["a red star"] * 4)
    with pytest.raises(ValueError, match="output_type"):
        run(pipe, prompt=PROMPT, layer_prompts=LAYERS, output_type="png")
    with pytest.raises(ValueError, match="latents: expected shape"):
        run(pipe, prompt=PROMPT, layer_prompts=LAYERS, latents=torch.zeros(1, 2, 4, 8, 8))
    with pytest.raises(ValueError, match="2 lists of layer prompts for 1 prompts"):
        run(pipe, prompt=PROMPT, layer_prompts=[LAYERS, LAYERS])
    with pytest.raises(ValueError, match="no foreground noun phrase"):
        run(pipe, prompt="on a blue plain background", layer_prompts="auto")


def assert_kept(result: LayeredImage, source: LayeredImage, keep):
    for i in keep:
        assert torch.equal(result.layer_images()[i], source.layer_images()[i]), f"layer {i}"
        if i > 0:
            assert torch.equal(result.masks[i - 1], source.masks[i - 1]), f"mask {i}"
    assert result.masks.sum(0).max() <= 1 + 1e-5
    result.validate()


@pytest.mark.parametrize(
    "keep, layer_prompts",
    [
        ([1, 2], None),  # background regenerated behind fixed foregrounds
        ([0], None),  # foregrounds generated on a fixed background
        ([0, 2], "replace"),  # foreground 1 replaced with a new layer prompt
        ([0, 1, 2], "add"),  # a layer added on top
    ],
)
def test_edit_keeps_layers_bit_identical(edit_pipe, keep, layer_prompts, monkeypatch):
    pipe = edit_pipe
    source = small_scene(2)
    if layer_prompts == "replace":
        layer_prompts = list(source.layer_prompts)
        layer_prompts[1] = "a large yellow heart"
    elif layer_prompts == "add":
        layer_prompts = [*source.layer_prompts, "a small white cross"]
    timesteps, samples = [], []
    forward = pipe.unet.forward

    def spy(sample, timestep, **kwargs):
        timesteps.append(timestep.clone())
        samples.append(sample.clone())
        return forward(sample, timestep, **kwargs)

    monkeypatch.setattr(pipe.unet, "forward", spy)
    out = pipe.edit(
        source,
        keep=keep,
        layer_prompts=layer_prompts,
        num_inference_steps=2,
        guidance_scale=3.0,
        generator=torch.Generator().manual_seed(0),
    )
    result = out.images[0]
    assert result.num_layers == (4 if layer_prompts and len(layer_prompts) == 4 else 3)
    assert_kept(result, source, keep)
    generated = [i for i in range(source.num_layers) if i not in keep]
    for i in generated:
        assert not torch.equal(result.layer_images()[i], source.layer_images()[i])
    # kept layers' latents (image and mask latents when stacked) are their clean encodings
    # at timestep 0 in every UNet call; the others follow the schedule
    clean = pipe.encode_layers(source, result.num_layers)  # (1, L', C, h, w)
    index = LatentLayout.infer(result.num_layers, clean.shape[1]).layer_index(result.num_layers)
    kept = torch.isin(index, torch.tensor(keep))
    assert len(timesteps) == 2 and timesteps[0].shape[1] == clean.shape[1]
    for t, x, expected in zip(timesteps, samples, pipe.scheduler.timesteps):
        assert (t[:, kept] == 0).all() and (t[:, ~kept] == expected).all()
        assert (x[:, kept] == clean[:, kept]).all()
    assert timesteps[0][:, ~kept].min() > 0
    assert result.metadata["edit"] == {"keep": keep}


def test_restyle_keeps_other_layers(edit_pipe):
    pipe = edit_pipe
    source = small_scene(2)
    out = pipe.restyle(
        source,
        layer=0,
        layer_prompt="a pink striped background",
        strength=0.5,
        num_inference_steps=4,
        guidance_scale=1.0,
        generator=torch.Generator().manual_seed(0),
    )
    result = out.images[0]
    assert_kept(result, source, [1, 2])
    assert result.layer_prompts[0] == "a pink striped background"
    assert not torch.equal(result.background, source.background)
    with pytest.raises(ValueError, match="strength"):
        pipe.restyle(source, layer=1, strength=0.0)


def test_edit_errors(pipe, joint_pipe):
    source = small_scene(2)
    with pytest.raises(ValueError, match="keep: indices"):
        pipe.edit(source, keep=[3])
    with pytest.raises(ValueError, match="nothing to generate"):
        pipe.edit(source, keep=[0, 1, 2])
    with pytest.raises(ValueError, match="layers can be added, not removed"):
        pipe.edit(source, keep=[0], layer_prompts=LAYERS[:2])
    with pytest.raises(ValueError, match="JointAutoencoder encodes all layers into one joint"):
        joint_pipe.edit(small_scene(1), keep=[0])
    folded = LayeredUNet(
        unet_config=tiny_unet_config(in_channels=12), layer_blocks=False, latent_layout="folded"
    )
    components = {**pipe.components, "unet": folded}
    with pytest.raises(ValueError, match="folds all latent layers into its channels"):
        LayeredDiffusionPipeline(**components).edit(source, keep=[0])


def test_merge_kept_layers_fits_masks_into_free_space():
    source = small_scene(2)
    generated = LayeredImage(
        background=torch.zeros(3, SIZE, SIZE),
        foregrounds=torch.zeros(2, 3, SIZE, SIZE),
        masks=torch.full((2, 1, SIZE, SIZE), 0.5),
        layer_prompts=source.layer_prompts,
    )
    merged = merge_kept_layers(generated, source, keep=[2])
    assert torch.equal(merged.masks[1], source.masks[1])
    expected = torch.minimum(torch.full_like(source.masks[1], 0.5), 1 - source.masks[1])
    assert torch.allclose(merged.masks[0], expected, atol=1e-6)


CUSTOM_PARAMETERS = (".layer_block.", "layer_prompt_enhancer.", ".mask_conv.", ".mask_gate")


@torch.no_grad()
def randomise_custom_modules(unet: LayeredUNet) -> list[str]:
    """Random non-zero weights for the layer blocks, prompt enhancer and mask convs / gate."""
    generator = torch.Generator().manual_seed(1)
    names = [n for n, _ in unet.named_parameters() if any(k in n for k in CUSTOM_PARAMETERS)]
    for name, parameter in unet.named_parameters():
        if name in names:
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.2)
    return names


def assert_state_dicts_equal(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    different = [k for k in sa if not torch.equal(sa[k], sb[k])]
    assert not different


@pytest.mark.parametrize("layout", ["layers", "stacked"])
def test_save_load_round_trip(layout, tmp_path):
    pipe = tiny_pipeline(tmp_path, layout=layout)
    fresh = run(pipe, prompt=PROMPT, layer_prompts=LAYERS).images[0]
    names = randomise_custom_modules(pipe.unet)
    assert any(".layer_block." in n for n in names)
    assert any(n.startswith("layer_prompt_enhancer.") for n in names)
    assert any(n.endswith("mask_gate") for n in names) == (layout == "stacked")
    a = run(pipe, prompt=PROMPT, layer_prompts=LAYERS).images[0]
    assert not torch.equal(a.foregrounds, fresh.foregrounds)  # the custom weights matter
    pipe.save_pretrained(tmp_path / "pipe")
    index = json.loads((tmp_path / "pipe" / "model_index.json").read_text())
    assert index["unet"] == ["layergen.pipelines.components", "LayeredUNet"]
    autoencoder_class = type(pipe.autoencoder).__name__
    assert index["autoencoder"] == ["layergen.pipelines.components", autoencoder_class]
    assert (tmp_path / "pipe" / "unet" / "diffusion_pytorch_model.safetensors").exists()
    loaded = LayeredDiffusionPipeline.from_pretrained(tmp_path / "pipe")
    loaded.set_progress_bar_config(disable=True)
    assert_state_dicts_equal(pipe.unet, loaded.unet)
    assert_state_dicts_equal(pipe.autoencoder, loaded.autoencoder)
    b = run(loaded, prompt=PROMPT, layer_prompts=LAYERS).images[0]
    assert torch.equal(a.foregrounds, b.foregrounds) and torch.equal(a.masks, b.masks)
    assert torch.equal(a.background, b.background)


def test_from_checkpoints(pipe, tmp_path):
    """Lightning-style checkpoints (EMA UNet weights, latent_std) rebuild the same pipeline."""
    text_dir = tmp_path / "text"
    pipe.text_encoder.save_pretrained(text_dir / "text_encoder")
    pipe.tokenizer.save_pretrained(text_dir / "tokenizer")
    ae_config = {k: v for k, v in pipe.autoencoder.config.items() if not k.startswith("_")}
    ae_config.pop("scaling_factor")
    torch.save(
        {
            "hyper_parameters": {
                "autoencoder": {
                    "class_path": "layergen.models.PerLayerAutoencoder",
                    "init_args": ae_config,
                },
                "estimate_scaling_factor": True,
            },
            "state_dict": {
                **{f"autoencoder.{k}": v for k, v in pipe.autoencoder.state_dict().items()},
                "latent_std": torch.tensor(0.5),
            },
        },
        tmp_path / "ae.ckpt",
    )
    unet_config = dict(pipe.unet.config.unet_config)
    torch.save(
        {
            "hyper_parameters": {
                "text_encoder": str(text_dir),
                "unet_config": unet_config,
                "prompt_enhancer_heads": 2,
                "max_layers": 4,
                "beta_schedule": "squaredcos_cap_v2",
                "prediction_type": "v_prediction",
            },
            "state_dict": {
                **{f"unet.{k}": torch.zeros_like(v) for k, v in pipe.unet.state_dict().items()},
                **{f"ema_unet.module.{k}": v for k, v in pipe.unet.state_dict().items()},
                "ema_unet.n_averaged": torch.tensor(3),
            },
        },
        tmp_path / "ldm.ckpt",
    )
    built = LayeredDiffusionPipeline.from_checkpoints(tmp_path / "ae.ckpt", tmp_path / "ldm.ckpt")
    built.set_progress_bar_config(disable=True)
    assert built.autoencoder.config.scaling_factor == 2.0
    built.autoencoder.register_to_config(scaling_factor=pipe.autoencoder.config.scaling_factor)
    assert built.scheduler.config.prediction_type == "v_prediction"
    assert built.scheduler.config.beta_schedule == "squaredcos_cap_v2"
    built.scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config)  # same sampler
    a = run(pipe, prompt=PROMPT, layer_prompts=LAYERS).images[0]
    b = run(built, prompt=PROMPT, layer_prompts=LAYERS).images[0]
    assert torch.equal(a.foregrounds, b.foregrounds)
    with pytest.raises(FileNotFoundError, match="missing.ckpt"):
        LayeredDiffusionPipeline.from_checkpoints(tmp_path / "ae.ckpt", tmp_path / "missing.ckpt")


def test_derive_layer_prompts():
    assert derive_layer_prompts(PROMPT, spacy_model=None) == LAYERS
    assert derive_layer_prompts(
        "a small gray hexagon in the center, a small black circle on the right and a large "
        "brown cross in the top left on a purple noisy background",
        spacy_model=None,
    ) == [
        "a purple noisy background",
        "a small gray hexagon",
        "a small black circle",
        "a large brown cross",
    ]
    assert derive_layer_prompts("a red car and a tree against a blue sky", spacy_model=None) == [
        "a blue sky",
        "a red car",
        "a tree",
    ]
    # a caption naming no background: LayerDiff's fixed background prompt
    assert derive_layer_prompts("a red car and a tree.", spacy_model=None) == [
        BACKGROUND_PROMPT,
        "a red car",
        "a tree",
    ]


def test_spacy_noun_phrases_filter_background_and_positions(monkeypatch):
    """The spaCy path keeps object noun chunks (a stub stands in for an installed model)."""
    from types import SimpleNamespace

    from layergen.phrases import NounPhraseExtractor
    from layergen.pipelines import layer_prompts

    chunks = ["a large red star", "the left", "a small blue circle", "a green plain background"]
    extractor = NounPhraseExtractor(spacy_model=None)
    extractor._nlp = lambda text: SimpleNamespace(
        noun_chunks=[SimpleNamespace(text=c) for c in chunks]
    )
    monkeypatch.setattr(layer_prompts, "_extractor", lambda model: extractor)
    assert derive_layer_prompts(PROMPT, spacy_model="stub") == LAYERS


def test_derived_layer_prompts_are_the_training_layer_prompts():
    """On the synthetic grammar, "auto" recovers exactly the layer prompts scenes train with."""
    scenes = ShapeScenes(size=32, min_foregrounds=1, max_foregrounds=3, split="val", length=300)
    for i in range(len(scenes)):
        scene = scenes.scene(i)
        assert derive_layer_prompts(scene.prompt, spacy_model=None) == scene.layer_prompts
