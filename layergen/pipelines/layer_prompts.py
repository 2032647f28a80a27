"""Derive layer prompts from a global prompt (LayerDiff section 3.3), for ``layer_prompts="auto"``.

The caption is split into noun phrases and the background phrases are set apart by
:mod:`layergen.phrases` (spaCy when installed, else its rule-based chunker): the same parser
and background-word list that make the layer prompts of synthesised training data.

The background layer's prompt is the caption's background phrase when it has one (``"a
green striped background"``, as the synthetic scenes are captioned), else LayerDiff's
``"the background"`` (3.2.1): with the fixed prompt the background's family and colours
reach its layer only through the global prompt (docs/demo_recipe.md).
"""

from __future__ import annotations

import functools

from layergen.layers import BACKGROUND_PROMPT
from layergen.phrases import BackgroundWordFilter, NounPhraseExtractor

SPACY_MODEL = "en_core_web_sm"


@functools.lru_cache(maxsize=2)
def _extractor(spacy_model: str | None) -> NounPhraseExtractor:
    return NounPhraseExtractor(spacy_model)


def background_phrase(prompt: str, spacy_model: str | None = None) -> str | None:
    """The caption's background phrase, or None when it names no background.

    ``"a red star on the left on a green striped background"`` -> ``"a green striped
    background"``; ``"a red car against a blue sky"`` -> ``"a blue sky"``.
    """
    return BackgroundWordFilter().background_phrase(_extractor(spacy_model)(prompt))


def derive_layer_prompts(prompt: str, spacy_model: str | None = SPACY_MODEL) -> list[str]:
    """Layer prompts for a global prompt: ``[background, phrase_1, ..., phrase_K]``.

    Args:
        prompt: the global caption.
        spacy_model: spaCy pipeline to parse with when installed; None forces the rule-based
            chunker.

    Returns:
        ``K + 1`` lower-case layer prompts: index 0 the caption's background phrase or
        ``BACKGROUND_PROMPT`` when it names none, then the object phrases in caption order
        (first mentioned = back-most; the synthetic grammar lists shapes back to front).
        Repeated objects are kept (two red stars are two layers).

    Raises:
        ValueError: when no foreground phrase can be found (the message names the prompt).
    """
    phrases = _extractor(spacy_model)(prompt)
    background_words = BackgroundWordFilter()
    foregrounds = [p for p in phrases if not background_words.is_background(p)]
    if not foregrounds:
        raise ValueError(
            f"layer_prompts='auto': no foreground noun phrase found in prompt {prompt!r}; "
            "pass layer prompts explicitly"
        )
    background = background_words.background_phrase(phrases) or BACKGROUND_PROMPT
    return [background, *foregrounds]
