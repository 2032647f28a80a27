"""LayerDiff-mode dataset construction: phrases, overlap rule, depth order, layers, chain."""

from __future__ import annotations

import json
import tarfile
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image
from torch import Tensor

from layergen.data.shapes import ShapeScenes
from layergen.layers import BACKGROUND_PROMPT, chw_to_hwc, to_unit, unit_to_uint8
from layergen.phrases import (
    BackgroundWordFilter,
    NounPhraseExtractor,
    rule_based_noun_phrases,
)
from layergen.synthesis.backends.captioning import (
    SourceCaption,
    TransformersCaptioning,
    build_tiny_captioner,
)
from layergen.synthesis.backends.depth import TransformersDepth, VerticalDepth, build_tiny_depth
from layergen.synthesis.backends.detection import (
    SaliencyComponentDetection,
    TransformersDetection,
    build_tiny_detector,
    build_tiny_grounding_dino,
)
from layergen.synthesis.backends.inpainting import InpaintingBackend, OpenCVInpainting
from layergen.synthesis.backends.saliency import SaliencyBackend
from layergen.synthesis.backends.segmentation import (
    GrabCutSegmentation,
    SamSegmentation,
    build_tiny_sam,
)
from layergen.synthesis.base import SynthesisRecord
from layergen.synthesis.decompose import chain_from_config
from layergen.synthesis.layerdiff import LayerDiffChain
from layergen.synthesis.layering import (
    BackgroundInpaintingStage,
    InpaintSaliencyCheckStage,
    LayeringStage,
    LayerSelectionStage,
    depth_order,
    extract_layers,
    mask_depths,
    saliency_overlap,
)

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "synth" / "layerdiff.yaml"
SIZE = 32


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("tiny_layerdiff")
    return {
        "detection": str(build_tiny_detector(root / "owlv2", SIZE)),
        "sam": str(build_tiny_sam(root / "sam", SIZE)),
        "depth": str(build_tiny_depth(root / "dpt", SIZE)),
        "captioning": str(build_tiny_captioner(root / "blip", SIZE)),
    }


class ConstantSaliency(SaliencyBackend):
    """Test double: the same saliency value everywhere (or a fixed map)."""

    def __init__(self, value: float = 1.0) -> None:
        self.value = value

    def __call__(self, images: Tensor) -> Tensor:
        return torch.full_like(images[:, :1], self.value)


