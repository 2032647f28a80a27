"""Image conditions of the pipeline (issue 19): decompose a picture, box-guided layers."""

import pytest
import torch
from pipeline_components import SIZE, small_scene, tiny_pipeline, tiny_unet_config

from layergen.models.layered_unet import LayeredUNet
from layergen.pipelines import LayeredDiffusionPipeline
from layergen.pipelines.image_conditions import boxes_to_tensor, image_to_tensor


def conditioned_pipeline(tmp_path, composite=True, boxes=True, layout="layers"):
    pipe = tiny_pipeline(tmp_path, layout)
    pipe.unet.save_pretrained(tmp_path / "unet")
    unet = LayeredUNet.from_layered_unet(
        str(tmp_path / "unet"), composite_condition=composite, box_condition=boxes
    ).eval()
    with torch.no_grad():  # a "trained" condition input
        torch.manual_seed(3)
        unet.unet.conv_in.cond_conv.weight.normal_(std=0.5)
    return LayeredDiffusionPipeline(**{**pipe.components, "unet": unet})


def test_decompose_follows_the_picture_and_saves(tmp_path):
    pipe = conditioned_pipeline(tmp_path)
    scene = small_scene(2)
    picture = scene.composite()
    generator = torch.Generator().manual_seed(0)
    out = pipe.decompose(picture, num_layers=3, num_inference_steps=2, generator=generator)
    layered = out.images[0]
    assert layered.num_layers == 3 and layered.size == (SIZE, SIZE)
    # keep_pixels: the layers re-composite to the picture; without it, to what was decoded
    assert (layered.composite() - picture).abs().max() < 0.02
    generator.manual_seed(0)
    decoded = pipe.decompose(picture, num_layers=3, num_inference_steps=2, generator=generator,
                             keep_pixels=False).images[0]
    assert (decoded.composite() - picture).abs().mean() > 0.05
    torch.testing.assert_close(decoded.masks, layered.masks)
    # best of 3: the candidate whose decoded composite is closest to the picture
    generator.manual_seed(0)
    candidates = pipe.decompose(picture, num_layers=3, num_inference_steps=2, generator=generator,
                                keep_pixels=False, num_images_per_prompt=3).images
    errors = [(c.composite() - picture).abs().mean() for c in candidates]
    generator.manual_seed(0)
    best = pipe.decompose(picture, num_layers=3, num_inference_steps=2, generator=generator,
                          keep_pixels=False, num_candidates=3)
    assert len(best.images) == 1 and best.latents.shape[0] == 1
    torch.testing.assert_close(best.images[0].masks, candidates[int(torch.stack(errors).argmin())].masks)
    with pytest.raises(ValueError, match="num_candidates"):
        pipe.decompose(picture, num_candidates=2, num_images_per_prompt=2)
    generator.manual_seed(0)
    pil = pipe.decompose(picture, num_layers=3, num_inference_steps=2, generator=generator,
                         output_type="pil")
    assert pil.images[0].size == (SIZE, SIZE) and pil.layers[0].num_layers == 3
    generator.manual_seed(0)
    # the picture reaches the UNet: another picture, another decomposition
    generator.manual_seed(0)
    other = pipe.decompose(-picture, num_layers=3, num_inference_steps=2, generator=generator)
    assert not torch.allclose(other.images[0].background, layered.background)
    # PIL, LayeredImage and tensor inputs are the same picture
    assert torch.allclose(image_to_tensor(scene), picture[None])
    pil = scene.composite_pil()
    assert torch.allclose(image_to_tensor(pil), picture[None], atol=1 / 127)
    # guided: both halves see the picture (runs, same shapes)
    out = pipe.decompose(pil, prompt=scene.prompt, layer_prompts="auto", num_inference_steps=2,
                         guidance_scale=2.0, generator=generator)
    assert out.images[0].num_layers == len(scene.layer_prompts)
    pipe.save_pretrained(tmp_path / "saved")
    loaded = LayeredDiffusionPipeline.from_pretrained(tmp_path / "saved")
    assert loaded.unet.config.composite_condition and loaded.unet.config.box_condition


