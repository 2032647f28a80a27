"""Dataset construction: photographs -> layered images (Text2Layer / LayerDiff modes).

:mod:`.base` holds the stage interface and the record passed between stages,
:mod:`.text2layer` the Text2Layer chain, :mod:`.runner` the resumable Lightning predict job;
backends live in :mod:`.backends`. Importing this package loads no model.
"""

from layergen.synthesis.base import (  # noqa: F401
    SynthesisChain,
    SynthesisRecord,
    SynthesisStage,
    SynthesisStats,
)
