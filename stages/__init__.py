"""The stage scripts of dvc.yaml, one each: `python -m stages.<name>`."""
import sys

import cifar_study  # first: a Ctrl-C while the stage imports PyTorch is one line (see cifar_study/__init__.py)

# params.yaml, checked before the stage imports PyTorch (seconds): a typo is refused at once. The stage checks
# it again in its main (the same load_params), and a launched rank leaves that to its launcher.
if sys.argv[:1] == ["-m"] and not cifar_study.launched_rank():
    from cifar_study.pipeline.cli import error_line
    from cifar_study.pipeline.errors import UserError
    from cifar_study.pipeline.params import load_params

    try:
        load_params()
    except UserError as exc:
        sys.exit(error_line(str(exc)))
