"""Each family's sampling recipe is its pipeline's default (model_index.json), explicit
arguments win, pipelines saved without a recipe fall back to 50 steps / guidance 7.5, and
real foregrounds with empty prompts get "the background" as their negative."""

import json
import runpy
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from diffusers import DDPMScheduler
from lightning.pytorch.utilities import AttributeDict
from pipeline_components import SIZE, tiny_pipeline

import evaluate
from layergen.benchmark import cli as benchmark_cli
from layergen.layers import BACKGROUND_PROMPT, LayeredImage
from layergen.lit.diffusion import LayeredDiffusionModule
from layergen.pipelines import (
    FAMILY_RECIPES,
    LEGACY_RECIPE,
    LayeredDiffusionPipeline,
    family_recipe,
    layerdiff_negative_prompts,
)
from layergen.pipelines.checkpoints import pipeline_from_checkpoints

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "a large red star on the left on a blue plain background"
LAYERS = [BACKGROUND_PROMPT, "a large red star"]
RECIPE = {"num_inference_steps": 4, "guidance_scale": 2.0, "restyle_strength": 0.25}


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return tiny_pipeline(tmp_path_factory.mktemp("recipe"))


def with_recipe(pipe, **recipe) -> LayeredDiffusionPipeline:
    out = LayeredDiffusionPipeline(**pipe.components, **recipe)
    out.set_progress_bar_config(disable=True)
    return out


@pytest.fixture(scope="module")
def saved(base, tmp_path_factory):
    """A tiny pipeline with RECIPE, saved; its text encoder folder for checkpoints."""
    directory = tmp_path_factory.mktemp("saved") / "pipe"
    with_recipe(base, **RECIPE).save_pretrained(directory)
    return directory


def spy_timesteps(pipe, monkeypatch, stop: bool = False) -> list[int]:
    """Record ``scheduler.set_timesteps``' step counts (``stop``: raise right after)."""
    counts = []
    original = pipe.scheduler.set_timesteps

    def spy(num_inference_steps, *args, **kwargs):
        counts.append(num_inference_steps)
        if stop:
            raise InterruptedError
        return original(num_inference_steps, *args, **kwargs)

    monkeypatch.setattr(pipe.scheduler, "set_timesteps", spy)
    return counts


def unet_batches(pipe, monkeypatch) -> list[int]:
    """Record the UNet's batch size per call (2B when guiding)."""
    batches = []
    forward = pipe.unet.forward

    def spy(sample, *args, **kwargs):
        batches.append(sample.shape[0])
        return forward(sample, *args, **kwargs)

    monkeypatch.setattr(pipe.unet, "forward", spy)
    return batches


def test_family_recipes_and_validation():
    assert family_recipe(True) == FAMILY_RECIPES["layerdiff"] == {
        "num_inference_steps": 100, "guidance_scale": 3.0, "restyle_strength": 0.25,
    }  # fmt: skip
    assert family_recipe(False) == FAMILY_RECIPES["text2layer"]
    assert family_recipe(False)["num_inference_steps"] == 50
    assert family_recipe(False)["guidance_scale"] == 7.5
    custom = family_recipe(True, {"guidance_scale": 1})
    assert custom == {**FAMILY_RECIPES["layerdiff"], "guidance_scale": 1.0}
    for bad, match in [({"steps": 3}, "unknown keys"), ({"num_inference_steps": 2.5}, "integer"),
                       ({"guidance_scale": -1}, ">= 0"), ({"restyle_strength": 0}, r"\(0, 1\]")]:
        with pytest.raises(ValueError, match=match):
            family_recipe(True, bad)
        with pytest.raises(ValueError, match=match):  # before loading any model
            LayeredDiffusionModule(autoencoder="missing", text_encoder="missing", sampling=bad)


def test_recipe_saved_in_model_index_and_restored(saved):
    index = json.loads((saved / "model_index.json").read_text())
    assert {k: index[k] for k in RECIPE} == RECIPE
    loaded = LayeredDiffusionPipeline.from_pretrained(saved)
    assert loaded.sampling_recipe == RECIPE
    assert isinstance(loaded.config.guidance_scale, float)


def test_call_uses_the_recipe_and_explicit_arguments_win(base, monkeypatch):
    pipe = with_recipe(base, num_inference_steps=3, guidance_scale=2.0)
    counts, batches = spy_timesteps(pipe, monkeypatch), unet_batches(pipe, monkeypatch)
    image = pipe(PROMPT, layer_prompts=LAYERS).images[0]
    assert counts == [3] and batches == [2] * 3  # guided: negatives and conditions
    assert image.metadata["steps"] == 3 and image.metadata["guidance"] == 2.0
    counts.clear(), batches.clear()
    image = pipe(PROMPT, layer_prompts=LAYERS, num_inference_steps=1, guidance_scale=1.0).images[0]
    assert counts == [1] and batches == [1]
    assert image.metadata["steps"] == 1 and image.metadata["guidance"] == 1.0


