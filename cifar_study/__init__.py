"""Shared code for the CIFAR-10 SimpleCNN study pipeline (see README.md)."""
import os
import sys

# Set by distributed.launch for the ranks it starts: a folder where a rank leaves its one-line
# error, so the launcher prints it (or "interrupted") once instead of every rank printing it.
RANK_ERRORS_ENV = "CIFAR_STUDY_RANK_ERRORS"


def launched_rank() -> bool:
    """True in a rank that distributed.launch started: its launcher speaks for it."""
    return RANK_ERRORS_ENV in os.environ and "RANK" in os.environ


def _stop_while_importing(signum: int, frame: object) -> None:
    # Nothing is written and nothing started yet: stop at once, with the line a stop prints later.
    # The launcher stops the other ranks when one fails, so a rank stays quiet, as run_stage's does.
    if not launched_rank():
        os.write(2, b"interrupted\n")
    os._exit(130)


# `python -m cifar_study.<command>`, `python -m stages.<stage>` (sys.argv[0] is "-m" while Python finds the module)
# or a bench/ tool (which imports this package before PyTorch): a Ctrl-C, SIGTERM or SIGHUP during the seconds of
# importing PyTorch is one line and exit 130, not a traceback or a silent exit; cli.run_command and
# stage.run_stage replace these handlers once main runs.
_BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench")
if sys.argv[:1] == ["-m"] or os.path.dirname(os.path.abspath(sys.argv[0] if sys.argv else "")) == _BENCH:
    from cifar_study.pipeline.cli import stop_on_signals  # argparse and the standard library: no PyTorch

    stop_on_signals(_stop_while_importing)
