"""What ``LayeredDiffusionPipeline.save_pretrained`` adds to diffusers' pipeline folder.

- ``layergen_pipeline.py``, a module that imports the pipeline class, named by
  ``model_index.json`` as ``"_class_name": ["layergen_pipeline", "LayeredDiffusionPipeline"]``.
  diffusers' generic loader looks a plain class name up in the diffusers package only; a
  ``[module, class]`` pair makes it import the class from that module of the folder, so
  ``DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)`` works wherever
  layergen is installed (diffusers asks ``trust_remote_code`` before it runs any code of a
  folder or repository). ``LayeredDiffusionPipeline.from_pretrained`` runs no code of the
  folder: :func:`own_class_config` turns the pair back into the class name.
- ``README.md``, the model card: what the model is, its components, its sampling recipe
  (:mod:`layergen.pipelines.recipe`), how to load it, and benchmark figures when given.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from huggingface_hub import create_repo

from layergen.pipelines.recipe import FAMILY_RECIPES, FAMILY_SOURCES, RECIPE_KEYS, model_family

LOADER_MODULE = "layergen_pipeline"
MODEL_CARD_KEYS = ("description", "figures", "figures_source")
HUB_KWARGS = ("commit_message", "private", "create_pr", "token", "repo_id")


def write_loader_module(directory: str | Path, pipeline_class: type) -> Path:
    """Write ``layergen_pipeline.py`` and name it in ``model_index.json``'s ``_class_name``."""
    directory = Path(directory)
    module = directory / f"{LOADER_MODULE}.py"
    module.write_text(
        f'"""{pipeline_class.__name__} for diffusers\' generic loader (needs layergen '
        'installed)."""\n\n'
        f"from {pipeline_class.__module__} import {pipeline_class.__name__}\n\n"
        f'__all__ = ["{pipeline_class.__name__}"]\n'
    )
    index_path = directory / "model_index.json"
    index = json.loads(index_path.read_text())
    index["_class_name"] = [LOADER_MODULE, pipeline_class.__name__]
    index_path.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return module


def own_class_config(config: dict[str, Any]) -> dict[str, Any]:
    """``model_index.json`` as read by our own class: ``_class_name`` without the loader module."""
    name = config.get("_class_name")
    if isinstance(name, list) and len(name) == 2 and name[0] == LOADER_MODULE:
        config["_class_name"] = name[1]
    return config


def check_model_card_data(data: Mapping[str, Any] | None) -> dict[str, Any]:
    """A copy of ``model_card_data``; ``ValueError`` for unknown keys or a non-mapping figures."""
    data = dict(data or {})
    unknown = sorted(set(data) - set(MODEL_CARD_KEYS))
    if unknown:
        raise ValueError(
            f"model_card_data: unknown keys {unknown}; expected some of {list(MODEL_CARD_KEYS)}"
        )
    if not isinstance(data.get("figures", {}), Mapping):
        raise ValueError("model_card_data.figures: expected a mapping of figure names to values")
    return data


def _figures_table(figures: Mapping[str, Any]) -> str:
    """Flat ``{name: value}`` as a two-column table; the benchmark's ``{group: {name: value}}``
    summary as one row per group (:func:`layergen.metrics.breakdown.markdown_table`)."""
    if figures and all(isinstance(v, Mapping) for v in figures.values()):
        from layergen.metrics.breakdown import markdown_table

        return markdown_table(figures)
    rows = [
        f"| {name} | {value:.4g} |" if isinstance(value, float) else f"| {name} | {value} |"
        for name, value in figures.items()
    ]
    return "\n".join(["| figure | value |", "|---|---|", *rows])


def _parameter_count(module: Any) -> str:
    count = sum(p.numel() for p in module.parameters())
    return f"{count / 1e6:.2f} M" if count >= 1e5 else f"{count:,}"


