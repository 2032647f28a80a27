"""The web app: ``python app.py`` serves a local page to generate and edit layered images."""

from layergen.app.document import Document, restack
from layergen.app.session import AppSession, make_app_server

__all__ = ["AppSession", "Document", "make_app_server", "restack"]
