"""Record this tree's code in dvc.lock for train and evaluate, whose outputs (the 2-hour model) are not on this
machine, once `same_training.py` shows that the tree trains and evaluates exactly as the commit that last wrote
dvc.lock. The other stages re-run for real (`dvc repro -s <stage>`); these two cannot without the model.

    python notes/baseline/recommit.py

`dvc commit` needs the outputs present; this is its save step with absent outputs and data allowed
(DVC's `Stage.save(allow_missing=True)`, without the run cache): only the hashes of changed code files move,
the data's and the model's stay as the baseline run recorded them.
"""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
STAGES = ("train", "evaluate")


def main() -> int:
    locked = subprocess.run(["git", "log", "-1", "--format=%h", "--", "dvc.lock"], cwd=ROOT, capture_output=True,
                            text=True, check=True).stdout.strip()
    same = subprocess.run([sys.executable, str(Path(__file__).with_name("same_training.py")), "--against", locked],
                          cwd=ROOT)
    if same.returncode:
        print(f"recommit: this tree does not train or evaluate as {locked} did; dvc.lock left as it is: re-run "
              "the baseline (dvc repro)", file=sys.stderr)
        return 1
    from dvc.repo import Repo

    repo = Repo(str(ROOT))
    with repo.lock:
        for name in STAGES:
            (stage,) = repo.stage.collect(name)
            stage.save(allow_missing=True, run_cache=False)
            stage.dump(update_pipeline=False)
    print(f"recommit: dvc.lock records this tree's code for {', '.join(STAGES)} (checked against {locked})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
