"""What every stage script shares: one-line errors for user mistakes, clean exit on Ctrl-C."""
from __future__ import annotations

import sys
from typing import Callable

from cifar_study.errors import UserError


def run_stage(main: Callable[[], None]) -> None:
    try:
        main()
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