def test_stacked_sd_latents_take_both_conditions(tmp_path):
    # LayerDiff's full-scale layout: SD-VAE latents (B, 2L - 1, C, h, w), image + mask pairs
    pipe = conditioned_pipeline(tmp_path, layout="stacked")
    scene = small_scene(2)
    out = pipe.decompose(scene.composite(), num_layers=3, num_inference_steps=2,
                         layer_boxes=[None, (0.0, 0.0, 0.5, 0.5), None],
                         generator=torch.Generator().manual_seed(0))
    assert out.images[0].num_layers == 3 and out.images[0].size == (SIZE, SIZE)
    with pytest.raises(ValueError, match="per-layer latent layout"):
        LayeredUNet(unet_config=tiny_unet_config(), layer_blocks=False, prompt_enhancer="none",
                    latent_layout="folded", composite_condition=True)


def test_layer_boxes_reach_the_unet(tmp_path):
    pipe = conditioned_pipeline(tmp_path, composite=False)
    prompts = ["a plain blue background", "a small red circle", "a large green star"]
    generator = torch.Generator().manual_seed(0)
    free = pipe("", layer_prompts=prompts, num_inference_steps=2, generator=generator,
                output_type="latent").images
    generator.manual_seed(0)
    boxed = pipe("", layer_prompts=prompts, num_inference_steps=2, generator=generator,
                 output_type="latent", layer_boxes=[None, (0.0, 0.0, 0.5, 0.5), None]).images
    assert not torch.allclose(free, boxed)
    generator.manual_seed(0)
    nan_rows = pipe("", layer_prompts=prompts, num_inference_steps=2, generator=generator,
                    output_type="latent", layer_boxes=torch.full((3, 4), float("nan"))).images
    torch.testing.assert_close(nan_rows, free)
    with pytest.raises(ValueError, match="not composite-conditioned"):
        pipe.decompose(small_scene(1).composite(), num_inference_steps=2)


def test_boxes_and_images_are_checked():
    boxes = boxes_to_tensor([None, (0.1, 0.2, 0.3, 0.4)], num_images=2, num_layers=3)
    assert boxes.shape == (2, 3, 4) and boxes[:, [0, 2]].isnan().all()
    torch.testing.assert_close(boxes[1, 1], torch.tensor([0.1, 0.2, 0.3, 0.4]))
    with pytest.raises(ValueError, match=r"layer_boxes\[0\]"):
        boxes_to_tensor([(0.1, 0.2)], 1, 2)
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        boxes_to_tensor([(0.5, 0.0, 0.2, 1.0)], 1, 2)
    with pytest.raises(ValueError, match="at most 2 boxes"):
        boxes_to_tensor([None, None, None], 1, 2)
    with pytest.raises(ValueError, match="uint8"):
        image_to_tensor(torch.zeros(4, 4, 3).numpy())


def test_a_plain_pipeline_refuses_an_image(tmp_path):
    pipe = tiny_pipeline(tmp_path)
    with pytest.raises(ValueError, match="not composite-conditioned"):
        pipe("a red circle", image=small_scene(1).composite(), num_inference_steps=1)
    with pytest.raises(ValueError, match="not box-conditioned"):
        pipe("a red circle", layer_boxes=[None, (0, 0, 1, 1)], num_inference_steps=1)


def test_decompose_script_with_a_learned_model(tmp_path, capsys):
    from psd_tools import PSDImage
    from test_decompose import load_script

    conditioned_pipeline(tmp_path).save_pretrained(tmp_path / "model")
    picture = small_scene(2).composite_pil().resize((48, 40))  # another size than the model's
    picture.save(tmp_path / "picture.png")
    out = tmp_path / "picture.psd"
    script = load_script()
    argv = [str(tmp_path / "picture.png"), "--out", str(out), "--model", str(tmp_path / "model"),
            "--num-layers", "3", "--steps", "2"]
    assert script.main(argv) == 0
    psd = PSDImage.open(out)
    assert (psd.width, psd.height) == (48, 40) and len(list(psd)) == 3  # the input's size
    assert f"wrote {out}" in capsys.readouterr().out
    # a text-only model cannot decompose: one clear error, no traceback
    tiny_pipeline(tmp_path).save_pretrained(tmp_path / "text_only")
    argv[argv.index(str(tmp_path / "model"))] = str(tmp_path / "text_only")
    assert script.main(argv) == 1
    assert "not composite-conditioned" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # the classical backends' options do not mix with --model
        script.parse_args(argv + ["--sam-model", "facebook/sam-vit-base"])