def model_card(pipe: Any, model_card_data: Mapping[str, Any] | None = None) -> str:
    """The model card (Markdown with Hugging Face metadata) of a layered pipeline.

    Args:
        pipe: a ``LayeredDiffusionPipeline``.
        model_card_data: optional ``description`` (a paragraph), ``figures`` (``{name:
            value}`` or the benchmark's ``{group: {name: value}}`` summary) and
            ``figures_source`` (how they were measured).
    """
    data = check_model_card_data(model_card_data)
    family = model_family(pipe.uses_layer_prompts)
    recipe = pipe.sampling_recipe
    ae, unet, text = pipe.autoencoder, pipe.unet, pipe.text_encoder
    if pipe.fixed_num_layers is not None:
        layers = f"exactly L = {pipe.fixed_num_layers} layers"
    elif unet.config.latent_layout == "folded":
        layers = "any number of layers"
    else:
        layers = f"up to {unet.config.max_layers} layers"
    conditioning = (
        "a global prompt and one prompt per layer (LayerDiff's layer-collaborative UNet)"
        if pipe.uses_layer_prompts
        else "a global prompt (the layer prompts only label the layers)"
    )
    default = FAMILY_RECIPES[family]
    matches = all(recipe[k] == default[k] for k in RECIPE_KEYS)
    lines = [
        "---",
        "library_name: diffusers",
        "pipeline_tag: text-to-image",
        "tags:",
        "- layergen",
        "- layered-image-generation",
        f"- {family}",
        "---",
        "",
        f"# {pipe.__class__.__name__} ({'LayerDiff' if family == 'layerdiff' else 'Text2Layer'} family)",
        "",
        "Text to layered image: a background and foreground layers with visible masks "
        f"(composite: LayerDiff eq. 1), {layers} of {pipe.default_size}x{pipe.default_size} "
        f"pixels by default, conditioned on {conditioning}. Made with layergen.",
        "",
    ]
    if data.get("description"):
        lines += [str(data["description"]), ""]
    lines += [
        "## Components",
        "",
        "| component | class | details |",
        "|---|---|---|",
        f"| autoencoder | `{type(ae).__name__}` | {ae.config.latent_channels} latent channels, "
        f"downsampling {pipe.latent_factor}, {'per-layer' if ae.per_layer else 'joint'} latents, "
        f"scaling factor {ae.config.scaling_factor:.4g}, {_parameter_count(ae)} parameters |",
        f"| unet | `{type(unet).__name__}` | layer blocks {bool(unet.config.layer_blocks)}, latent "
        f"layout {unet.config.latent_layout}, {_parameter_count(unet)} parameters |",
        f"| text_encoder | `{type(text).__name__}` | {text.config.num_hidden_layers} layers of width "
        f"{text.config.hidden_size} |",
        f"| scheduler | `{type(pipe.scheduler).__name__}` | "
        f"{pipe.scheduler.config.num_train_timesteps} training steps, "
        f"{pipe.scheduler.config.get('prediction_type', 'epsilon')} prediction |",
        "",
        "## Sampling recipe",
        "",
        "The defaults of every call that leaves them unset (`model_index.json`):",
        "",
        "| num_inference_steps | guidance_scale | restyle_strength |",
        "|---|---|---|",
        "| " + " | ".join(f"{recipe[k]:g}" for k in RECIPE_KEYS) + " |",
        "",
        (
            f"This is the family's recipe: {FAMILY_SOURCES[family]}."
            if matches
            else f"The family's recipe is {FAMILY_SOURCES[family]}; this pipeline records its own."
        ),
        "",
        "## Usage",
        "",
        "```python",
        "from layergen.pipelines import LayeredDiffusionPipeline",
        "",
        'pipe = LayeredDiffusionPipeline.from_pretrained("path/to/this/folder")',
        'out = pipe("a large red star on the left on a green plain background", output_type="pil")',
        'out.images[0].save("composite.png")  # the composite',
        "for i, layer in enumerate(out.layers[0].to_pil_layers()):  # RGBA, background first",
        '    layer.save(f"layer_{i}.png")',
        "```",
        "",
        "`DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)` loads it too "
        f"(`{LOADER_MODULE}.py` only imports layergen's class). `generate.py` writes PSD, "
        "OpenRaster or PNG layers.",
        "",
        "## Figures",
        "",
    ]
    figures = data.get("figures")
    if figures:
        if data.get("figures_source"):
            lines += [str(data["figures_source"]), ""]
        lines += [_figures_table(figures), ""]
    else:
        lines += ["No figures were recorded with this export.", ""]
    return "\n".join(lines)


def write_model_card(
    pipe: Any, directory: str | Path, model_card_data: Mapping[str, Any] | None = None
) -> Path:
    """Write (or rewrite, e.g. after a benchmark) ``README.md`` in a saved pipeline folder."""
    path = Path(directory) / "README.md"
    path.write_text(model_card(pipe, model_card_data))
    return path


class PretrainedFolderMixin:
    """``save_pretrained`` and loading for :class:`~layergen.pipelines.LayeredDiffusionPipeline`
    (before ``DiffusionPipeline`` in the bases, whose methods it extends)."""

    def save_pretrained(
        self,
        save_directory: str | os.PathLike,
        safe_serialization: bool = True,
        variant: str | None = None,
        max_shard_size: int | str | None = None,
        push_to_hub: bool = False,
        model_card_data: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        """diffusers' ``save_pretrained`` plus ``layergen_pipeline.py`` (for the generic
        ``DiffusionPipeline.from_pretrained``) and the model card ``README.md``.

        Args:
            model_card_data: optional ``description``, ``figures`` (e.g. the benchmark's
                summary) and ``figures_source`` for the model card
                (:func:`layergen.pipelines.saving.model_card`).
            The other arguments are diffusers'; ``push_to_hub`` uploads the whole folder
            (``repo_id``, ``token``, ``private``, ``create_pr``, ``commit_message``).
        """
        data = check_model_card_data(model_card_data)
        hub = {k: kwargs.pop(k) for k in HUB_KWARGS if k in kwargs}
        super().save_pretrained(
            save_directory,
            safe_serialization=safe_serialization,
            variant=variant,
            max_shard_size=max_shard_size,
            **kwargs,
        )
        write_loader_module(save_directory, type(self))
        write_model_card(self, save_directory, data)
        if push_to_hub:
            repo_id = hub.get("repo_id", Path(save_directory).name)
            repo_id = create_repo(
                repo_id, exist_ok=True, private=hub.get("private"), token=hub.get("token")
            ).repo_id
            self._upload_folder(
                save_directory,
                repo_id,
                token=hub.get("token"),
                commit_message=hub.get("commit_message"),
                create_pr=hub.get("create_pr", False),
            )

    @classmethod
    def _dict_from_json_file(cls, json_file: str | os.PathLike) -> dict[str, Any]:
        """``model_index.json`` as this class reads it: loading runs no code of the folder."""
        return own_class_config(super()._dict_from_json_file(json_file))
