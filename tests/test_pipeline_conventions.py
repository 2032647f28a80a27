"""LayeredDiffusionPipeline against diffusers' own expectations of a pipeline.

The checks of diffusers' ``PipelineTesterMixin`` (tests/pipelines/test_pipelines_common.py)
that apply to a layered pipeline, ported to pytest over the tiny components: call
signature, output types, dict vs tuple, save/load (safetensors and pickle), the generic
``DiffusionPipeline.from_pretrained``, batch vs single, ``num_images_per_prompt``,
``prompt_embeds``, callbacks and interrupt, components, CPU offload, dtypes, progress bar.
"""

import inspect
import json

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler, DiffusionPipeline, EulerDiscreteScheduler
from diffusers.callbacks import SDCFGCutoffCallback
from diffusers.utils import dynamic_modules_utils
from pipeline_components import SIZE, small_scene, tiny_pipeline

from layergen.layers import BACKGROUND_PROMPT, LayeredImage
from layergen.pipelines import LayeredDiffusionPipeline, layerdiff_negative_prompts
from layergen.pipelines.outputs import OUTPUT_TYPES
from layergen.pipelines.saving import LOADER_MODULE

PROMPT = "a large red star on the left and a small blue circle on a green plain background"
LAYERS = [BACKGROUND_PROMPT, "a large red star", "a small blue circle"]
LATENT_SHAPE = (3, 4, SIZE // 2, SIZE // 2)  # (L', C, h, w) of LAYERS


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    return tiny_pipeline(tmp_path_factory.mktemp("conventions"))


@pytest.fixture
def fresh(tmp_path):
    """A pipeline of its own, for tests that move, offload or reconfigure it."""
    return tiny_pipeline(tmp_path)


def inputs(seed: int = 0, **kwargs) -> dict:
    """diffusers' ``get_dummy_inputs``: 2 guided steps, numpy output."""
    return {
        "prompt": PROMPT,
        "layer_prompts": LAYERS,
        "num_inference_steps": 2,
        "guidance_scale": 3.0,
        "generator": torch.Generator().manual_seed(seed),
        "output_type": "np",
        **kwargs,
    }


def unet_calls(pipe, monkeypatch) -> list[tuple[int, float]]:
    """Record ``(batch, timestep)`` of every UNet call."""
    calls = []
    forward = pipe.unet.forward

    def spy(sample, timestep, **kwargs):
        calls.append((sample.shape[0], timestep.flatten()[0].item()))
        return forward(sample, timestep, **kwargs)

    monkeypatch.setattr(pipe.unet, "forward", spy)
    return calls


# ----------------------------------------------------------------------------------------
# Signature and outputs
# ----------------------------------------------------------------------------------------


def test_call_signature_has_diffusers_arguments():
    """``test_pipeline_call_signature``: diffusers' optional arguments, all with defaults."""
    parameters = inspect.signature(LayeredDiffusionPipeline.__call__).parameters
    expected = {
        "prompt", "negative_prompt", "height", "width", "num_inference_steps", "timesteps",
        "guidance_scale", "num_images_per_prompt", "eta", "generator", "latents",
        "prompt_embeds", "negative_prompt_embeds", "output_type", "return_dict",
        "callback_on_step_end", "callback_on_step_end_tensor_inputs",
    }  # fmt: skip
    missing = expected - set(parameters)
    assert not missing
    assert all(parameters[name].default is not inspect.Parameter.empty for name in expected)
    assert LayeredDiffusionPipeline._callback_tensor_inputs == [
        "latents", "prompt_embeds", "layer_prompt_embeds",
    ]  # fmt: skip


def test_output_types_are_equivalent(pipe):
    """``test_pt_np_pil_outputs_equivalent``; "images" are the composites, "layers" the layers."""
    outputs = {kind: pipe(**inputs(output_type=kind)) for kind in OUTPUT_TYPES}
    np_images, pt_images = outputs["np"].images, outputs["pt"].images
    assert isinstance(np_images, np.ndarray) and np_images.shape == (1, SIZE, SIZE, 3)
    assert np_images.dtype == np.float32 and 0 <= np_images.min() and np_images.max() <= 1
    assert isinstance(pt_images, torch.Tensor) and pt_images.shape == (1, 3, SIZE, SIZE)
    assert np.abs(pt_images.permute(0, 2, 3, 1).numpy() - np_images).max() < 1e-6
    pil = outputs["pil"].images
    assert len(pil) == 1 and pil[0].mode == "RGB" and pil[0].size == (SIZE, SIZE)
    assert np.abs(np.asarray(pil[0], dtype=np.float64) - (np_images[0] * 255).round()).max() <= 1
    layered = outputs["layered"]
    assert layered.images is layered.layers and isinstance(layered.images[0], LayeredImage)
    for kind in ("pil", "np", "pt"):
        layers = outputs[kind].layers
        assert len(layers) == 1 and torch.equal(layers[0].masks, layered.layers[0].masks)
    composite = (layered.layers[0].composite() + 1) / 2
    assert torch.allclose(pt_images[0], composite.clamp(0, 1), atol=1e-6)
    latent = outputs["latent"]
    assert latent.layers is None and latent.images is latent.latents
    assert latent.images.shape == (1, *LATENT_SHAPE)
    for kind in OUTPUT_TYPES:  # the same sample whatever the output type
        assert torch.equal(outputs[kind].latents, latent.latents)


def test_dict_and_tuple_outputs_are_equivalent(pipe):
    """``test_dict_tuple_outputs_equivalent``: ``return_dict=False`` is ``(images, layers)``."""
    output = pipe(**inputs())
    images, layers = pipe(**inputs(), return_dict=False)
    assert np.abs(output[0] - images).max() < 1e-4
    assert torch.equal(layers[0].foregrounds, output.layers[0].foregrounds)
    latents, no_layers = pipe(**inputs(output_type="latent"), return_dict=False)
    assert no_layers is None and latents.shape == (1, *LATENT_SHAPE)


# ----------------------------------------------------------------------------------------
# Saving and loading
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("safe_serialization", [True, False])
def test_save_load_local(pipe, tmp_path, safe_serialization):
    """``test_save_load_local`` with safetensors and with pickled weights."""
    output = pipe(**inputs()).images
    pipe.save_pretrained(tmp_path / "pipe", safe_serialization=safe_serialization)
    weights = "diffusion_pytorch_model." + ("safetensors" if safe_serialization else "bin")
    for name in ("unet", "autoencoder"):
        assert (tmp_path / "pipe" / name / weights).exists()
    assert (tmp_path / "pipe" / "README.md").exists()
    loaded = LayeredDiffusionPipeline.from_pretrained(tmp_path / "pipe")  # no remote code
    loaded.set_progress_bar_config(disable=True)
    assert set(loaded.components) == set(pipe.components)
    assert np.abs(loaded(**inputs()).images - output).max() < 5e-4


def test_save_load_variant_and_dtype(pipe, tmp_path):
    """``test_serialization_with_variants`` and ``test_save_load_float16`` (bfloat16 on CPU)."""
    pipe.save_pretrained(tmp_path / "pipe", variant="fp16")
    assert (tmp_path / "pipe" / "unet" / "diffusion_pytorch_model.fp16.safetensors").exists()
    loaded = LayeredDiffusionPipeline.from_pretrained(
        tmp_path / "pipe", variant="fp16", dtype=torch.bfloat16
    )
    modules = [loaded.unet, loaded.autoencoder, loaded.text_encoder]
    assert all(m.dtype == torch.bfloat16 for m in modules)
    loaded.set_progress_bar_config(disable=True)
    latents = torch.randn(1, *LATENT_SHAPE, generator=torch.Generator().manual_seed(0))
    reference = pipe(**inputs(latents=latents)).images
    assert np.abs(loaded(**inputs(latents=latents)).images - reference).max() < 5e-2


def test_generic_diffusers_loader(pipe, tmp_path, monkeypatch):
    """``DiffusionPipeline.from_pretrained`` finds our class through the folder's module."""
    monkeypatch.setattr(dynamic_modules_utils, "HF_MODULES_CACHE", str(tmp_path / "modules"))
    pipe.save_pretrained(tmp_path / "pipe")
    index = json.loads((tmp_path / "pipe" / "model_index.json").read_text())
    assert index["_class_name"] == [LOADER_MODULE, "LayeredDiffusionPipeline"]
    assert index["unet"] == ["layergen.pipelines.components", "LayeredUNet"]
    assert index["autoencoder"] == ["layergen.pipelines.components", "PerLayerAutoencoder"]
    assert index["text_encoder"] == ["transformers", "CLIPTextModel"]
    module = (tmp_path / "pipe" / f"{LOADER_MODULE}.py").read_text()
    assert "from layergen.pipelines.layered_diffusion import LayeredDiffusionPipeline" in module
    # diffusers runs a folder's code only when asked to
    with pytest.raises(ValueError, match="trust_remote_code"):
        DiffusionPipeline.from_pretrained(tmp_path / "pipe")
    loaded = DiffusionPipeline.from_pretrained(tmp_path / "pipe", trust_remote_code=True)
    assert type(loaded) is LayeredDiffusionPipeline
    assert loaded.sampling_recipe == pipe.sampling_recipe
    loaded.set_progress_bar_config(disable=True)
    assert np.abs(loaded(**inputs()).images - pipe(**inputs()).images).max() < 5e-4
    # folders saved before the loader module still load with our class
    index["_class_name"] = "LayeredDiffusionPipeline"
    (tmp_path / "pipe" / "model_index.json").write_text(json.dumps(index))
    (tmp_path / "pipe" / f"{LOADER_MODULE}.py").unlink()
    assert type(LayeredDiffusionPipeline.from_pretrained(tmp_path / "pipe")) is type(loaded)


def test_model_card(pipe, tmp_path):
    recipe = {"num_inference_steps": 7, "guidance_scale": 2.5, "restyle_strength": 0.25}
    custom = LayeredDiffusionPipeline(**pipe.components, **recipe)
    summary = {"all": {"num_samples": 8.0, "fd_layers": 1.25}, "3": {"fd_layers": 0.5}}
    custom.save_pretrained(
        tmp_path / "pipe",
        model_card_data={"figures": summary, "figures_source": "python -m layergen.benchmark"},
    )
    card = (tmp_path / "pipe" / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: diffusers\npipeline_tag: text-to-image\n")
    assert "LayerDiff family" in card and "up to 4 layers" in card
    assert "| 7 | 2.5 | 0.25 |" in card and "this pipeline records its own" in card
    assert "`PerLayerAutoencoder`" in card and "v_prediction prediction" in card
    assert "trust_remote_code=True" in card and "python -m layergen.benchmark" in card
    assert "| all | 1.250 | 8 |" in card and "| 3 | 0.500 | n/a |" in card
    pipe.save_pretrained(tmp_path / "plain", model_card_data={"figures": {"fd_layers": 1.5}})
    plain = (tmp_path / "plain" / "README.md").read_text()
    assert "| fd_layers | 1.5 |" in plain and "records its own" in plain  # legacy
    with pytest.raises(ValueError, match="unknown keys \\['score'\\]"):
        pipe.save_pretrained(tmp_path / "bad", model_card_data={"score": 1.0})
    assert not (tmp_path / "bad").exists()


def test_push_to_hub_uploads_the_finished_folder(pipe, tmp_path, monkeypatch):
    """The upload happens after the loader module and the card are written."""
    from types import SimpleNamespace

    import layergen.pipelines.saving as saving

    uploaded = {}

    def upload(self, folder, repo_id, **kwargs):
        index = json.loads((tmp_path / "pipe" / "model_index.json").read_text())
        uploaded.update(folder=folder, repo_id=repo_id, class_name=index["_class_name"])
        uploaded["card"] = (tmp_path / "pipe" / "README.md").exists()

    monkeypatch.setattr(
        saving, "create_repo", lambda repo_id, **kw: SimpleNamespace(repo_id=repo_id)
    )
    monkeypatch.setattr(LayeredDiffusionPipeline, "_upload_folder", upload)
    pipe.save_pretrained(tmp_path / "pipe", push_to_hub=True, repo_id="me/tiny", token="t")
    assert uploaded == {
        "folder": tmp_path / "pipe", "repo_id": "me/tiny",
        "class_name": [LOADER_MODULE, "LayeredDiffusionPipeline"], "card": True,
    }  # fmt: skip


# ----------------------------------------------------------------------------------------
# Batches
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_batch_and_single_are_identical(pipe, eta):
    """``test_inference_batch_single_identical``, also with DDIM's stochastic steps (eta 1)."""
    single = pipe(**inputs(eta=eta))
    prompts = [PROMPT, PROMPT[: len(PROMPT) // 2], 20 * "very long "]
    generators = [torch.Generator().manual_seed(i) for i in range(3)]
    batch = pipe(**inputs(prompt=prompts, generator=generators, eta=eta))
    assert batch.images.shape[0] == 3 and [im.prompt for im in batch.layers] == prompts
    assert np.abs(batch.images[0] - single.images[0]).max() < 1e-4
    with pytest.raises(ValueError, match="list of 2 generators for 3 images"):
        pipe(**inputs(prompt=prompts, generator=generators[:2]))


@pytest.mark.parametrize("batch_size", [2, 3])
def test_batch_consistent(pipe, batch_size):
    output = pipe(**inputs(prompt=[PROMPT] * batch_size))
    assert len(output[0]) == batch_size and len(output.layers) == batch_size


@pytest.mark.parametrize("batch_size", [1, 2])
@pytest.mark.parametrize("num_images_per_prompt", [1, 2])
def test_num_images_per_prompt(pipe, batch_size, num_images_per_prompt):
    """``test_num_images_per_prompt``; each prompt's images are next to each other."""
    prompts = [PROMPT, "a small red star on a blue plain background"][:batch_size]
    output = pipe(**inputs(prompt=prompts, num_images_per_prompt=num_images_per_prompt))
    num_images = batch_size * num_images_per_prompt
    assert output.images.shape == (num_images, SIZE, SIZE, 3)
    assert output.latents.shape == (num_images, *LATENT_SHAPE)
    assert [im.prompt for im in output.layers] == [
        p for p in prompts for _ in range(num_images_per_prompt)
    ]
    if num_images_per_prompt > 1:
        assert not np.allclose(output.images[0], output.images[1])  # their own noise


def test_num_images_per_prompt_equals_repeated_prompts(pipe):
    repeated = pipe(**inputs(prompt=[PROMPT, PROMPT], layer_prompts=[LAYERS, LAYERS]))
    per_prompt = pipe(**inputs(num_images_per_prompt=2))
    assert np.abs(repeated.images - per_prompt.images).max() < 1e-5
    latents = torch.randn(2, *LATENT_SHAPE, generator=torch.Generator().manual_seed(1))
    given = pipe(**inputs(num_images_per_prompt=2, latents=latents))
    assert given.images.shape[0] == 2
    with pytest.raises(ValueError, match="latents: expected shape \\(2, 3, 4, 8, 8\\)"):
        pipe(**inputs(num_images_per_prompt=2, latents=latents[:1]))
    with pytest.raises(ValueError, match="num_images_per_prompt: must be >= 1"):
        pipe(**inputs(num_images_per_prompt=0))


# ----------------------------------------------------------------------------------------
# Embeddings, eta, timesteps
# ----------------------------------------------------------------------------------------


def test_prompt_embeds_match_prompts(pipe):
    """``test_encode_prompt_works_in_isolation``: precomputed embeddings, same images."""
    reference = pipe(**inputs(num_images_per_prompt=2)).images
    global_negative, layer_negatives = layerdiff_negative_prompts(LAYERS)
    embeds = {
        "prompt_embeds": pipe.encode_prompt([PROMPT]),
        "negative_prompt_embeds": pipe.encode_prompt([global_negative]),
        "layer_prompt_embeds": pipe.encode_prompt(LAYERS)[None],  # (1, L, S, D)
        "negative_layer_prompt_embeds": pipe.encode_prompt(layer_negatives)[None],
    }
    everything = pipe(**inputs(prompt=None, layer_prompts=None, num_images_per_prompt=2, **embeds))
    assert np.abs(everything.images - reference).max() < 1e-5
    assert [im.layer_prompts for im in everything.layers] == [["", "", ""]] * 2
    assert [im.prompt for im in everything.layers] == ["", ""]
    # the global prompt as embeddings, the layer prompts (and so the negatives) as text
    global_only = pipe(**inputs(prompt=None, prompt_embeds=embeds["prompt_embeds"]))
    assert np.abs(global_only.images - reference[:1]).max() < 1e-5
    assert global_only.layers[0].layer_prompts == LAYERS


def test_prompt_embeds_errors(pipe, tmp_path):
    embeds = pipe.encode_prompt([PROMPT])
    layer_embeds = pipe.encode_prompt(LAYERS)[None]
    cases = [
        (dict(prompt_embeds=embeds), "exactly one of prompt and prompt_embeds"),
        (dict(prompt=None), "exactly one of prompt and prompt_embeds"),
        (dict(layer_prompt_embeds=layer_embeds), "at most one of layer_prompts"),
        (dict(negative_prompt="x", negative_prompt_embeds=embeds), "at most one of negative"),
        (dict(negative_prompt_embeds=embeds, guidance_scale=1.0), "set guidance_scale > 1"),
        (dict(prompt=None, prompt_embeds=embeds[0]), "prompt_embeds: expected shape \\(B, S, D\\)"),
        (dict(prompt=[PROMPT] * 2, negative_prompt_embeds=embeds), "expected B = 2 leading"),
        (
            dict(prompt=[PROMPT] * 2, layer_prompts=None, layer_prompt_embeds=layer_embeds),
            "layer_prompt_embeds: expected \\(B, L\\) = \\(2, 3\\)",
        ),
        (dict(prompt=None, layer_prompts=None, prompt_embeds=embeds), "cannot be parsed"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            pipe(**inputs(**kwargs))
    # layer_prompt_embeds of the wrong L for the layer prompts' negatives
    with pytest.raises(ValueError, match="negative_layer_prompt_embeds: expected \\(B, L\\)"):
        pipe(**inputs(negative_layer_prompt_embeds=layer_embeds[:, :2]))
    joint = tiny_pipeline(tmp_path, layout="joint")
    with pytest.raises(
        ValueError, match="layer_prompt_embeds: this pipeline conditions on the global"
    ):
        joint(**inputs(layer_prompts=None, layer_prompt_embeds=layer_embeds[:, :2]))
    # a prompt_embeds call needs no text when the layer count is known
    counted = pipe(**inputs(prompt=None, layer_prompts=None, prompt_embeds=embeds, num_layers=2))
    assert counted.layers[0].layer_prompts == [BACKGROUND_PROMPT, ""]


def test_eta_makes_ddim_stochastic(pipe):
    latents = torch.randn(1, *LATENT_SHAPE, generator=torch.Generator().manual_seed(5))

    def run(seed, eta):
        return pipe(**inputs(seed=seed, eta=eta, latents=latents, num_inference_steps=3)).images

    assert np.array_equal(run(0, 0.0), run(1, 0.0))  # eta 0: deterministic DDIM
    assert np.array_equal(run(0, 1.0), run(0, 1.0))
    assert not np.allclose(run(0, 1.0), run(1, 1.0))
    assert not np.allclose(run(0, 1.0), run(0, 0.0))


def test_custom_timesteps(fresh, monkeypatch):
    """diffusers' ``retrieve_timesteps``: custom timesteps where the scheduler takes them."""
    with pytest.raises(ValueError, match="does not support custom timestep schedules"):
        fresh(**inputs(timesteps=[999, 500]))  # DDIM
    fresh.scheduler = DDPMScheduler.from_config(fresh.scheduler.config)
    calls = unet_calls(fresh, monkeypatch)
    output = fresh(**inputs(timesteps=[999, 500, 20], output_type="layered"))
    assert [t for _, t in calls] == [999, 500, 20] and fresh.num_timesteps == 3
    assert output.images[0].metadata["steps"] == 3
    fresh.scheduler = EulerDiscreteScheduler.from_config(fresh.scheduler.config)
    assert fresh(**inputs(eta=0.5)).images.shape == (1, SIZE, SIZE, 3)  # eta: DDIM only


# ----------------------------------------------------------------------------------------
# Callbacks
# ----------------------------------------------------------------------------------------


def test_callback_inputs(pipe):
    """``test_callback_inputs``: the declared tensors, and changes to them take effect."""
    seen = []

    def subset(pipe_, i, t, tensors):
        seen.append(sorted(tensors))
        return tensors

    pipe(**inputs(callback_on_step_end=subset))
    assert seen == [["latents"], ["latents"]]

    shapes = {}

    def everything(pipe_, i, t, tensors):
        assert list(tensors) == pipe_._callback_tensor_inputs
        shapes.update({k: tuple(v.shape) for k, v in tensors.items()})
        return tensors

    pipe(
        **inputs(),
        callback_on_step_end=everything,
        callback_on_step_end_tensor_inputs=pipe._callback_tensor_inputs,
    )
    # the UNet's inputs: negatives first while guiding
    embedding = tuple(pipe.encode_prompt([""]).shape[1:])
    assert shapes == {
        "latents": (1, *LATENT_SHAPE),
        "prompt_embeds": (2, *embedding),
        "layer_prompt_embeds": (2, 3, *embedding),
    }

    def zero_last(pipe_, i, t, tensors):
        if i == pipe_.num_timesteps - 1:
            tensors["latents"] = torch.zeros_like(tensors["latents"])
        return tensors

    output = pipe(**inputs(output_type="latent", callback_on_step_end=zero_last))
    assert output.images.abs().sum() == 0
    with pytest.raises(ValueError, match="\\['noise'\\] are not among"):
        pipe(**inputs(callback_on_step_end=subset, callback_on_step_end_tensor_inputs=["noise"]))


def test_callback_can_change_guidance(pipe, monkeypatch):
    """``test_callback_cfg``, and diffusers' ``SDCFGCutoffCallback`` switching guidance off."""

    def increase_guidance(pipe_, i, t, tensors):
        pipe_._guidance_scale += 1.0
        return tensors

    pipe(**inputs(guidance_scale=2.0, callback_on_step_end=increase_guidance))
    assert pipe.guidance_scale == 2.0 + pipe.num_timesteps
    assert pipe.sampling_recipe["guidance_scale"] == 7.5  # the recipe is untouched
    calls = unet_calls(pipe, monkeypatch)
    cutoff = SDCFGCutoffCallback(cutoff_step_ratio=None, cutoff_step_index=1)
    output = pipe(**inputs(num_inference_steps=4, callback_on_step_end=cutoff))
    assert [batch for batch, _ in calls] == [2, 2, 1, 1]  # guided, then conditional only
    assert not pipe.do_classifier_free_guidance and np.isfinite(output.images).all()


def test_interrupt_stops_early(pipe, monkeypatch):
    """diffusers' ``test_pipeline_interrupt``: the output is the latents of the stop step."""
    calls = unet_calls(pipe, monkeypatch)
    stopped = {}

    def interrupt(pipe_, i, t, tensors):
        if i == 1:
            stopped["latents"] = tensors["latents"].clone()
            pipe_._interrupt = True
        return tensors

    output = pipe(
        **inputs(num_inference_steps=4, output_type="latent", callback_on_step_end=interrupt)
    )
    assert len(calls) == 2 and pipe.interrupt
    assert torch.equal(output.latents, stopped["latents"])
    pipe(**inputs())  # the next call starts afresh
    assert not pipe.interrupt and len(calls) == 4


# ----------------------------------------------------------------------------------------
# Components, hooks, offload, dtypes, progress bar
# ----------------------------------------------------------------------------------------


def test_components_round_trip(pipe):
    """``test_components_function``: the five models; the recipe travels separately."""
    assert set(pipe.components) == {"autoencoder", "unet", "text_encoder", "tokenizer", "scheduler"}
    rebuilt = LayeredDiffusionPipeline(**pipe.components)
    rebuilt.set_progress_bar_config(disable=True)
    assert np.abs(rebuilt(**inputs()).images - pipe(**inputs()).images).max() < 1e-6
    custom = LayeredDiffusionPipeline(**pipe.components, num_inference_steps=3, guidance_scale=2.0)
    again = LayeredDiffusionPipeline(**custom.components, **custom.sampling_recipe)
    assert again.sampling_recipe == custom.sampling_recipe
    assert LayeredDiffusionPipeline.from_pipe(custom).sampling_recipe == custom.sampling_recipe


def test_every_return_path_frees_model_hooks(pipe, monkeypatch):
    frees = []
    monkeypatch.setattr(pipe, "maybe_free_model_hooks", lambda: frees.append(1))
    for kind in OUTPUT_TYPES:
        pipe(**inputs(output_type=kind))
        pipe(**inputs(output_type=kind), return_dict=False)
    assert len(frees) == 2 * len(OUTPUT_TYPES)
    source = small_scene()
    for kind in ("latent", "pil"):
        frees.clear()
        pipe.edit(source, keep=[0], num_inference_steps=1, output_type=kind)
        pipe.restyle(source, layer=1, num_inference_steps=2, strength=0.5, output_type=kind)
        assert len(frees) >= 2
    edited = pipe.edit(source, keep=[0], num_inference_steps=1, output_type="pil")
    assert edited.images[0].size == (SIZE, SIZE) and edited.layers[0].num_layers == 3


def test_model_cpu_offload_matches(fresh):
    """``test_model_cpu_offload_forward_pass`` (and twice) with the CPU as execution device
    (diffusers asks for an accelerator unless ``device`` is given)."""
    reference = fresh(**inputs()).images
    fresh.enable_model_cpu_offload(device="cpu")
    assert len(fresh._all_hooks) == 3
    for _ in range(2):
        assert np.abs(fresh(**inputs()).images - reference).max() < 2e-4
    modules = [fresh.unet, fresh.autoencoder, fresh.text_encoder]
    assert all(next(m.parameters()).device.type == "cpu" for m in modules)


def test_sequential_cpu_offload_matches(fresh):
    """``test_sequential_cpu_offload_forward_pass`` (and twice): every model's weights on
    "meta" between uses, loaded module by module.

    diffusers' ``enable_sequential_cpu_offload`` asks for an accelerator; given the CPU, it
    offloads to ``cpu:0``, where accelerate 1.x fails to restore parameters (plain tensors
    where it expects ``Parameter`` s, in CLIP's embeddings and our modules alike). The
    hooks it installs are installed here with accelerate's ``cpu_offload`` on ``cpu``.
    """
    from accelerate import cpu_offload

    reference = fresh(**inputs()).images
    with pytest.raises(RuntimeError, match="requires accelerator"):
        fresh.enable_sequential_cpu_offload()
    for module in (fresh.text_encoder, fresh.unet, fresh.autoencoder):
        offload_buffers = len(module._parameters) > 0  # as diffusers does
        cpu_offload(module, torch.device("cpu"), offload_buffers=offload_buffers)
    for _ in range(2):
        assert np.abs(fresh(**inputs()).images - reference).max() < 1e-4
    for module in (fresh.unet, fresh.autoencoder, fresh.text_encoder):
        assert {p.device.type for p in module.parameters()} == {"meta"}


@pytest.mark.parametrize("dtype, tolerance", [(torch.float64, 1e-5), (torch.bfloat16, 5e-2)])
def test_to_dtype(fresh, dtype, tolerance):
    """``test_to_dtype`` and ``test_float16_inference`` (bfloat16 runs on the CPU)."""
    latents = torch.randn(1, *LATENT_SHAPE, generator=torch.Generator().manual_seed(0))
    reference = fresh(**inputs(latents=latents)).images
    fresh.to(dtype=dtype)
    modules = [fresh.unet, fresh.autoencoder, fresh.text_encoder]
    assert all(m.dtype == dtype for m in modules)
    output = fresh(**inputs(latents=latents))  # float32 noise: randn differs per dtype
    assert output.latents.dtype == dtype and output.images.dtype == np.float32
    assert np.abs(output.images - reference).max() < tolerance


def test_progress_bar(fresh, capsys):
    """``test_progress_bar``: tqdm on stderr, configured with ``set_progress_bar_config``."""
    fresh.set_progress_bar_config(disable=False, desc="denoising")
    fresh(**inputs(num_inference_steps=3))
    err = capsys.readouterr().err
    assert "denoising" in err and "3/3" in err
    fresh.set_progress_bar_config(disable=True)
    fresh(**inputs(num_inference_steps=3))
    assert capsys.readouterr().err == ""
