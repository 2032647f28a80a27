"""The LayerDiff-mode stage chain: photographs -> multi-layer images (LayerDiff sec. 3.3,
appendix A.2, Fig. 4).

caption -> noun phrases -> background-word filter -> salient mask -> open-vocabulary
boxes -> masks from the boxes -> keep masks overlapping the salient mask by > 10 % ->
depth map -> depth order, visible masks, foreground images (5x5-dilated masks) ->
background inpainted with the foreground phrases as negative prompt -> saliency check of
the inpainted region.

Every model stage takes a backend (``layergen.synthesis.backends``): real models by hub id
or local path, classical ones that need no weights (:meth:`LayerDiffChain.classical`, used
by ``decompose.py``), tiny random models in the tests. The chain runs in the same runner as
the Text2Layer mode (``synthesize.py --config configs/synth/layerdiff.yaml``);
:mod:`layergen.synthesis.decompose` turns single photographs into layered files with it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from layergen.phrases import (
    DEFAULT_BACKGROUND_WORDS,
    BackgroundWordFilter,
    NounPhraseExtractor,
)
from layergen.synthesis.backends.captioning import CaptioningBackend, SourceCaption
from layergen.synthesis.backends.depth import DepthBackend, VerticalDepth
from layergen.synthesis.backends.detection import DetectionBackend, SaliencyComponentDetection
from layergen.synthesis.backends.inpainting import InpaintingBackend, OpenCVInpainting
from layergen.synthesis.backends.saliency import ContrastSaliency, SaliencyBackend
from layergen.synthesis.backends.segmentation import GrabCutSegmentation, SegmentationBackend
from layergen.synthesis.base import (
    BackendStage,
    SynthesisChain,
    SynthesisRecord,
    SynthesisStage,
    grouped,
)
from layergen.synthesis.layering import (
    FOREGROUND_DILATION,
    OVERLAP_THRESHOLD,
    BackgroundInpaintingStage,
    InpaintSaliencyCheckStage,
    LayeringStage,
    LayerSelectionStage,
)


class CaptionStage(BackendStage):
    """The global prompt: ``record.caption`` replaced by the captioning backend's output."""

    name = "caption"

    def __init__(self, backend: CaptioningBackend) -> None:
        super().__init__(backend)

    def process(self, records: list[SynthesisRecord]) -> None:
        for group in grouped(records):
            captions = self.backend(
                torch.stack([r.image for r in group]), [r.caption for r in group]
            )
            for record, caption in zip(group, captions):
                record.caption = caption


class PhraseStage(SynthesisStage):
    """Candidate layer prompts: noun phrases of the caption minus background words (A.2).

    Fills ``extras["phrases"]`` (at most ``max_phrases``). With ``require_phrases`` a record
    without any phrase is rejected; otherwise it goes on (the classical detector names
    unnamed objects by colour).

    Args:
        extractor: noun-phrase extractor.
        word_filter: background-word filter.
        max_phrases: phrases kept, in caption order.
        require_phrases: reject records without phrases.
    """

    name = "phrases"

    def __init__(
        self,
        extractor: NounPhraseExtractor,
        word_filter: BackgroundWordFilter,
        max_phrases: int = 8,
        require_phrases: bool = True,
    ) -> None:
        self.extractor = extractor
        self.word_filter = word_filter
        self.max_phrases = max_phrases
        self.require_phrases = require_phrases

    def settings(self) -> dict[str, Any]:
        return {
            "noun_phrases": self.extractor.backend,
            "background_words": self.word_filter.words,
            "max_phrases": self.max_phrases,
            "require_phrases": self.require_phrases,
        }

    def process(self, records: list[SynthesisRecord]) -> None:
        for record in records:
            phrases = self.word_filter(self.extractor(record.caption))[: self.max_phrases]
            record.extras["phrases"] = phrases
            if self.require_phrases and not phrases:
                record.reject(f"no_phrases: no object phrase in caption {record.caption!r}")


class SaliencyStage(BackendStage):
    """The salient mask ``s`` ``(1, H, W)`` in [0, 1], stored as ``extras["saliency"]``."""

    name = "saliency"

    def __init__(self, backend: SaliencyBackend) -> None:
        super().__init__(backend)

    def process(self, records: list[SynthesisRecord]) -> None:
        for group in grouped(records):
            for record, mask in zip(group, self.backend(torch.stack([r.image for r in group]))):
                record.extras["saliency"] = mask


class DetectionStage(BackendStage):
    """Boxes for the phrases: ``extras["boxes"]`` ``(N, 4)``, ``extras["phrases_detected"]``
    and ``extras["object_scores"]["detection_score"]``; rejects records without a box."""

    name = "detection"

    def __init__(self, backend: DetectionBackend) -> None:
        super().__init__(backend)

    def process(self, records: list[SynthesisRecord]) -> None:
        for group in grouped(records):
            images = torch.stack([r.image for r in group])
            saliency = torch.stack([r.extras["saliency"] for r in group])
            detections = self.backend(images, [r.extras["phrases"] for r in group], saliency)
            for record, found in zip(group, detections):
                record.extras["boxes"] = torch.tensor(
                    [d.box for d in found], dtype=torch.float32
                ).reshape(-1, 4)
                record.extras["phrases_detected"] = [d.phrase for d in found]
                record.extras["object_scores"] = {
                    "detection_score": torch.tensor([d.score for d in found])
                }
                if not found:
                    record.reject("no_detection: the detector found none of the phrases")


