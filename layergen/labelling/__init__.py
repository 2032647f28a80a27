"""A small local web page to label synthesised samples good / bad (Text2Layer sec. III-D)."""

from layergen.labelling.server import GUIDES, LabellingSession, make_server, render_sample

__all__ = ["GUIDES", "LabellingSession", "make_server", "render_sample"]
