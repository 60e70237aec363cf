"""Shared code for the CIFAR-10 SimpleCNN study pipeline (see README.md)."""
import os
import signal
import sys


def _stop_while_importing(signum: int, frame: object) -> None:
    # Nothing is written and nothing started yet: stop at once, with the line a stop prints later.
    os.write(2, b"interrupted\n")
    os._exit(130)


# `python -m cifar_study.<command>` or `python -m stages.<stage>` (sys.argv[0] is "-m" while Python finds
# the module): a Ctrl-C or SIGTERM during the seconds of importing PyTorch is one line and exit 130, not a
# traceback or a silent exit; cli.run_command and stage.run_stage replace these handlers once main runs.
if sys.argv[:1] == ["-m"]:
    for _signal in (signal.SIGINT, signal.SIGTERM):
        signal.signal(_signal, _stop_while_importing)
