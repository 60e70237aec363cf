"""Which project files a stage's result depends on: the stage script and its imports inside the project.

dvc.yaml must list exactly these as the stage's code deps (tests/test_code_deps.py checks it), and
the train stage's resume fingerprint hashes the same files, so an edit to any module a stage runs
re-runs that stage and never resumes a run made by other code.
"""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGES = ("cifar_study", "stages")
# Modules that only observe a run and decide none of its outputs: following them would re-run a
# 30-epoch training for a change in how it is logged. tests/test_wandb.py checks that the outputs are
# identical with W&B on and off.
OBSERVERS = frozenset({"cifar_study/observe/wandb_run.py", "cifar_study/observe/live.py"})
# A package's __init__.py runs before its modules but is not followed here: cifar_study/__init__.py (which
# stages/__init__.py imports) only turns a Ctrl-C during the imports into one line, and decides no output.


def _module_file(module: str, root: Path) -> Path | None:
    """`cifar_study.pipeline.dataset` -> cifar_study/pipeline/dataset.py (None for modules outside the project)."""
    if module.split(".")[0] not in PACKAGES:
        return None
    path = root / Path(*module.split("."))
    return path.with_suffix(".py") if path.with_suffix(".py").is_file() else path / "__init__.py"


def _imports(path: Path, root: Path) -> set[Path]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from cifar_study import paths` imports the module cifar_study.pipeline.paths, not a name in __init__.
            modules = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        for module in modules:
            file = _module_file(module, root)
            if file is not None and file.is_file():
                found.add(file)
    return found


def code_deps(script: str | Path, root: str | Path = ".") -> list[str]:
    """The stage script and every project module it imports, directly or not, as sorted relative paths."""
    root = Path(root)
    seen: set[Path] = set()
    todo = [root / script]
    while todo:
        path = todo.pop()
        if path in seen or path.relative_to(root).as_posix() in OBSERVERS:
            continue
        seen.add(path)
        todo.extend(_imports(path, root))
    return sorted(p.relative_to(root).as_posix() for p in seen if p.name != "__init__.py" or _has_code(p))


def _has_code(path: Path) -> bool:
    """False for a package marker that holds at most a docstring: listing it would only add noise to dvc.yaml."""
    body = ast.parse(path.read_text()).body
    return bool(body[1:] if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) else body)
