"""The web app: generate a layered image, edit its layers, download it.

``AppSession`` holds the pipeline and the document under edit and answers requests through
:meth:`AppSession.handle`, a plain function of ``(method, path, body)`` that the tests
call without a browser; :func:`make_app_server` serves it over HTTP, bound to 127.0.0.1
(:mod:`layergen.local_server`: Host and Origin checks, bodies over ``max_upload_bytes``
refused unread, CSP and ``nosniff`` on every reply).

Routes (all fixed; no path reaches a file)::

    GET  /                      the page (no data in its HTML)
    GET  /state                 JSON: prompt, layer prompts, visibility, size, defaults
    GET  /composite.png         the composite of the visible layers
    GET  /layer/I.png           layer I as straight-alpha RGBA (0 = background)
    GET  /mask/I.png            its visible mask
    GET  /download/NAME         layered.psd, layered.ora, layers.zip (PNG layers)
    POST /generate              {prompt, layer_prompts: "auto" | [...] | null, num_layers,
                                 layer_boxes, seed, steps, guidance}
    POST /replace               {layer, prompt, box, seed, steps, guidance}: layer inpainting
    POST /restyle               {layer, prompt, strength, seed, steps, guidance}
    POST /background            {prompt, seed, steps, guidance}: a new background behind
                                 the shown foregrounds (hidden ones are dropped)
    POST /visibility            {layer, visible}
    POST /order                 {order: [foreground indices, back to front]}
    POST /upload?name=FILE      the bytes of a .psd, .ora or .zip of PNG layers

Replies to POSTs are the new state, or ``{"error": ...}`` naming the field (400). Boxes
(``layer_boxes``: one ``[x0, y0, x1, y1]`` in [0, 1] or null per layer; ``box``: the replaced
layer's) need a box-conditioned model (``state.defaults.boxes``).
"""

from __future__ import annotations

import logging
import re
import shutil
import tempfile
from http import HTTPStatus
from http.server import HTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import torch

from layergen.app import fields
from layergen.app.document import Document
from layergen.app.files import DOWNLOADS, download_bytes, read_upload
from layergen.app.page import PAGE
from layergen.layers import BACKGROUND_PROMPT, LayeredImageError
from layergen.local_server import Reply, json_reply, make_local_server
from layergen.pipelines.layered_diffusion import LayeredDiffusionPipeline

logger = logging.getLogger(__name__)

MAX_UPLOAD_BYTES = 32 << 20
"""The largest request body (an uploaded layered file) the app reads."""
MAX_STEPS = 1000
MAX_SEED = 2**63 - 1
MAX_GUIDANCE = 100.0