def test_generate_script_places_layers_in_boxes(tmp_path, monkeypatch, capsys):
    import json
    import runpy
    import sys

    from test_generate import ROOT

    from layergen.export import load_layered

    conditioned_pipeline(tmp_path, composite=False).save_pretrained(tmp_path / "model")

    def generate(*args):
        monkeypatch.setattr(sys, "argv", ["generate.py", "--model", str(tmp_path / "model"), "--steps", "2",
                                          *map(str, args)])
        runpy.run_path(str(ROOT / "generate.py"), run_name="__main__")

    prompt = "a small red circle and a large green star on a plain blue background"
    generate(prompt, "--layers", "auto", "--out", tmp_path / "free.psd")
    generate(prompt, "--layers", "auto", "--boxes", "none", "0,0,0.5,0.5", "0.5,0.5,1,1",
             "--out", tmp_path / "boxed.psd")
    free, boxed = load_layered(tmp_path / "free.psd"), load_layered(tmp_path / "boxed.psd")
    assert not torch.allclose(free.composite(), boxed.composite())  # the boxes reach the UNet
    manifest = json.loads((tmp_path / "boxed.json").read_text())
    assert manifest["layer_boxes"] == [None, [0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0]]
    # edit: regenerate layer 2 inside a box; the kept layers stay as they were
    generate("--edit", tmp_path / "free.psd", "--keep", 0, 1, "--boxes", "none", "none", "0,0,1,0.5",
             "--out", tmp_path / "edited.ora")
    edited = load_layered(tmp_path / "edited.ora")
    torch.testing.assert_close(edited.background, free.background, atol=2 / 255, rtol=0)
    with pytest.raises(SystemExit) as bad:
        generate(prompt, "--boxes", "0,0,1", "--out", tmp_path / "x.psd")
    assert bad.value.code == 2 and "four numbers" in capsys.readouterr().err


def test_web_app_takes_layer_boxes(tmp_path):
    import json

    from layergen.app import AppSession

    def post(session, route, request):
        status, _, reply = session.handle("POST", route, json.dumps(request).encode())[:3]
        return status, json.loads(reply)

    prompts = ["the background", "a large red star", "a small blue circle"]
    sampling = {"seed": 3, "steps": 2, "guidance": 1.0}
    (tmp_path / "work").mkdir()
    session = AppSession(conditioned_pipeline(tmp_path, composite=False), model_name="boxed",
                         workdir=tmp_path / "work")
    state = json.loads(session.handle("GET", "/state")[2])
    assert state["defaults"]["boxes"] is True
    status, state = post(session, "/generate", {"prompt": "a red star", "layer_prompts": prompts,
                                                "layer_boxes": [None, [0, 0, 0.5, 0.5]], **sampling})
    assert status == 200 and state["document"]["layer_prompts"] == prompts
    before = session.document.image
    status, state = post(session, "/replace", {"layer": 2, "box": [0.5, 0.5, 1, 1], **sampling})
    assert status == 200
    torch.testing.assert_close(session.document.image.background, before.background)
    status, reply = post(session, "/generate", {"prompt": "x", "layer_boxes": [[0.6, 0, 0.5, 1]]})
    assert status == 400 and "layer_boxes[0]" in reply["error"]
    session.close()
    plain = AppSession(tiny_pipeline(tmp_path), model_name="plain", workdir=tmp_path / "work")
    status, reply = post(plain, "/generate", {"prompt": "x", "layer_boxes": [None, [0, 0, 1, 1]]})
    assert status == 400 and "does not take boxes" in reply["error"]
    plain.close()


def test_benchmark_rows_of_a_conditioned_pipeline(tmp_path):
    from layergen.benchmark.decomposition import (
        BoxedDecomposer,
        TextToLayersDecomposer,
        decomposition_benchmark,
        scene_boxes,
    )
    from layergen.data.shapes import ShapeScenes
    from layergen.pipelines.decomposition import PipelineDecomposer

    pipe = conditioned_pipeline(tmp_path)
    scenes = [ShapeScenes(size=32, seed=0, split="test", length=2)[i] for i in range(2)]  # resized
    boxes = scene_boxes(scenes[0])
    assert boxes.shape == (scenes[0].num_layers, 4) and boxes[0].tolist() == [0.0, 0.0, 1.0, 1.0]
    rows = {
        "decompose + boxes": BoxedDecomposer(PipelineDecomposer(pipe, num_inference_steps=2), scenes),
        "text + boxes": TextToLayersDecomposer(pipe, scenes, boxes=True, num_inference_steps=2),
    }
    for decomposer in rows.values():
        row = decomposition_benchmark(decomposer, scenes)["all"]
        assert row["failure_rate"] == 0.0 and row["num_layers_pred"] == sum(s.num_layers for s in scenes) / 2
