"""What every stage script shares: one-line errors for user mistakes, clean exit on Ctrl-C, and
outputs that are replaced all together or not at all."""
from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Callable

from cifar_study.errors import UserError
from cifar_study.io import outputs_together

# Set by distributed.launch for the ranks it starts: a folder where a rank leaves its one-line
# error, so the launcher prints it once instead of every rank printing it.
ERRORS_ENV = "CIFAR_STUDY_RANK_ERRORS"


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM (a scheduler, `kill`) takes the same clean path as Ctrl-C


def _launched_rank() -> bool:
    return ERRORS_ENV in os.environ and "RANK" in os.environ


def report_error(message: str) -> None:
    if _launched_rank():  # the launcher prints it, once
        Path(os.environ[ERRORS_ENV], f"rank{int(os.environ['RANK']):06d}").write_text(message)
    else:
        print(f"error: {message}", file=sys.stderr)


def run_stage(main: Callable[[], None]) -> None:
    signal.signal(signal.SIGTERM, _interrupt)
    # A shell starts background jobs with SIGINT ignored, and Python keeps that; `kill -INT` must
    # still stop a stage cleanly.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with outputs_together():  # a stage that stops part-way changes none of its outputs
            main()
    except UserError as exc:
        report_error(str(exc))
        sys.exit(2)
    except KeyboardInterrupt:
        if not _launched_rank():  # the launcher says it for all ranks
            print("interrupted", file=sys.stderr)
        sys.exit(130)