def test_edit_and_restyle_use_the_recipe(base, monkeypatch):
    pipe = with_recipe(base, **RECIPE)
    source = LayeredImage(
        background=torch.zeros(3, SIZE, SIZE),
        foregrounds=torch.ones(1, 3, SIZE, SIZE),
        masks=torch.zeros(1, 1, SIZE, SIZE).index_fill_(2, torch.arange(4), 1.0),
        prompt=PROMPT,
        layer_prompts=LAYERS,
    ).validate()
    batches = unet_batches(pipe, monkeypatch)
    edited = pipe.edit(source, keep=[0]).images[0]
    assert len(batches) == 4 and edited.metadata["steps"] == 4
    assert edited.metadata["guidance"] == 2.0
    batches.clear()
    restyled = pipe.restyle(source, layer=1).images[0]
    assert batches == [2]  # the last 25 % of 4 steps, guided
    assert restyled.metadata["edit"] == {"restyle": 1, "strength": 0.25}
    batches.clear()
    restyled = pipe.restyle(
        source, layer=1, strength=1.0, num_inference_steps=2, guidance_scale=1.0
    )
    assert batches == [1, 1] and restyled.images[0].metadata["edit"]["strength"] == 1.0


def test_old_pipeline_folder_falls_back_to_50_steps_and_guidance_7_5(saved, tmp_path, monkeypatch):
    old = tmp_path / "old"
    LayeredDiffusionPipeline.from_pretrained(saved).save_pretrained(old)
    index = json.loads((old / "model_index.json").read_text())
    for key in RECIPE:
        del index[key]
    (old / "model_index.json").write_text(json.dumps(index))
    pipe = LayeredDiffusionPipeline.from_pretrained(old)
    assert pipe.sampling_recipe == LEGACY_RECIPE == {
        "num_inference_steps": 50, "guidance_scale": 7.5, "restyle_strength": 0.5,
    }  # fmt: skip
    counts = spy_timesteps(pipe, monkeypatch, stop=True)
    with pytest.raises(InterruptedError):
        pipe(PROMPT, layer_prompts=LAYERS)
    assert counts == [50]


def test_real_foreground_with_an_empty_prompt_gets_the_background_negative(base, monkeypatch):
    assert layerdiff_negative_prompts([BACKGROUND_PROMPT, "a red star", ""]) == (
        "a red star", ["a red star", BACKGROUND_PROMPT, BACKGROUND_PROMPT],
    )  # fmt: skip
    assert layerdiff_negative_prompts([BACKGROUND_PROMPT, ""], 4) == (
        "", ["", BACKGROUND_PROMPT, "", ""],
    )  # fmt: skip
    texts = []
    encode = base.encode_prompt

    def spy(prompts):
        texts.append(list(prompts))
        return encode(prompts)

    monkeypatch.setattr(base, "encode_prompt", spy)
    # a batch of L = 3 (one empty foreground prompt) and L = 2 (padded to 3)
    layer_prompts = [[BACKGROUND_PROMPT, "", "a red star"], [BACKGROUND_PROMPT, "a red star"]]
    base.prepare_conditions([PROMPT, PROMPT], layer_prompts, None, True, True)
    negatives = texts[0][2 + 2 * 3 + 2 :]  # after the prompts, layer prompts, global negatives
    assert negatives == [
        "a red star", BACKGROUND_PROMPT, BACKGROUND_PROMPT,
        "a red star", BACKGROUND_PROMPT, "",
    ]  # fmt: skip
    texts.clear()
    # num_layers without layer prompts: real foregrounds, all with empty prompts
    base(PROMPT, num_layers=3, num_inference_steps=1, guidance_scale=2.0)
    assert texts[0][-3:] == ["", BACKGROUND_PROMPT, BACKGROUND_PROMPT]


