"""``ept-fast train``, ``eval``, ``compare`` and ``predict`` as a library: options, data, the one
prediction path, the output folder, the Trainer run, scoring and the reports, one module each."""

from .engine import NonFiniteLossError, train
from .evaluation import score_adapter
from .options import METHOD_DEFAULTS, EvalArguments, TrainArguments
from .prediction import evaluate, predict_rows

__all__ = ["METHOD_DEFAULTS", "EvalArguments", "NonFiniteLossError", "TrainArguments", "evaluate", "predict_rows",
           "score_adapter", "train"]
