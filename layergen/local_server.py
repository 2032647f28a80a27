"""A hardened ``http.server`` for layergen's local pages (the labelling server, the web app).

A page's logic is a plain function ``handle(method, path, body)`` returning
``(status, content type, body)`` or ``(status, content type, body, headers)``, which the
tests call without a browser; :func:`make_local_server` serves it over HTTP, one request
at a time, bound to 127.0.0.1 by default (port 0 picks a free port).

What every server made here does:

- it refuses request bodies over ``max_body_bytes`` unread (and a POST without a
  ``Content-Length``), so a client cannot make it read or hold a large body;
- it refuses requests from another web site (an ``Origin`` other than the server's own)
  and, while bound to a loopback address, requests for a host name other than a loopback
  one (DNS rebinding);
- every reply carries :data:`SECURITY_HEADERS` (``nosniff``, a content security policy that
  allows only the page's own scripts, styles and images, no framing) and ``no-store``.

The pages built on it put no data into their HTML: prompts and layer names reach the page
as JSON (:func:`json_bytes`) and are shown with ``textContent``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, HTTPServer
from ipaddress import ip_address
from typing import Any
from urllib.parse import urlparse

logger = logging.getLogger(__name__)

Reply = tuple[int, str, bytes] | tuple[int, str, bytes, dict[str, str]]
Handle = Callable[[str, str, bytes], Reply]

SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self' 'unsafe-inline'; "
        "style-src 'unsafe-inline'; frame-ancestors 'none'"
    ),
}


def json_bytes(value: Any) -> bytes:
    """``value`` as UTF-8 JSON whose ``<``, ``>`` and ``&`` are ``\\u`` escapes.

    The text means the same to a JSON parser; a browser that wrongly sniffed it as HTML
    would still find no tag in it.
    """
    text = json.dumps(value, ensure_ascii=False)
    for char, escape in (("&", "\\u0026"), ("<", "\\u003c"), (">", "\\u003e")):
        text = text.replace(char, escape)
    return text.encode()


def json_reply(status: int, value: Any) -> tuple[int, str, bytes]:
    """A JSON reply (see :func:`json_bytes`)."""
    return status, "application/json", json_bytes(value)


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address, ``[::1]`` or a name) is this machine's loopback."""
    try:
        return ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host == "localhost"


def make_local_server(
    handle: Handle, host: str = "127.0.0.1", port: int = 0, max_body_bytes: int = 64 * 1024
) -> HTTPServer:
    """An ``HTTPServer`` (one request at a time) answering with ``handle``.

    Bound to a loopback address (the default), it answers only requests for a loopback host
    name; bound to another address (on purpose, over a network), any host name.

    Args:
        handle: ``(method, path, body) -> (status, content type, body[, headers])``.
        host: address to bind to.
        port: port to bind to; 0 picks a free one (``server.server_port``).
        max_body_bytes: the largest request body read; larger ones are refused unread.
    """
    local_only = is_loopback(host)

    class Handler(BaseHTTPRequestHandler):
        timeout = 30  # seconds a client may take to send its request

        def _send(
            self, status: int, content_type: str, payload: bytes, headers: dict | None = None
        ) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(payload)))
            self.send_header("Cache-Control", "no-store")
            for name, value in {**SECURITY_HEADERS, **(headers or {})}.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(payload)

        def _refuse(self, status: int, reason: str) -> None:
            self.close_connection = True  # an unread body must not be taken for a request
            self._send(status, "text/plain; charset=utf-8", reason.encode())

        def _reply(self, method: str, body: bytes = b"") -> None:
            host_name = self.headers.get("Host", "")
            origin = self.headers.get("Origin")
            if local_only and not is_loopback(urlparse(f"//{host_name}").hostname or ""):
                self._refuse(HTTPStatus.FORBIDDEN, f"host name {host_name!r} is not this server's")
            elif origin is not None and urlparse(origin).netloc != host_name:
                self._refuse(HTTPStatus.FORBIDDEN, "requests from other web sites are refused")
            else:
                self._send(*handle(method, self.path, body))

        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            self._reply("GET")

        def do_POST(self) -> None:  # noqa: N802
            length = self.headers.get("Content-Length", "")
            if not length.isdigit():
                self._refuse(HTTPStatus.LENGTH_REQUIRED, "a POST needs a Content-Length")
            elif int(length) > max_body_bytes:
                self._refuse(
                    HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"request body over {max_body_bytes} bytes"
                )
            else:
                self._reply("POST", self.rfile.read(int(length)))

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            logger.debug(format, *args)

    return HTTPServer((host, port), Handler)