class RecordingInpainting(InpaintingBackend):
    """Test double: fills the hole with 0 and records its text arguments."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[str], list[str] | None]] = []

    def __call__(
        self, images: Tensor, masks: Tensor, prompts: Sequence[str], negative_prompts: Sequence[str] | None = None
    ) -> Tensor:
        self.calls.append((list(prompts), None if negative_prompts is None else list(negative_prompts)))
        return torch.where(masks > 0.5, torch.zeros_like(images), images)


def square(top: int, left: int, side: int, size: int = SIZE) -> Tensor:
    mask = torch.zeros(1, size, size)
    mask[:, top : top + side, left : left + side] = 1.0
    return mask


def record_with_objects(masks: Tensor, phrases: list[str], depth: Tensor, saliency: Tensor) -> SynthesisRecord:
    record = SynthesisRecord(key="k", image=torch.rand(3, SIZE, SIZE) * 2 - 1, caption=" and ".join(phrases))
    record.extras.update(
        object_masks=masks,
        phrases_detected=list(phrases),
        object_scores={"detection_score": torch.linspace(0.5, 0.9, len(phrases))},
        saliency=saliency,
        depth=depth,
    )
    return record


# -- phrases and the background-word filter (appendix A.2) --------------------------------


def test_rule_based_noun_phrases_split_synthetic_caption() -> None:
    caption = "a large red star on the left and a small blue circle on a green and pink striped background"
    assert rule_based_noun_phrases(caption) == [
        "a large red star",
        "the left",
        "a small blue circle",
        "a green and pink striped background",
    ]
    phrases = NounPhraseExtractor(spacy_model=None)("A man sitting on a bench, with a dog.")
    assert phrases == ["a man", "a bench", "a dog"]


def test_background_word_filter_drops_background_phrases() -> None:
    phrases = ["a woman", "the lighting", "white background", "the floor", "a red ball", "the left", "the woman"]
    assert BackgroundWordFilter()(phrases) == ["a woman", "a red ball"]  # "the woman" is a duplicate
    custom = BackgroundWordFilter(words=["red ball"])
    assert custom(["a red ball", "a ball", "the floor"]) == ["a ball", "the floor"]
    assert custom.is_background("the") and not custom.is_background("a blue ball")


# -- saliency overlap (> 10 %) ---------------------------------------------------------------


def test_saliency_overlap_and_selection_drop_non_salient_masks() -> None:
    saliency = square(0, 0, 16)  # top-left quadrant is salient
    inside = square(0, 0, 8)  # fully salient
    floor = torch.zeros(1, SIZE, SIZE)
    floor[:, 16:, :] = 1.0  # the bottom half: no salient pixel
    edge = torch.zeros(1, SIZE, SIZE)
    edge[:, 0:10, 15:25] = 1.0  # 10 of 100 pixels salient: exactly 10 %, dropped
    just = torch.zeros(1, SIZE, SIZE)
    just[:, 0:10, 14:24] = 1.0  # 20 of 100 pixels salient: kept
    masks = torch.stack([inside, floor, edge, just])
    overlap = saliency_overlap(masks, saliency)
    assert torch.allclose(overlap, torch.tensor([1.0, 0.0, 0.1, 0.2]), atol=1e-6)

    names = ["a cup", "the ground", "a lamp", "a vase"]
    record = record_with_objects(masks, names, torch.zeros(1, SIZE, SIZE), saliency)
    LayerSelectionStage(threshold=0.1)([record])
    assert record.kept
    assert record.extras["phrases_detected"] == ["a cup", "a vase"]
    assert torch.equal(record.extras["object_masks"], masks[[0, 3]])
    assert torch.allclose(record.extras["object_scores"]["detection_score"], torch.tensor([0.5, 0.9]))

    lonely = record_with_objects(floor[None], ["the ground"], torch.zeros(1, SIZE, SIZE), saliency)
    LayerSelectionStage(threshold=0.1)([lonely])
    assert lonely.rejection.startswith("no_salient_object")


def test_selection_keeps_the_most_salient_max_foregrounds() -> None:
    saliency = torch.zeros(1, SIZE, SIZE)
    saliency[:, :, :16] = 1.0
    masks = torch.stack([square(0, 14, 4), square(0, 0, 4), square(8, 12, 8)])  # overlaps 0.5, 1.0, 0.5
    record = record_with_objects(masks, ["a", "b", "c"], torch.zeros(1, SIZE, SIZE), saliency)
    LayerSelectionStage(threshold=0.1, max_foregrounds=2)([record])
    assert record.extras["phrases_detected"] == ["a", "b"]  # the two most salient, in input order


# -- depth order (larger = farther goes behind) and visible masks ------------------------------


def test_depth_order_puts_the_deeper_layer_behind() -> None:
    depth = torch.zeros(1, SIZE, SIZE)
    depth[:, :, 16:] = 0.8  # the right half is far
    near, far = square(4, 4, 16), square(4, 12, 16)  # overlapping squares; "far" mostly on the right
    depths = mask_depths(torch.stack([near, far]), depth)
    assert torch.allclose(depths, torch.tensor([0.8 * 4 / 16, 0.8 * 12 / 16]))
    assert depth_order(depths).tolist() == [1, 0]

    saliency = torch.ones(1, SIZE, SIZE)
    record = record_with_objects(torch.stack([near, far]), ["a near box", "a far box"], depth, saliency)
    record.extras["saliency_overlap"] = saliency_overlap(record.extras["object_masks"], saliency)
    LayeringStage(foreground_dilation=5, inpaint_dilation=3)([record])
    assert record.layer_prompts == [BACKGROUND_PROMPT, "a far box", "a near box"]  # back to front
    assert record.scores["layer1/depth"] > record.scores["layer2/depth"]
    assert record.scores["layer1/detection_score"] == pytest.approx(0.9)
    back, front = record.masks
    assert torch.equal(front, near)  # the nearer object keeps the shared pixels
    assert torch.equal(back, far * (1 - near))
    assert (back * front).sum() == 0 and record.masks.sum(0).max() <= 1
    dilated = torch.nn.functional.max_pool2d((near + far).clamp(max=1)[None], 3, 1, 1)[0]
    assert torch.equal(record.inpaint_mask, dilated)


def test_fully_occluded_duplicate_is_dropped() -> None:
    mask = square(8, 8, 8)
    depth = torch.zeros(1, SIZE, SIZE)
    record = record_with_objects(torch.stack([mask, mask]), ["a dog", "a puppy"], depth, torch.ones(1, SIZE, SIZE))
    record.extras["saliency_overlap"] = torch.ones(2)
    LayeringStage()([record])
    assert record.layer_prompts == [BACKGROUND_PROMPT, "a puppy"] and record.masks.shape == (1, 1, SIZE, SIZE)


def test_foregrounds_through_5x5_dilated_mask() -> None:
    image = torch.rand(3, SIZE, SIZE) * 2 - 1
    mask = torch.zeros(1, 1, SIZE, SIZE)
    mask[..., 10, 10] = 1.0
    (foreground,) = extract_layers(image, mask, kernel_size=5)
    window = torch.zeros(SIZE, SIZE, dtype=torch.bool)
    window[8:13, 8:13] = True
    assert torch.equal(foreground[:, window], image[:, window])
    assert torch.all(foreground[:, ~window] == 0)


# -- background inpainting with negatives and the saliency check -------------------------------


def test_inpainting_negative_prompt_carries_foreground_phrases() -> None:
    image = torch.rand(3, SIZE, SIZE) * 2 - 1
    record = SynthesisRecord(key="k", image=image, caption="c")
    record.masks = torch.stack([square(2, 2, 6), square(20, 20, 6)])
    record.inpaint_mask = torch.nn.functional.max_pool2d(record.masks.amax(0)[None], 5, 1, 2)[0]
    record.layer_prompts = [BACKGROUND_PROMPT, "a red star", "a blue circle"]
    backend = RecordingInpainting()
    BackgroundInpaintingStage(backend)([record])
    assert backend.calls == [([""], ["a red star, a blue circle"])]
    assert record.extras["negative_prompt"] == "a red star, a blue circle"
    covered = record.masks.sum(0) > 0
    assert torch.all(record.background[:, covered[0]] == 0)  # inpainted under the masks
    assert torch.equal(record.background[:, ~covered[0]], image[:, ~covered[0]])  # B = I elsewhere


def test_inpaint_saliency_check_rejects_painted_back_objects() -> None:
    def make() -> SynthesisRecord:
        record = SynthesisRecord(key="k", image=torch.zeros(3, SIZE, SIZE))
        record.background = torch.zeros(3, SIZE, SIZE)
        record.inpaint_mask = square(0, 0, 8)
        return record

    clean, painted = make(), make()
    InpaintSaliencyCheckStage(ConstantSaliency(0.1), max_saliency=0.5)([clean])
    InpaintSaliencyCheckStage(ConstantSaliency(0.9), max_saliency=0.5)([painted])
    assert clean.kept and clean.scores["inpaint_saliency"] == pytest.approx(0.1)
    assert painted.rejection.startswith("inpaint_salient")


# -- backends ----------------------------------------------------------------------------------


def test_depth_convention_flips_inverse_depth(tiny_models: dict[str, str]) -> None:
    images = torch.rand(2, 3, SIZE, SIZE) * 2 - 1
    inverse = TransformersDepth(tiny_models["depth"], inverse_depth=True)(images)
    metric = TransformersDepth(tiny_models["depth"], inverse_depth=False)(images)
    assert inverse.shape == (2, 1, SIZE, SIZE) and inverse.min() >= 0 and inverse.max() <= 1
    assert torch.allclose(inverse, 1 - metric, atol=1e-6)
    vertical = VerticalDepth()(images)
    assert vertical[0, 0, 0, 0] == 1 and vertical[0, 0, -1, 0] == 0  # the top is the farthest


def test_tiny_detector_sam_and_captioner(tiny_models: dict[str, str]) -> None:
    images = torch.rand(2, 3, 24, 40) * 2 - 1  # non-square, not the model size
    detections = TransformersDetection(tiny_models["detection"], box_threshold=0.0)(
        images, [["a red star", "a dog"], []], torch.ones(2, 1, 24, 40)
    )
    assert len(detections[0]) >= 1 and detections[1] == []
    assert {d.phrase for d in detections[0]} <= {"a red star", "a dog"}
    for d in detections[0]:
        x0, y0, x1, y1 = d.box
        assert 0 <= x0 <= x1 <= 40 and 0 <= y0 <= y1 <= 24
    boxes = [torch.tensor([[2.0, 3.0, 20.0, 20.0], [10.0, 0.0, 39.0, 23.0]]), torch.zeros(0, 4)]
    (masks, scores), (empty, _) = SamSegmentation(tiny_models["sam"])(images, boxes)
    assert masks.shape == (2, 1, 24, 40) and set(masks.unique().tolist()) <= {0.0, 1.0}
    assert scores.shape == (2,) and empty.shape == (0, 1, 24, 40)
    captioner = TransformersCaptioning(tiny_models["captioning"], prompt=None, max_new_tokens=4, keep_source=True)
    captions = captioner(images, ["a kept caption", ""])
    assert captions[0] == "a kept caption" and isinstance(captions[1], str) and captions[1]


def test_tiny_grounding_dino_labels_map_to_phrases(tmp_path: Path) -> None:
    detector = TransformersDetection(str(build_tiny_grounding_dino(tmp_path / "gdino")), box_threshold=0.0,
                                     text_threshold=0.0)
    assert detector.grounding
    (found,) = detector(torch.rand(1, 3, 24, 40) * 2 - 1, [["a red star", "a dog"]], torch.ones(1, 1, 24, 40))
    assert found and {d.phrase for d in found} <= {"a red star", "a dog"}
    assert len({d.phrase for d in found}) == len(found)  # at most one box per phrase


def test_classical_detection_and_grabcut() -> None:
    saliency = torch.zeros(1, 1, SIZE, SIZE)
    saliency[..., 2:12, 2:12] = 1.0  # big component
    saliency[..., 20:26, 20:26] = 1.0  # small component
    image = torch.full((1, 3, SIZE, SIZE), -1.0)
    image[:, 0, 20:26, 20:26] = 1.0  # red square
    (found,) = SaliencyComponentDetection(min_area=0.01)(image, [["a box"]], saliency)
    assert [d.phrase for d in found] == ["a box", "the red object"]
    assert found[0].box == (2, 2, 12, 12) and found[1].box == (20, 20, 26, 26)
    ((masks, scores),) = GrabCutSegmentation()(image, [torch.tensor([[18.0, 18.0, 28.0, 28.0]])])
    assert masks.shape == (1, 1, SIZE, SIZE) and masks[0, 0, 22, 22] == 1 and masks[0, 0, 5, 5] == 0


# -- the chain end to end ------------------------------------------------------------------------


def check_layered(record: SynthesisRecord) -> None:
    layered = record.to_layered_image().validate()
    assert torch.equal(layered.image, record.image)  # the source photograph, image.png
    assert layered.layer_prompts[0] == BACKGROUND_PROMPT and layered.num_foregrounds <= 4
    masks = layered.masks
    assert set(masks.unique().tolist()) <= {0.0, 1.0}
    assert masks.sum(0).max() <= 1  # disjoint binary visible masks
    outside = record.inpaint_mask[0] == 0
    assert torch.allclose(layered.composite()[:, outside], record.image[:, outside], atol=1e-6)
    assert torch.allclose(layered.composite(), record.image, atol=1e-6)  # B = I where visible
    for i in range(1, layered.num_layers):
        assert f"layer{i}/depth" in layered.metadata["scores"]


def scene_records(count: int = 4) -> list[SynthesisRecord]:
    scenes = ShapeScenes(size=SIZE, min_foregrounds=2, max_foregrounds=2, length=count)
    return [SynthesisRecord(key=f"s{i}", image=scenes[i].composite(), caption=scenes[i].prompt) for i in range(count)]


def test_tiny_model_chain_end_to_end(tiny_models: dict[str, str]) -> None:
    inpainting = RecordingInpainting()
    chain = LayerDiffChain(
        saliency=ConstantSaliency(1.0),
        detection=TransformersDetection(tiny_models["detection"], box_threshold=0.0),
        segmentation=SamSegmentation(tiny_models["sam"]),
        depth=TransformersDepth(tiny_models["depth"]),
        inpainting=inpainting,
        captioning=TransformersCaptioning(tiny_models["captioning"], prompt=None, keep_source=True),
        check_saliency=ConstantSaliency(0.0),
        inpaint_dilation=3,
    )
    records = chain(scene_records())
    kept = [r for r in records if r.kept]
    assert kept, [r.rejection for r in records]
    for record in kept:
        check_layered(record)
        assert set(record.layer_prompts[1:]) <= set(record.extras["phrases"])
        assert not any(word in p for p in record.layer_prompts[1:] for word in ("background", "left", "right"))
    ((prompts, negatives),) = inpainting.calls  # one batch: every kept record, same size
    assert prompts == [""] * len(kept)
    assert negatives == [", ".join(r.layer_prompts[1:]) for r in kept]
    assert set(chain.stats.seconds) >= {"caption", "phrases", "detection", "segmentation", "depth", "inpainting"}


def test_classical_chain_end_to_end() -> None:
    chain = LayerDiffChain.classical(max_foregrounds=3)
    records = chain(scene_records(3))
    kept = [r for r in records if r.kept]
    assert kept, [r.rejection for r in records]
    for record in kept:
        check_layered(record)
    assert all(r.rejection is None or ":" in r.rejection for r in records)


def test_config_runs_through_the_runner(tiny_models: dict[str, str], tmp_path: Path) -> None:
    from layergen.synthesis.cli import synthesize_main

    config = yaml.safe_load(CONFIG.read_text())
    chain = config["model"]["chain"]["init_args"]
    assert chain["overlap_threshold"] == 0.1 and chain["foreground_dilation"] == 5 and chain["inpaint_prompt"] == ""
    chain["captioning"] = {"class_path": "layergen.synthesis.backends.captioning.SourceCaption"}
    chain["detection"]["init_args"] = {"model_name_or_path": tiny_models["detection"], "box_threshold": 0.0}
    chain["segmentation"]["init_args"] = {"model_name_or_path": tiny_models["sam"]}
    chain["depth"]["init_args"]["model_name_or_path"] = tiny_models["depth"]
    chain["inpainting"] = {"class_path": "layergen.synthesis.backends.inpainting.OpenCVInpainting"}
    chain["saliency"]["init_args"] = {"work_size": SIZE, "grabcut_iterations": 0}
    chain["max_inpaint_saliency"] = 1.0
    chain["overlap_threshold"] = 0.0
    images = tmp_path / "images"
    images.mkdir()
    for record in scene_records(3):
        Image.fromarray(unit_to_uint8(chw_to_hwc(to_unit(record.image)))).save(images / f"{record.key}.png")
        (images / f"{record.key}.txt").write_text(record.caption)
    config["trainer"].update(accelerator="cpu", enable_progress_bar=False)
    config["data"].update(inputs=str(images), output_dir=str(tmp_path / "out"), resolution=SIZE, num_workers=0)
    path = tmp_path / "layerdiff.yaml"
    path.write_text(yaml.safe_dump(config))

    assert isinstance(chain_from_config(path), LayerDiffChain)
    summary = synthesize_main(["--config", str(path)])
    assert summary["total"]["samples"] == 3
    with tarfile.open(tmp_path / "out" / "shard-000000.tar") as tar:
        metadata = [json.load(tar.extractfile(m)) for m in tar.getmembers() if m.name.endswith(".json")]
    assert len(metadata) == summary["total"]["kept"] >= 1
    for entry in metadata:
        text = json.dumps(entry)
        assert "layer1/depth" in text and "inpaint_saliency" in text and "layer_selection" in text


def test_source_caption_normalises_whitespace() -> None:
    assert SourceCaption()(torch.zeros(1, 3, 4, 4), ["  a  cat\n"]) == ["a cat"]


def test_opencv_inpainting_accepts_negative_prompts() -> None:
    images = torch.zeros(1, 3, SIZE, SIZE)
    out = OpenCVInpainting()(images, square(0, 0, 4)[None], [""], negative_prompts=["a cat"])
    assert out.shape == images.shape
