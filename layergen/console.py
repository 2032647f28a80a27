"""Console output of layergen's scripts: one line per message, progress lines, no noise.

Only the entry points (``demo.py``, ``train.py``, ``generate.py``, ``evaluate.py``,
``decompose.py``, ``app.py``) call :func:`configure_console`; importing layergen leaves a library user's
logging and warnings filters as they are.

What it fixes: ``import lightning`` adds a handler of its own ("INFO: Seed set to 0") besides
the root handler ("Seed set to 0"), so every Lightning line came twice; Lightning advertises
its cloud services ("💡 Tip: ..."); a few Lightning warnings do not apply to layergen's
training (listed in :data:`IRRELEVANT_WARNINGS`), nor does diffusers' float32 warning with an
empty module list; transformers and diffusers draw loading bars that leave lines of carriage
returns in a log file. Other warnings are kept.
"""

from __future__ import annotations

import logging
import sys
import warnings

LIGHTNING_LOGGERS = ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning",
                     "lightning_fabric")

IRRELEVANT_WARNINGS = (
    # frozen autoencoders and text encoders are in eval mode on purpose
    r"Found \d+ module\(s\) in eval mode",
    # the demo runs LightningCLI(args=...) in-process, under its own command-line arguments
    r"LightningCLI's args parameter is intended",
    # the GAN steps of the autoencoder checkpoint their post-step state on purpose
    r"Using ModelCheckpoint with manual optimization",
    # Lightning's own use of a torch pytree API that torch deprecated
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",
)

ADVERTISEMENT = "💡 Tip:"


class _ConsoleFormatter(logging.Formatter):
    """Plain messages; warnings and errors prefixed with their level."""

    def format(self, record: logging.LogRecord) -> str:
        message = super().format(record)
        if record.levelno >= logging.WARNING:
            return f"{record.levelname.lower()}: {message}"
        return message


def _not_an_advertisement(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith(ADVERTISEMENT)


def _not_an_empty_float32_list(record: logging.LogRecord) -> bool:
    """diffusers warns on every ``ModelMixin.to(dtype)``, even when no module is to stay float32."""
    return "should be kept in float32: []" not in record.getMessage()


def configure_console(quiet: bool = False) -> None:
    """Set up logging and warnings for a layergen script (stderr, one handler).

    Args:
        quiet: also hide Lightning's INFO lines ("Seed set to 0", "GPU available: ...") and
            the loading bars of transformers and diffusers even on a terminal (the demo
            prints its own stage and progress lines). Without it those bars show on a
            terminal only.
    """
    import lightning  # noqa: F401  (its import adds the handler removed below)

    handler = logging.StreamHandler()
    handler.setFormatter(_ConsoleFormatter("%(message)s"))
    handler.addFilter(_not_an_advertisement)
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)
    for name in LIGHTNING_LOGGERS:
        log = logging.getLogger(name)
        log.handlers.clear()
        log.propagate = True
        log.setLevel(logging.WARNING if quiet else logging.INFO)
    for pattern in IRRELEVANT_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    logging.getLogger("diffusers.models.modeling_utils").addFilter(_not_an_empty_float32_list)
    if quiet or not sys.stderr.isatty():
        import diffusers.utils.logging
        import transformers.utils.logging

        diffusers.utils.logging.disable_progress_bar()
        transformers.utils.logging.disable_progress_bar()


def progress_line(name: str, done: int, total: int, elapsed: float, unit: str = "step",
                  first: int = 0) -> str:
    """``"[name] step 30/300 (10 %), 1.2 min elapsed, ETA 10.8 min"``.

    The ETA assumes that the remaining items take as long as the ``done - first`` items of
    the ``elapsed`` seconds did (``first``: items done before the clock started, a resumed run).
    """
    eta = elapsed / max(done - first, 1) * max(total - done, 0)
    return (f"[{name}] {unit} {done}/{total} ({100 * done / max(total, 1):.0f} %), "
            f"{elapsed / 60:.1f} min elapsed, ETA {eta / 60:.1f} min")
