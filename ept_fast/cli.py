"""The ``ept-fast`` console script: ``ept-fast train``, ``eval``, ``compare``, ``predict`` and ``serve``."""

from __future__ import annotations

import sys
from typing import List, Optional

USAGE = ("usage: ept-fast train [options]   train an adapter (ept-fast train --help lists the options)\n"
         "       ept-fast eval --adapter DIR [options]   score a saved adapter (ept-fast eval --help)\n"
         "       ept-fast compare [options]   methods at one parameter budget over seeds (ept-fast compare --help)\n"
         "       ept-fast predict --adapter NAME=DIR ... --input-file FILE   predict a file with adapters on one "
         "backbone (ept-fast predict --help)\n"
         "       ept-fast serve --adapter NAME=DIR ...   serve adapters on one backbone over HTTP (ept-fast serve "
         "--help)")
# What a user error looks like: a clear message and exit status 2, no traceback.
USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, ImportError)


def _user_errors():
    from .serialization import WriteError

    return USER_ERRORS + (WriteError,)


def parse_train_args(argv: Optional[List[str]] = None):
    from .training import TrainArguments
    from .training.options import parse_options

    return parse_options(TrainArguments, argv, "ept-fast train",
                         "Train an EPT adapter with transformers' Trainer (every TrainingArguments option is "
                         "accepted). With no options: the packaged all-MiniLM-L6-v2 as a classifier on BBC News (a "
                         "stratified, seeded 80/10/10 split).")


def parse_eval_args(argv: Optional[List[str]] = None):
    from .training import EvalArguments
    from .training.options import parse_options

    return parse_options(EvalArguments, argv, "ept-fast eval",
                         "Score a saved adapter on its task, a registry task or your files, with the metrics and "
                         "the output files of ept-fast train.")


def parse_compare_args(argv: Optional[List[str]] = None):
    from .training.compare import CompareArguments
    from .training.options import parse_options

    return parse_options(CompareArguments, argv, "ept-fast compare",
                         "Train several methods at one parameter budget (by default the first adapter method's) over "
                         "several seeds, and compare their test metrics. With no options: ept, dept and pt on BBC "
                         "News, three seeds.")


def parse_predict_args(argv: Optional[List[str]] = None):
    from .training.options import parse_options
    from .training.serving import PredictArguments

    return parse_options(PredictArguments, argv, "ept-fast predict",
                         "Serve several adapters on one frozen backbone: every row of the input file runs its own "
                         "adapter, rows of different adapters share each batch, predictions go to a file.")


def parse_serve_args(argv: Optional[List[str]] = None):
    from .server.app import ServeArguments
    from .training.options import parse_options

    return parse_options(ServeArguments, argv, "ept-fast serve",
                         "Serve several adapters on one frozen backbone over HTTP (OpenAI-style endpoints): requests "
                         "of any adapters share dynamic batches.")


def serve_main(argv: Optional[List[str]] = None) -> int:
    from .server.app import serve

    return _run("serve", lambda: serve(parse_serve_args(argv)))


def predict_main(argv: Optional[List[str]] = None) -> int:
    from .training.serving import predict_file

    return _run("predict", lambda: predict_file(parse_predict_args(argv)))


def train_main(argv: Optional[List[str]] = None) -> int:
    from .training import NonFiniteLossError, train
    from .training.output import CheckpointWriteError

    return _run("train", lambda: train(parse_train_args(argv)),
                extra_errors=(NonFiniteLossError, CheckpointWriteError))


def compare_main(argv: Optional[List[str]] = None) -> int:
    from .training import NonFiniteLossError
    from .training.compare import compare
    from .training.output import CheckpointWriteError

    return _run("compare", lambda: compare(parse_compare_args(argv)),
                extra_errors=(NonFiniteLossError, CheckpointWriteError))


def eval_main(argv: Optional[List[str]] = None) -> int:
    from .training import score_adapter

    return _run("eval", lambda: score_adapter(parse_eval_args(argv)))


def _run(command: str, job, extra_errors=()) -> int:
    try:
        job()
    except _user_errors() + tuple(extra_errors) as error:
        print(f"ept-fast {command}: error: {error}", file=sys.stderr)
        return 2
    _leave_process_group()
    return 0


def _leave_process_group() -> None:
    """Under torchrun, Trainer joins a process group and nothing leaves it: a process that exits
    still in it can abort in gloo's teardown after its work is done. Only after a job that
    finished: leaving waits for every process, and after a failure some may never come."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        try:
            dist.destroy_process_group()
        except Exception as error:  # the work is done and written: a failed goodbye is not the run's failure
            print(f"ept-fast: warning: leaving the process group failed: {error}", file=sys.stderr)


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    commands = {"train": train_main, "eval": eval_main, "compare": compare_main, "predict": predict_main,
                "serve": serve_main}
    if argv[0] not in commands:
        print(f"ept-fast: unknown command {argv[0]!r}; the commands are {', '.join(commands)}", file=sys.stderr)
        return 2
    return commands[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main())
