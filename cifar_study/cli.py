"""What every stage script shares: one-line errors for user mistakes, clean exit on Ctrl-C."""
from __future__ import annotations

import signal
import sys
from typing import Callable

from cifar_study.errors import UserError


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM (a scheduler, `kill`) takes the same clean path as Ctrl-C


def run_stage(main: Callable[[], None]) -> None:
    signal.signal(signal.SIGTERM, _interrupt)
    # A shell starts background jobs with SIGINT ignored, and Python keeps that; `kill -INT` must
    # still stop a stage cleanly.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        main()
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
