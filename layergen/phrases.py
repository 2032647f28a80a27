"""Layer prompts from a caption: noun phrases and the background-word filter.

LayerDiff sec. 3.3 and appendix A.2: the caption (the global prompt) is parsed into noun
phrases with spaCy; phrases that describe the background rather than an object ("the
lighting", "white background", "the floor", ...) are removed by a manual list; what is
left are the candidate layer prompts handed to the open-vocabulary detector (synthesis) or
to the foreground layers (the pipeline's ``layer_prompts="auto"``). The one parser of the
project: training data and inference derive layer prompts the same way.

spaCy is used when it and a model (``en_core_web_sm`` by default) are installed; otherwise
a rule-based chunker splits the caption at prepositions, conjunctions, common verbs and
punctuation, which is enough for captioning-model and synthetic-scene captions.
"""

from __future__ import annotations

import importlib.util
import logging
import re
from collections.abc import Sequence
from typing import Any

logger = logging.getLogger(__name__)

DETERMINERS = frozenset(
    "a an the this that these those some any each every its his her their our my your one two "
    "three four several many".split()
)

# Words that end a noun phrase in the rule-based chunker: prepositions, conjunctions, verbs and
# adverbs that captioning models and the synthetic-scene grammar produce between phrases.
PHRASE_BREAKERS = frozenset(
    """
    on in at with without of near behind under underneath below above over beside besides
    next to from into onto by for against between among around across along through inside
    outside beneath upon toward towards while where which who that than as like and or but
    nor plus then is are was were be been being am has have had does do did can could will
    would should may might there here it they he she we you i them him sitting standing lying
    laying holding wearing looking walking running flying swimming riding eating drinking
    playing posing smiling waiting parked floating hanging leaning resting carrying shows
    showing features featuring depicts depicting contains containing sits stands lies holds
    wears looks walks runs flies rides eats plays poses very also together up down off out
    """.split()
)

# Adjectives that are joined across "and" / "or" ("a purple and pink background" is one phrase).
COORDINATED_ADJECTIVES = frozenset(
    """
    red orange yellow green blue purple pink brown black white gray grey silver gold golden
    beige dark light bright pale small large big tiny huge tall short long old new young
    """.split()
)

# Appendix A.2: superfluous background descriptions removed before detection. A term matches
# a phrase whose last words (after determiners are removed) are the term.
DEFAULT_BACKGROUND_WORDS = (
    "background",
    "backdrop",
    "lighting",
    "light",
    "floor",
    "ground",
    "wall",
    "walls",
    "sky",
    "ceiling",
    "room",
    "scene",
    "setting",
    "image",
    "photo",
    "photograph",
    "picture",
    "view",
    "shot",
    "close-up",
    "left",
    "right",
    "top",
    "bottom",
    "center",
    "centre",
    "middle",
    "side",
    "corner",
    "edge",
    "foreground",
    "front",
    "back",
    "distance",
    "daylight",
    "sunlight",
    "shadow",
    "shadows",
    "texture",
    "pattern",
    "surface",
    "color",
    "colour",
    "style",
    "field",
    "grass",
    "road",
    "street",
    "horizon",
    "landscape",
    "area",
    "space",
)

# Background terms that name a place in the frame, not the backdrop ("on the left").
POSITION_WORDS = frozenset(
    "left right top bottom center centre middle side corner edge foreground front back "
    "distance".split()
)

_TOKEN = re.compile(r"[a-z0-9]+(?:[-'][a-z0-9]+)*|[^\sa-z0-9]")


def tokenize(text: str) -> list[str]:
    """Lower-case word and punctuation tokens of ``text``."""
    return _TOKEN.findall(text.lower())


def strip_determiners(phrase: str) -> str:
    """``phrase`` without leading determiners ("the red ball" -> "red ball")."""
    words = tokenize(phrase)
    while words and words[0] in DETERMINERS:
        words = words[1:]
    return " ".join(words)


