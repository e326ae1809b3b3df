"""``ept-fast train`` and ``ept-fast eval`` as a library: options, data, checkpoints, the loop,
scoring and the reports, one module each (each imports only those before it in this list)."""

from .evaluation import evaluate, score_adapter
from .loop import NonFiniteLossError, train
from .options import METHOD_DEFAULTS, EvalArguments, TrainArguments

__all__ = ["METHOD_DEFAULTS", "EvalArguments", "NonFiniteLossError", "TrainArguments", "evaluate", "score_adapter",
           "train"]