PICTURE = re.compile(r"/(layer|mask)/(\d{1,3})\.png")
NOT_FOUND: Reply = (HTTPStatus.NOT_FOUND, "text/plain", b"not found")


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class AppSession:
    """One user's session of the web app: a pipeline and the document under edit.

    Args:
        pipe: any layered diffusion pipeline (``load_pipeline``); editing needs per-layer
            latents and timesteps (the demo model's), else edits answer with the reason.
        model_name: shown on the page and recorded in the downloads' manifests.
        max_upload_bytes: the largest upload accepted.
        workdir: folder for downloads and uploads (default: a temporary one, removed by
            :meth:`close`).
    """

    def __init__(
        self,
        pipe: LayeredDiffusionPipeline,
        model_name: str = "",
        max_upload_bytes: int = MAX_UPLOAD_BYTES,
        workdir: str | Path | None = None,
    ) -> None:
        self.pipe, self.model_name, self.max_upload_bytes = pipe, model_name, max_upload_bytes
        self._own_workdir = workdir is None
        self.workdir = Path(
            tempfile.mkdtemp(prefix="layergen-app-") if workdir is None else workdir
        )
        self.document: Document | None = None
        self.version = 0  # bumped on every change: the page reloads its pictures
        self.last: dict[str, Any] = {}  # the settings of the last generation or edit

    def close(self) -> None:
        """Remove the temporary working folder."""
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    # -- what the page shows --------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """The page's data: the model, sampling defaults and the document (or ``None``)."""
        recipe = self.pipe.sampling_recipe
        state: dict[str, Any] = {
            "model": self.model_name,
            "version": self.version,
            "defaults": {
                "steps": recipe["num_inference_steps"],
                "guidance": recipe["guidance_scale"],
                "strength": recipe["restyle_strength"],
                "size": self.pipe.default_size,
                "boxes": bool(self.pipe.unet.config.get("box_condition", False)),
            },
            "document": None,
            "last": self.last,
        }
        if self.document is not None:
            image = self.document.image
            state["document"] = {
                "prompt": image.prompt,
                "layer_prompts": list(image.layer_prompts),
                "visible": list(self.document.visible),
                "size": list(image.size),
            }
        return state

    def _require_document(self) -> Document:
        if self.document is None:
            raise fields.RequestError("document: generate or upload an image first")
        return self.document

    def _sampling(self, request: dict[str, Any]) -> dict[str, Any]:
        """Seed, steps and guidance of a request (unset: seed 0 and the pipeline's recipe)."""
        return dict(
            seed=fields.integer(request, "seed", 0, 0, MAX_SEED),
            steps=fields.integer(request, "steps", None, 1, MAX_STEPS),
            guidance=fields.number(request, "guidance", None, 0.0, MAX_GUIDANCE),
        )

    def _boxes(self, boxes: Any) -> Any:
        """``boxes`` when the model takes boxes (or none are given); else a RequestError."""
        if boxes is not None and not self.pipe.unet.config.get("box_condition", False):
            raise fields.RequestError("layer_boxes: this model does not take boxes (train one with "
                                      "box_condition: true, docs/decomposition.md)")
        return boxes

    def _changed(self, action: str, settings: dict[str, Any], metadata: dict[str, Any]) -> None:
        self.version += 1
        self.last = {
            "action": action,
            **settings,
            "steps": metadata.get("steps"),
            "guidance": metadata.get("guidance"),
        }

    # -- actions ----------------------------------------------------------------------------

    def generate(self, request: dict[str, Any]) -> None:
        """Text to a new layered image (``LayeredDiffusionPipeline.__call__``)."""
        prompt = fields.text(request, "prompt")
        if not prompt.strip():
            raise fields.RequestError("prompt: empty; describe the picture")
        layer_prompts = fields.layer_prompts(request)
        num_layers = fields.integer(request, "num_layers", None, 2, 65)
        boxes = self._boxes(fields.layer_boxes(request))
        sampling = self._sampling(request)
        image = self.pipe(
            prompt,
            layer_prompts=layer_prompts,
            num_layers=num_layers,
            layer_boxes=boxes,
            num_inference_steps=sampling["steps"],
            guidance_scale=sampling["guidance"],
            generator=_generator(sampling["seed"]),
        ).images[0]
        self.document = Document(image)
        self._changed("generate", {"seed": sampling["seed"]}, image.metadata)

    def replace_layer(self, request: dict[str, Any]) -> None:
        """Regenerate one layer under a new layer prompt, the others kept (layer inpainting,
        ``pipe.edit``); layer 0 is a new background behind every foreground."""
        document = self._require_document()
        layer = document.check_layer(request.get("layer"))
        prompts = list(document.image.layer_prompts)
        prompts[layer] = fields.text(request, "prompt", prompts[layer])
        box = self._boxes(fields.box(request.get("box"), "box"))
        sampling = self._sampling(request)
        keep = [i for i in range(document.num_layers) if i != layer]
        result = self.pipe.edit(
            document.image,
            keep,
            layer_prompts=prompts,
            layer_boxes=None if box is None else [box if i == layer else None for i in range(len(prompts))],
            num_inference_steps=sampling["steps"],
            guidance_scale=sampling["guidance"],
            generator=_generator(sampling["seed"]),
        ).images[0]
        document.replace(result)
        self._changed("replace", {"layer": layer, "seed": sampling["seed"]}, result.metadata)

    def restyle_layer(self, request: dict[str, Any]) -> None:
        """Restyle one layer: partial noise, a new layer prompt (``pipe.restyle``)."""
        document = self._require_document()
        layer = document.check_layer(request.get("layer"))
        prompt = fields.text(request, "prompt", document.image.layer_prompts[layer])
        strength = fields.number(request, "strength", None, 0.0, 1.0)
        if strength == 0.0:
            raise fields.RequestError("strength: must lie in (0, 1]; 0 changes nothing")
        sampling = self._sampling(request)
        result = self.pipe.restyle(
            document.image,
            layer,
            prompt,
            strength=strength,
            num_inference_steps=sampling["steps"],
            guidance_scale=sampling["guidance"],
            generator=_generator(sampling["seed"]),
        ).images[0]
        document.replace(result)
        settings = {"layer": layer, "strength": result.metadata["edit"]["strength"]}
        self._changed("restyle", {**settings, "seed": sampling["seed"]}, result.metadata)

    def new_background(self, request: dict[str, Any]) -> None:
        """A new background behind the shown foregrounds; hidden foregrounds are dropped."""
        document = self._require_document()
        image = document.visible_image()
        prompt = fields.text(request, "prompt", BACKGROUND_PROMPT)
        sampling = self._sampling(request)
        result = self.pipe.edit(
            image,
            list(range(1, image.num_layers)),
            layer_prompts=[prompt, *image.layer_prompts[1:]],
            num_inference_steps=sampling["steps"],
            guidance_scale=sampling["guidance"],
            generator=_generator(sampling["seed"]),
        ).images[0]
        self.document = Document(result)
        self._changed("background", {"seed": sampling["seed"]}, result.metadata)

    def set_visibility(self, request: dict[str, Any]) -> None:
        """Show or hide one foreground."""
        document = self._require_document()
        document.set_visible(request.get("layer"), fields.flag(request, "visible"))
        self.version += 1

    def reorder(self, request: dict[str, Any]) -> None:
        """Restack the foregrounds in the order given (back to front)."""
        self._require_document().reorder(fields.index_list(request, "order"))
        self.version += 1

    def upload(self, body: bytes, name: str) -> None:
        """Open an uploaded ``.psd``, ``.ora`` or ``.zip`` of PNG layers as the document."""
        self.document = Document(read_upload(body, name, self.workdir))
        self.version += 1
        self.last = {"action": "upload"}

    # -- HTTP -----------------------------------------------------------------------------

    def _picture(self, route: str) -> Reply:
        match = PICTURE.fullmatch(route)
        if self.document is None or (match is None and route != "/composite.png"):
            return NOT_FOUND
        try:
            if match is None:
                png = self.document.composite_png()
            else:
                kind, layer = match.group(1), int(match.group(2))
                png = (self.document.layer_png if kind == "layer" else self.document.mask_png)(
                    layer
                )
        except LayeredImageError:  # a layer that is not there, every foreground hidden
            return NOT_FOUND
        return HTTPStatus.OK, "image/png", png

    def _download(self, name: str) -> Reply:
        if name not in DOWNLOADS:
            return NOT_FOUND
        image = self._require_document().visible_image()
        manifest = {
            "model": self.model_name,
            **{k: v for k, v in self.last.items() if v is not None},
        }
        data = download_bytes(image, name, self.workdir, manifest)
        headers = {"Content-Disposition": f'attachment; filename="{name}"'}
        return HTTPStatus.OK, DOWNLOADS[name], data, headers

    def _post(self, route: str, query: str, body: bytes) -> None:
        if route == "/upload":
            if len(body) > self.max_upload_bytes:
                raise _TooLarge(f"upload: over {self.max_upload_bytes} bytes")
            names = parse_qs(query).get("name", [""])
            self.upload(body, fields.text({"name": names[0]}, "name"))
            return
        actions = {
            "/generate": self.generate,
            "/replace": self.replace_layer,
            "/restyle": self.restyle_layer,
            "/background": self.new_background,
            "/visibility": self.set_visibility,
            "/order": self.reorder,
        }
        actions[route](fields.parse_request(body))

    def handle(self, method: str, path: str, body: bytes = b"") -> Reply:
        """Answer one request: ``(status, content type, body[, headers])`` (see the routes
        in the module's docstring)."""
        url = urlparse(path)
        route = url.path
        try:
            if method == "GET" and route == "/":
                return HTTPStatus.OK, "text/html; charset=utf-8", PAGE.encode()
            if method == "GET" and route == "/state":
                return json_reply(HTTPStatus.OK, self.state())
            if method == "GET" and route.startswith("/download/"):
                return self._download(route.removeprefix("/download/"))
            if method == "GET":
                return self._picture(route)
            if method == "POST" and route in POST_ROUTES:
                self._post(route, url.query, body)
                return json_reply(HTTPStatus.OK, self.state())
        except _TooLarge as error:
            return json_reply(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, {"error": str(error)})
        except ValueError as error:  # LayeredImageError, RequestError, the pipeline's checks
            return json_reply(HTTPStatus.BAD_REQUEST, {"error": " ".join(str(error).split())})
        return NOT_FOUND


POST_ROUTES = (
    "/generate",
    "/replace",
    "/restyle",
    "/background",
    "/visibility",
    "/order",
    "/upload",
)


class _TooLarge(ValueError):
    """An upload over ``max_upload_bytes``."""


def make_app_server(session: AppSession, host: str = "127.0.0.1", port: int = 7860) -> HTTPServer:
    """An ``HTTPServer`` (one request at a time) serving ``session``; port 0 picks a free one.

    Bound to a loopback address (the default) it answers only requests for a loopback host
    name; bodies over ``session.max_upload_bytes`` are refused unread.
    """
    return make_local_server(session.handle, host, port, session.max_upload_bytes)