def rule_based_noun_phrases(caption: str) -> list[str]:
    """Noun phrases of ``caption`` by splitting at breaker words and punctuation.

    "a large red star on the left and a small blue circle on a green striped background"
    -> ["a large red star", "the left", "a small blue circle", "a green striped background"].
    "and" / "or" after a colour or size adjective joins ("a black and white dog"); chunks
    made only of determiners are dropped.
    """
    phrases: list[str] = []
    current: list[str] = []
    for token in [*tokenize(caption), "."]:
        if token in ("and", "or") and current and current[-1] in COORDINATED_ADJECTIVES:
            current.append(token)
        elif token in PHRASE_BREAKERS or not token[0].isalnum():
            if any(word not in DETERMINERS for word in current):
                phrases.append(" ".join(current))
            current = []
        else:
            current.append(token)
    return phrases


class NounPhraseExtractor:
    """Noun phrases of a caption with spaCy, or the rule-based chunker when it is missing.

    Args:
        spacy_model: name or path of a spaCy pipeline with a parser (``noun_chunks``). Used
            when spaCy and the model are installed; ``None`` always uses the rule-based
            chunker.
    """

    def __init__(self, spacy_model: str | None = "en_core_web_sm") -> None:
        self.spacy_model = spacy_model
        self._nlp = self._load_spacy(spacy_model)

    @staticmethod
    def _load_spacy(name: str | None) -> Any:
        if name is None or importlib.util.find_spec("spacy") is None:
            return None
        import spacy

        try:
            return spacy.load(name)
        except OSError:
            logger.info("spaCy model %r is not installed; using the rule-based noun phrases", name)
            return None

    @property
    def backend(self) -> str:
        """``"spacy:<model>"`` or ``"rules"``."""
        return f"spacy:{self.spacy_model}" if self._nlp is not None else "rules"

    def __call__(self, caption: str) -> list[str]:
        """Noun phrases of ``caption`` in order of appearance, lower-case."""
        if self._nlp is None:
            return rule_based_noun_phrases(caption)
        return [chunk.text.lower() for chunk in self._nlp(caption).noun_chunks]


class BackgroundWordFilter:
    """Drops phrases that describe the background (LayerDiff appendix A.2).

    A phrase is dropped when, after its determiners are removed, it ends with one of the
    terms ("white background" ends with "background", "the lighting" with "lighting"), or
    nothing is left. Duplicates (same words after determiners) keep their first occurrence.

    Args:
        words: background terms, one or more words each.
    """

    def __init__(self, words: Sequence[str] = DEFAULT_BACKGROUND_WORDS) -> None:
        self.words = [" ".join(tokenize(word)) for word in words]
        self._terms = [tuple(tokenize(word)) for word in words if tokenize(word)]

    def is_background(self, phrase: str) -> bool:
        """Whether ``phrase`` names the background."""
        words = tuple(strip_determiners(phrase).split())
        if not words:
            return True
        return any(words[-len(term) :] == term for term in self._terms)

    def __call__(self, phrases: Sequence[str]) -> list[str]:
        """The phrases that name objects, in order, without duplicates."""
        kept: list[str] = []
        seen: set[str] = set()
        for phrase in phrases:
            core = strip_determiners(phrase)
            if self.is_background(phrase) or core in seen:
                continue
            seen.add(core)
            kept.append(phrase)
        return kept

    def background_phrase(self, phrases: Sequence[str]) -> str | None:
        """The last phrase that describes the backdrop itself, or None.

        A background phrase that names a place ("the left", "the top right corner") is
        skipped: ``["a red star", "the left", "a green striped background"]`` -> ``"a green
        striped background"``; ``["a red car", "a blue sky"]`` -> ``"a blue sky"``.
        """
        for phrase in reversed(phrases):
            words = strip_determiners(phrase).split()
            if words and words[-1] not in POSITION_WORDS and self.is_background(phrase):
                return phrase
        return None
