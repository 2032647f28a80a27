"""Labelling server: one sample at a time, keys g (good), b (bad), s (skip).

``LabellingSession`` holds the logic (which sample is next, recording answers, rendering)
and answers requests through :meth:`LabellingSession.handle`, a plain function of
``(method, path, body)`` that the tests call without a browser; :func:`make_server` wraps
it in a ``http.server`` bound to 127.0.0.1. Answers are appended to the labels file at
once (:func:`layergen.data.labels.append_label`), so a session can be stopped at any time
and resumed: keys already in the file for this kind are not shown again.

The server serves four fixed routes and no files, so no path reaches outside its data. It
refuses request bodies over ``MAX_BODY_BYTES`` unread, requests from another web site
(an ``Origin`` other than the server's own) and, while bound to a loopback address,
requests for another host name (DNS rebinding): :mod:`layergen.local_server`. The page puts no data into its HTML:
prompts and keys reach it as JSON and are shown with ``textContent``, and every reply
carries ``nosniff`` and a content security policy.
"""

from __future__ import annotations

import html
import io
import json
from collections import Counter
from collections.abc import Iterator, Sequence
from http import HTTPStatus
from http.server import HTTPServer
from urllib.parse import urlparse

import numpy as np
from PIL import Image

from layergen import limits
from layergen.data.labels import KINDS, append_label, assign_split, read_label_lines
from layergen.layers import LayeredImage, LayeredImageError, chw_to_hwc, to_unit, unit_to_uint8
from layergen.local_server import make_local_server

ANSWERS = {"g": 1, "b": 0, "s": None}
MAX_BODY_BYTES = 64 * 1024  # a label answer is a few dozen bytes

GUIDES = {
    "mask": (
        "Is the salient mask good? Press <b>b</b> (bad) if any of these occurs "
        "(Text2Layer sec. III-D):",
        [
            "The object masked out is largely incomplete.",
            "The mask contains regions from the background.",
            "The selected salient object is too small.",
        ],
    ),
    "inpaint": (
        "Is the inpainted background good? Press <b>b</b> (bad) if any of these occurs "
        "(Text2Layer sec. III-D):",
        [
            "There is an object (often the removed foreground, retrieved) in the inpainted region.",
            "There are visual artifacts in the inpainted region.",
            "The inpainted region is not cohesive with the rest of the image.",
        ],
    ),
}

PANEL_TITLES = {
    "mask": "image | mask overlay (red = outside the mask) | cut-out",
    "inpaint": "image | inpainted background | inpainted region outlined",
}


def _uint8(image) -> np.ndarray:
    return unit_to_uint8(chw_to_hwc(to_unit(image.float())))