class SegmentationStage(BackendStage):
    """Masks from the boxes: ``extras["object_masks"]`` ``(N, 1, H, W)`` in {0, 1} and
    ``extras["object_scores"]["mask_score"]``."""

    name = "segmentation"

    def __init__(self, backend: SegmentationBackend) -> None:
        super().__init__(backend)

    def process(self, records: list[SynthesisRecord]) -> None:
        for group in grouped(records):
            images = torch.stack([r.image for r in group])
            results = self.backend(images, [r.extras["boxes"] for r in group])
            for record, (masks, scores) in zip(group, results):
                record.extras["object_masks"] = masks
                record.extras["object_scores"]["mask_score"] = scores.float().cpu()


class DepthStage(BackendStage):
    """The depth map ``(1, H, W)`` in [0, 1], larger = farther, as ``extras["depth"]``."""

    name = "depth"

    def __init__(self, backend: DepthBackend) -> None:
        super().__init__(backend)

    def process(self, records: list[SynthesisRecord]) -> None:
        for group in grouped(records):
            for record, depth in zip(group, self.backend(torch.stack([r.image for r in group]))):
                record.extras["depth"] = depth


class LayerDiffChain(SynthesisChain):
    """The LayerDiff-mode stage chain (module docstring), configured by typed arguments.

    Output records have K <= ``max_foregrounds`` layers, layer prompts (background first,
    then back to front), and scores ``layer{i}/depth`` (larger = farther),
    ``layer{i}/saliency_overlap``, ``layer{i}/detection_score``, ``layer{i}/mask_score``
    and ``inpaint_saliency``.

    Args:
        saliency: salient-mask backend (overlap rule).
        detection: open-vocabulary detector.
        segmentation: masks from boxes.
        depth: depth backend.
        inpainting: background inpainting backend.
        captioning: global-prompt backend; ``None`` keeps the source caption.
        check_saliency: saliency backend of the inpainting check; ``None`` reuses
            ``saliency``.
        spacy_model: spaCy model of the noun phrases; ``None`` for the rule-based chunker.
        background_words: terms of the background-word filter; ``None`` for the default list.
        max_phrases: candidate phrases per caption.
        require_phrases: reject captions without object phrases.
        overlap_threshold: minimum saliency overlap of a mask, exclusive (paper: 0.1).
        max_foregrounds: K at most.
        foreground_dilation: dilation kernel of the foreground images (paper: 5).
        inpaint_dilation: dilation kernel of the inpainted region.
        min_layer_area: smallest visible layer, as a fraction of the image.
        inpaint_prompt: prompt of the inpainting model (paper: empty).
        max_inpaint_saliency: largest mean saliency of the inpainted region accepted.
    """

    def __init__(
        self,
        saliency: SaliencyBackend,
        detection: DetectionBackend,
        segmentation: SegmentationBackend,
        depth: DepthBackend,
        inpainting: InpaintingBackend,
        captioning: CaptioningBackend | None = None,
        check_saliency: SaliencyBackend | None = None,
        spacy_model: str | None = "en_core_web_sm",
        background_words: Sequence[str] | None = None,
        max_phrases: int = 8,
        require_phrases: bool = True,
        overlap_threshold: float = OVERLAP_THRESHOLD,
        max_foregrounds: int = 4,
        foreground_dilation: int = FOREGROUND_DILATION,
        inpaint_dilation: int = 15,
        min_layer_area: float = 0.001,
        inpaint_prompt: str = "",
        max_inpaint_saliency: float = 0.5,
    ) -> None:
        words = DEFAULT_BACKGROUND_WORDS if background_words is None else background_words
        stages: list[SynthesisStage] = [
            CaptionStage(captioning or SourceCaption()),
            PhraseStage(
                NounPhraseExtractor(spacy_model),
                BackgroundWordFilter(words),
                max_phrases,
                require_phrases,
            ),
            SaliencyStage(saliency),
            DetectionStage(detection),
            SegmentationStage(segmentation),
            LayerSelectionStage(overlap_threshold, max_foregrounds),
            DepthStage(depth),
            LayeringStage(foreground_dilation, inpaint_dilation, min_layer_area),
            BackgroundInpaintingStage(inpainting, inpaint_prompt),
            InpaintSaliencyCheckStage(check_saliency or saliency, max_inpaint_saliency),
        ]
        super().__init__(stages)

    @classmethod
    def classical(cls, max_foregrounds: int = 4, **kwargs: Any) -> LayerDiffChain:
        """A chain of the classical backends (no weights, any CPU): contrast saliency,
        saliency components as boxes, GrabCut masks, vertical-position depth, OpenCV
        inpainting; phrases optional (unnamed objects are named by colour). Keyword
        arguments override any backend or setting of :class:`LayerDiffChain`."""
        options: dict[str, Any] = {
            "saliency": ContrastSaliency(),
            "detection": SaliencyComponentDetection(max_objects=max_foregrounds),
            "segmentation": GrabCutSegmentation(),
            "depth": VerticalDepth(),
            "inpainting": OpenCVInpainting(),
            "require_phrases": False,
        }
        options.update(kwargs)
        return cls(max_foregrounds=max_foregrounds, **options)
