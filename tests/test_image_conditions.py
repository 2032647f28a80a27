"""Image conditions of the pipeline (issue 19): decompose a picture, box-guided layers."""

import pytest
import torch
from pipeline_components import SIZE, small_scene, tiny_pipeline

from layergen.models.layered_unet import LayeredUNet
from layergen.pipelines import LayeredDiffusionPipeline
from layergen.pipelines.image_conditions import boxes_to_tensor, image_to_tensor


def conditioned_pipeline(tmp_path, composite=True, boxes=True):
    pipe = tiny_pipeline(tmp_path)
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