def render_sample(sample: LayeredImage, kind: str, max_side: int = 384) -> bytes:
    """A PNG of three panels side by side for the labeller (see ``PANEL_TITLES``)."""
    image = _uint8(sample.composite()).astype(np.float32)
    mask = sample.masks.sum(0).clamp(0, 1)[0].numpy()[..., None]
    if kind == "mask":
        red = np.array([255.0, 0.0, 0.0])
        overlay = mask * image + (1 - mask) * (0.45 * image + 0.55 * red)
        checker = ((np.indices(mask.shape[:2]).sum(0) // 8) % 2)[..., None] * 60.0 + 160.0
        panels = [image, overlay, mask * image + (1 - mask) * checker]
    else:
        background = _uint8(sample.background).astype(np.float32)
        region = mask[..., 0] > 0.1
        edge = region ^ _erode(region)
        outlined = background.copy()
        outlined[edge] = [255.0, 0.0, 255.0]
        panels = [image, background, outlined]
    strip = np.concatenate([np.clip(panel, 0, 255).astype(np.uint8) for panel in panels], axis=1)
    picture = Image.fromarray(strip)
    scale = max_side / max(picture.height, picture.width / 3)
    if scale < 1:
        picture = picture.resize(
            (round(picture.width * scale), round(picture.height * scale)), Image.Resampling.LANCZOS
        )
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


def _erode(region: np.ndarray) -> np.ndarray:
    padded = np.pad(region, 1, constant_values=False)
    return (
        padded[1:-1, 1:-1]
        & padded[:-2, 1:-1]
        & padded[2:, 1:-1]
        & padded[1:-1, :-2]
        & padded[1:-1, 2:]
    )


class LabellingSession:
    """Which sample to show next and where its answer goes.

    Args:
        shards: layered shards to label (the unfiltered synthesis output).
        kind: ``"mask"`` or ``"inpaint"``.
        out: the labels file (JSONL), appended to.
        val_fraction: share of keys assigned to the validation split.
        max_side: height of the rendered panels.
    """

    def __init__(
        self,
        shards: str | Sequence[str],
        kind: str,
        out: str,
        val_fraction: float = 0.2,
        max_side: int = 384,
    ) -> None:
        if kind not in KINDS:
            raise ValueError(f"kind: expected one of {KINDS}, got {kind!r}")
        self.shards, self.kind, self.out = shards, kind, out
        self.val_fraction, self.max_side = val_fraction, max_side
        entries = [entry for entry in read_label_lines(out) if entry["kind"] == kind]
        self.done = {entry["key"] for entry in entries}
        codes = {value: code for code, value in ANSWERS.items()}
        self.counts = Counter({code: 0 for code in ANSWERS})
        self.counts.update(codes[entry["label"]] for entry in entries)
        self._samples = self._pending()
        self.current: LayeredImage | None = None
        self._advance()

    def _pending(self) -> Iterator[LayeredImage]:
        from layergen.data.shards import read_shards

        shards = self.shards if isinstance(self.shards, str) else list(self.shards)
        for sample in read_shards(shards, on_error="skip"):
            if sample.metadata.get("key") not in self.done:
                yield sample

    def _advance(self) -> None:
        self.current = next(self._samples, None)

    @property
    def current_key(self) -> str | None:
        """Key of the sample on screen, ``None`` when every sample is labelled."""
        return None if self.current is None else self.current.metadata["key"]

    def state(self) -> dict:
        """What the page shows: key, caption, counts, finished flag."""
        return {
            "key": self.current_key,
            "caption": None if self.current is None else self.current.prompt,
            "kind": self.kind,
            "counts": dict(self.counts),
            "finished": self.current is None,
        }

    def answer(self, key: str, answer: str) -> dict:
        """Record ``answer`` (g/b/s) for ``key``, which must be the sample on screen.

        Raises:
            ValueError: on an unknown answer or a key that is not the current one (e.g.
                a repeated submission), so that nothing is recorded twice.
        """
        if answer not in ANSWERS:
            raise ValueError(f"answer: expected one of {sorted(ANSWERS)}, got {answer!r}")
        if key != self.current_key:
            raise ValueError(f"key {key!r} is not the sample on screen ({self.current_key!r})")
        append_label(
            self.out, key, self.kind, ANSWERS[answer], assign_split(key, self.val_fraction)
        )
        self.done.add(key)
        self.counts[answer] += 1
        self._advance()
        return self.state()

    def page(self) -> str:
        """The HTML page: guide, sample image, key bindings."""
        intro, conditions = GUIDES[self.kind]
        items = "".join(f"<li>{condition}</li>" for condition in conditions)
        return PAGE.format(
            kind=html.escape(self.kind),
            intro=intro,
            items=items,
            panels=html.escape(PANEL_TITLES[self.kind]),
        )

    def handle(self, method: str, path: str, body: bytes = b"") -> tuple[int, str, bytes]:
        """Answer one request: ``(status, content type, body)``.

        Routes: ``GET /`` page, ``GET /state`` JSON, ``GET /sample.png`` the current
        sample, ``POST /label`` with JSON ``{"key", "answer": "g" | "b" | "s"}``.
        """
        route = urlparse(path).path
        if method == "GET" and route == "/":
            return HTTPStatus.OK, "text/html; charset=utf-8", self.page().encode()
        if method == "GET" and route == "/state":
            return HTTPStatus.OK, "application/json", json.dumps(self.state()).encode()
        if method == "GET" and route == "/sample.png":
            if self.current is None:
                return HTTPStatus.NOT_FOUND, "text/plain", b"every sample is labelled"
            return HTTPStatus.OK, "image/png", render_sample(self.current, self.kind, self.max_side)
        if method == "POST" and route == "/label":
            try:
                request = limits.parse_json(body or b"{}", "request")
                state = self.answer(str(request.get("key")), str(request.get("answer")))
            except (LayeredImageError, ValueError, AttributeError) as error:
                return (
                    HTTPStatus.CONFLICT,
                    "application/json",
                    json.dumps({"error": str(error)}).encode(),
                )
            return HTTPStatus.OK, "application/json", json.dumps(state).encode()
        return HTTPStatus.NOT_FOUND, "text/plain", b"not found"


def make_server(session: LabellingSession, host: str = "127.0.0.1", port: int = 8765) -> HTTPServer:
    """An ``HTTPServer`` (one request at a time) serving ``session``; port 0 picks a free one.

    Bound to a loopback address (the default), it answers only requests for a loopback host
    name; bound to another address (labelling over a network), any host name
    (:func:`layergen.local_server.make_local_server`).
    """
    return make_local_server(session.handle, host, port, MAX_BODY_BYTES)


PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>layergen labelling: {kind}</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; background: #fafafa; }}
#sample {{ max-width: 100%; border: 1px solid #ccc; }}
.keys b {{ display: inline-block; min-width: 1.2em; text-align: center; border: 1px solid #888;
          border-radius: 3px; padding: 0 .3em; background: #fff; }}
#status {{ color: #555; }}
</style></head>
<body>
<h2>Quality labelling: {kind}</h2>
<p>{intro}</p><ul>{items}</ul>
<p class="keys">Keys: <b>g</b> good &nbsp; <b>b</b> bad &nbsp; <b>s</b> skip (unsure).
Answers are saved at once; close the page at any time and resume later.</p>
<p id="status"></p>
<p><i>{panels}</i></p>
<p id="caption"></p>
<img id="sample" alt="sample">
<script>
let state = null;
function show(s) {{
  state = s;
  const c = s.counts;
  document.getElementById("status").textContent =
    `good ${{c.g}} · bad ${{c.b}} · skipped ${{c.s}}` + (s.finished ? " · all samples labelled" : ` · key ${{s.key}}`);
  document.getElementById("caption").textContent = s.caption || "";
  const img = document.getElementById("sample");
  if (s.finished) {{ img.removeAttribute("src"); }}
  else {{ img.src = "/sample.png?key=" + encodeURIComponent(s.key); }}
}}
fetch("/state").then(r => r.json()).then(show);
document.addEventListener("keydown", e => {{
  if (!state || state.finished || !["g", "b", "s"].includes(e.key)) return;
  const body = JSON.stringify({{key: state.key, answer: e.key}});
  state = null;
  fetch("/label", {{method: "POST", body}}).then(r => r.json())
    .then(s => s.error ? fetch("/state").then(r => r.json()).then(show) : show(s));
}});
</script>
</body></html>
"""
