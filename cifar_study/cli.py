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
    try:
        main()
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
