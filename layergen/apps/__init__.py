"""Applications: the logic behind the entry points (``demo.py``, ``evaluate.py``,
``generate.py``, ``python -m layergen.apps.cache_latents``); library packages never import it."""
