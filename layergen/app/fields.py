"""The fields of the web app's JSON requests, each checked with an error naming it."""

from __future__ import annotations

from typing import Any

from layergen import limits
from layergen.layers import LayeredImageError


class RequestError(LayeredImageError):
    """A request the app cannot carry out; the message names the field."""


def parse_request(body: bytes) -> dict[str, Any]:
    """A request body: one JSON object (an empty body is ``{}``)."""
    request = limits.parse_json(body or b"{}", "request")
    if not isinstance(request, dict):
        raise RequestError(f"request: expected a JSON object, got {type(request).__name__}")
    return request


def text(request: dict[str, Any], name: str, default: str | None = None) -> str:
    """A string of at most ``limits.MAX_TEXT_CHARS`` characters; ``default`` when absent."""
    return _string(request.get(name, default), name)


def _string(value: Any, name: str) -> str:
    if value is None:
        raise RequestError(f"{name}: required")
    if not isinstance(value, str):
        raise RequestError(f"{name}: expected a string, got {type(value).__name__}")
    if len(value) > limits.MAX_TEXT_CHARS:
        raise RequestError(f"{name}: over {limits.MAX_TEXT_CHARS} characters")
    return value


def integer(
    request: dict[str, Any], name: str, default: int | None, low: int, high: int
) -> int | None:
    """An integer in ``[low, high]``; ``default`` when absent or null."""
    value = request.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or int(value) != value:
        raise RequestError(f"{name}: expected an integer, got {value!r}")
    if not low <= value <= high:
        raise RequestError(f"{name}: must lie in [{low}, {high}], got {value}")
    return int(value)


def number(
    request: dict[str, Any], name: str, default: float | None, low: float, high: float
) -> float | None:
    """A number in ``[low, high]``; ``default`` when absent or null."""
    value = request.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
        raise RequestError(f"{name}: expected a number, got {value!r}")
    if not low <= value <= high:
        raise RequestError(f"{name}: must lie in [{low}, {high}], got {value}")
    return float(value)


def flag(request: dict[str, Any], name: str) -> bool:
    """A required true / false."""
    value = request.get(name)
    if not isinstance(value, bool):
        raise RequestError(f"{name}: expected true or false, got {value!r}")
    return value


def layer_prompts(request: dict[str, Any], name: str = "layer_prompts") -> list[str] | str | None:
    """``None`` (the pipeline's default), ``"auto"`` (from the prompt) or ``L >= 2`` strings,
    the background's first."""
    value = request.get(name)
    if value is None or value == "auto":
        return value
    if not isinstance(value, list) or not all(isinstance(p, str) for p in value):
        raise RequestError(f'{name}: expected "auto" or a list of strings, got {value!r}')
    if not 2 <= len(value) <= limits.MAX_FOREGROUNDS + 1:
        raise RequestError(
            f"{name}: expected 2 to {limits.MAX_FOREGROUNDS + 1} prompts (the background "
            f"first), got {len(value)}"
        )
    for i, prompt in enumerate(value):
        _string(prompt, f"{name}[{i}]")
    return value


def index_list(request: dict[str, Any], name: str) -> list[int]:
    """A list of integers (layer indices)."""
    value = request.get(name)
    if not isinstance(value, list) or not all(
        isinstance(i, int) and not isinstance(i, bool) for i in value
    ):
        raise RequestError(f"{name}: expected a list of layer indices, got {value!r}")
    if len(value) > limits.MAX_FOREGROUNDS + 1:
        raise RequestError(f"{name}: over {limits.MAX_FOREGROUNDS + 1} layers")
    return value


def box(value: Any, name: str) -> list[float] | None:
    """``null`` or ``[x0, y0, x1, y1]`` in [0, 1] with ``x0 <= x1``, ``y0 <= y1``."""
    if value is None:
        return None
    if (not isinstance(value, list) or len(value) != 4
            or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)):
        raise RequestError(f"{name}: expected null or [x0, y0, x1, y1], got {value!r}")
    x0, y0, x1, y1 = (float(v) for v in value)
    if not (0.0 <= x0 <= x1 <= 1.0 and 0.0 <= y0 <= y1 <= 1.0):
        raise RequestError(f"{name}: expected 0 <= x0 <= x1 <= 1 and 0 <= y0 <= y1 <= 1, got {value!r}")
    return [x0, y0, x1, y1]


def layer_boxes(request: dict[str, Any], name: str = "layer_boxes") -> list[list[float] | None] | None:
    """``None`` (no boxes) or one :func:`box` per layer, the background's first."""
    value = request.get(name)
    if value is None:
        return None
    if not isinstance(value, list) or len(value) > limits.MAX_FOREGROUNDS + 1:
        raise RequestError(f"{name}: expected a list of at most {limits.MAX_FOREGROUNDS + 1} boxes")
    return [box(b, f"{name}[{i}]") for i, b in enumerate(value)]
