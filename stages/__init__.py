"""The stage scripts of dvc.yaml, one each: `python -m stages.<name>`."""
import cifar_study  # noqa: F401  first: a Ctrl-C while the stage imports PyTorch is one line (see cifar_study/__init__.py)
