"""Derive layer prompts from a global prompt by noun-phrase parsing (LayerDiff section 3.3).

LayerDiff parses noun phrases from the caption with spaCy and drops background phrases
(appendix A.3: "the lighting", "white background", ...). With an installed spaCy English
model (``en_core_web_sm`` by default) the same is done here; otherwise a rule-based parser
handles captions of the form ``"<phrase> <where>, <phrase> <where> and <phrase> on
<background>"`` (the synthetic-scene grammar and most short captions).

The background layer's prompt is the caption's background phrase when it has one (``"a
green striped background"``, as the synthetic scenes are captioned), else LayerDiff's
``"the background"`` (3.2.1): with the fixed prompt the background's family and colours
reach its layer only through the global prompt (docs/demo_recipe.md).
"""

from __future__ import annotations

import functools
import logging
import re
from typing import Any

from layergen.layers import BACKGROUND_PROMPT

logger = logging.getLogger(__name__)

SPACY_MODEL = "en_core_web_sm"
# Noun phrases that describe the backdrop or the position rather than an object (appendix A.3).
BACKGROUND_WORDS = frozenset(
    {"background", "backdrop", "lighting", "light", "scene", "sky", "floor", "wall", "ground"}
)
POSITION_WORDS = frozenset(
    {"left", "right", "top", "bottom", "center", "centre", "middle", "side", "corner", "front"}
)
_PREPOSITIONS = (
    "on",
    "in",
    "at",
    "near",
    "under",
    "above",
    "below",
    "beside",
    "behind",
    "against",
    "over",
    "next to",
    "in front of",
    "to the",
)
_PREPOSITION_RE = re.compile(r"\s+(?:" + "|".join(_PREPOSITIONS) + r")\s+")
_BACKGROUND_CLAUSE_RE = re.compile(r"\s+(?:on|in front of|against|over|with)\s+(?:a|an|the)\s+")
_LIST_SPLIT_RE = re.compile(r"\s*,\s*(?:and\s+)?|\s+and\s+")


def _is_background_phrase(phrase: str) -> bool:
    words = set(phrase.lower().split())
    return bool(words & BACKGROUND_WORDS) or (
        bool(words & POSITION_WORDS) and len(words - {"the", "a", "an"} - POSITION_WORDS) == 0
    )


def _split_background_clause(text: str) -> tuple[str, str | None]:
    """``(foreground part, background phrase or None)`` of a normalised caption."""
    for match in reversed(list(_BACKGROUND_CLAUSE_RE.finditer(text))):
        if set(text[match.end() :].lower().split()) & BACKGROUND_WORDS:
            article = match.group(0).split()[-1]
            return text[: match.start()], f"{article} {text[match.end():]}"
    return text, None


def background_phrase(prompt: str) -> str | None:
    """The caption's trailing background clause without its preposition, or None.

    ``"a red star on the left on a green striped background"`` -> ``"a green striped
    background"``; ``"a red car against a blue sky"`` -> ``"a blue sky"``.
    """
    return _split_background_clause(" ".join(prompt.strip().rstrip(".").split()))[1]


def rule_based_noun_phrases(prompt: str) -> list[str]:
    """Foreground noun phrases of a caption without a parser.

    Drops a trailing background clause (``"... on a green striped background"``), splits the
    rest on commas and "and", and cuts each part at its first preposition
    (``"a large red star on the left"`` -> ``"a large red star"``).
    """
    text, _ = _split_background_clause(" ".join(prompt.strip().rstrip(".").split()))
    phrases = []
    for part in _LIST_SPLIT_RE.split(text):
        head = _PREPOSITION_RE.split(" " + part.strip() + " ", maxsplit=1)[0].strip()
        if head and not _is_background_phrase(head):
            phrases.append(head)
    return phrases


@functools.lru_cache(maxsize=2)
def _load_spacy(model: str) -> Any | None:
    try:
        import spacy
    except ImportError:
        return None
    try:
        return spacy.load(model)
    except OSError:
        logger.info("spaCy model %r is not installed; using the rule-based parser", model)
        return None


def spacy_noun_phrases(nlp: Any, prompt: str) -> list[str]:
    """Noun chunks of ``prompt`` with background and position phrases removed."""
    return [
        chunk.text for chunk in nlp(prompt).noun_chunks if not _is_background_phrase(chunk.text)
    ]


def derive_layer_prompts(prompt: str, spacy_model: str | None = SPACY_MODEL) -> list[str]:
    """Layer prompts for a global prompt: ``[background, phrase_1, ..., phrase_K]``.

    Args:
        prompt: the global caption.
        spacy_model: spaCy pipeline to parse with when installed; None forces the rule-based
            parser.

    Returns:
        ``K + 1`` layer prompts: index 0 the caption's background phrase
        (:func:`background_phrase`) or ``BACKGROUND_PROMPT`` when it names none, then the
        foregrounds in caption order (first mentioned = back-most; the synthetic grammar
        lists shapes back to front).

    Raises:
        ValueError: when no foreground phrase can be found (the message names the prompt).
    """
    nlp = _load_spacy(spacy_model) if spacy_model else None
    phrases = (
        spacy_noun_phrases(nlp, prompt) if nlp is not None else rule_based_noun_phrases(prompt)
    )
    if not phrases:
        raise ValueError(
            f"layer_prompts='auto': no foreground noun phrase found in prompt {prompt!r}; "
            "pass layer prompts explicitly"
        )
    return [background_phrase(prompt) or BACKGROUND_PROMPT, *phrases]