def test_export_and_checkpoints_write_the_family_recipe(base, tmp_path):
    def export(hparams: dict, name: str) -> dict:
        module = SimpleNamespace(
            noise_scheduler=DDPMScheduler(), autoencoder=base.autoencoder,
            inference_unet=base.unet, text_encoder=base.text_encoder, tokenizer=base.tokenizer,
            hparams=AttributeDict(hparams),
        )  # fmt: skip
        LayeredDiffusionModule.export_pretrained(module, tmp_path / name)
        return json.loads((tmp_path / name / "model_index.json").read_text())

    layerdiff = export({"layer_blocks": True}, "layerdiff")
    assert {k: layerdiff[k] for k in RECIPE} == FAMILY_RECIPES["layerdiff"]
    text2layer = export({"layer_blocks": False, "sampling": None}, "text2layer")
    assert {k: text2layer[k] for k in RECIPE} == FAMILY_RECIPES["text2layer"]
    custom = export({"layer_blocks": True, "sampling": {"guidance_scale": 1.0}}, "custom")
    assert custom["guidance_scale"] == 1.0 and custom["num_inference_steps"] == 100
    # from_checkpoints builds the same recipe from the module's hyper-parameters
    text_dir = tmp_path / "text"
    base.text_encoder.save_pretrained(text_dir / "text_encoder")
    base.tokenizer.save_pretrained(text_dir / "tokenizer")
    base.autoencoder.save_pretrained(tmp_path / "ae")
    hparams = {"text_encoder": str(text_dir), "unet_config": dict(base.unet.config.unet_config),
               "prompt_enhancer_heads": 2, "max_layers": 4, "sampling": {"num_inference_steps": 7}}
    state = {f"unet.{k}": v for k, v in base.unet.state_dict().items()}
    torch.save({"hyper_parameters": hparams, "state_dict": state}, tmp_path / "ldm.ckpt")
    built = pipeline_from_checkpoints(
        LayeredDiffusionPipeline, tmp_path / "ae", tmp_path / "ldm.ckpt"
    )
    assert built.sampling_recipe == {**FAMILY_RECIPES["layerdiff"], "num_inference_steps": 7}


def test_shipped_configs_record_their_family_recipe():
    def sampling(name: str) -> dict:
        config = yaml.safe_load((ROOT / "configs" / name).read_text())
        return config["model"]["init_args"]["sampling"]

    assert family_recipe(True, sampling("ldm.yaml")) == FAMILY_RECIPES["layerdiff"]
    assert family_recipe(False, sampling("ldm_text2layer.yaml")) == FAMILY_RECIPES["text2layer"]
    demo = family_recipe(True, sampling("demo/ldm.yaml"))
    assert demo["num_inference_steps"] == 50 and demo["guidance_scale"] == 1.0


def test_cli_defaults_are_the_pipeline_recipe(saved, tmp_path, monkeypatch, capsys):
    generate = runpy.run_path(str(ROOT / "generate.py"))
    args = generate["parse_args"](["--model", "m", "--out", "o.psd", PROMPT])
    assert (args.steps, args.guidance, args.strength) == (None, None, None)
    for parser in (evaluate.build_parser(), benchmark_cli.build_parser()):
        args = parser.parse_args(["--model", "m"])
        assert (args.steps, args.guidance) == (None, None)
        assert " ".join(parser.format_help().split()).count("default: the pipeline's recipe") == 2
    # generate.py without --steps / --guidance samples with the saved recipe
    monkeypatch.setattr(sys, "argv", ["generate.py", "--model", str(saved), PROMPT,
                                      "--layers", "auto", "--out", str(tmp_path / "a.psd")])
    runpy.run_path(str(ROOT / "generate.py"), run_name="__main__")
    manifest = json.loads((tmp_path / "a.json").read_text())
    assert manifest["steps"] == 4 and manifest["guidance"] == 2.0
    # the benchmark resolves its settings from the recipe (generation and scoring stubbed)
    seen = {}

    def fake_generate(pipe, scenes, steps, guidance, seed, batch_size):
        seen.update(steps=steps, guidance=guidance)
        return [], None

    monkeypatch.setattr(benchmark_cli, "generate_for_scenes", fake_generate)
    monkeypatch.setattr(benchmark_cli, "load_or_train_probe", lambda *a: None)
    monkeypatch.setattr(benchmark_cli, "load_or_train_segmenter", lambda *a: None)
    monkeypatch.setattr(benchmark_cli, "score_generated", lambda *a: {})
    bench = ["--model", str(saved), "--num-samples", "1", "--size", "32"]
    result = benchmark_cli.run_benchmark(benchmark_cli.build_parser().parse_args(bench))
    assert seen == {"steps": 4, "guidance": 2.0}
    assert result["setting"]["steps"] == 4 and result["setting"]["guidance"] == 2.0
    args = benchmark_cli.build_parser().parse_args([*bench, "--steps", "1", "--guidance", "1"])
    assert benchmark_cli.run_benchmark(args)["setting"]["steps"] == 1 and seen["guidance"] == 1.0
    # evaluate.py likewise (and its report says so)
    argv = ["--model", str(saved), "--num-samples", "1", "--batch-size", "1", "--no-fid",
            "--no-clip", "--saliency", "none", "--out", str(tmp_path / "eval")]
    assert evaluate.main(argv) == 0
    assert "4 steps, guidance 2.0" in capsys.readouterr().out
