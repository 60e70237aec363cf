"""Stage findings: the original study's conclusions as checked numbers: gradient-flow health and training dynamics."""
import dataclasses
import sys

from cifar_study.analysis.claims import check_claims, flow_evidence
from cifar_study.analysis.dynamics import analyse
from cifar_study.analysis.flow_health import assess
from cifar_study.core.history import EpochRecord, history_of
from cifar_study.observe.wandb_run import Tracker, wandb_group, wandb_mode
from cifar_study.pipeline import paths, stage_inputs
from cifar_study.pipeline.errors import UserError
from cifar_study.pipeline.outputs import write_json
from cifar_study.pipeline.params import load_params
from cifar_study.pipeline.run_key import run_key
from cifar_study.pipeline.stage import run_stage


def main() -> None:
    params = load_params()
    # Parsed like visualize's inputs: a missing, cut, non-numeric or special file is one line naming it.
    flow = stage_inputs.read_flow(paths.FLOW)
    with stage_inputs.reading(paths.FLOW):
        health = assess(flow)
    with stage_inputs.reading(paths.HISTORY):  # epochs 1, 2, ... of finite, in-range numbers, or one line
        history = history_of(stage_inputs.read_table(paths.HISTORY, EpochRecord.columns()))
    stage_inputs.check_flow_history(flow, len(history))
    dynamics = analyse(history)
    claims = check_claims(health, dynamics, params.train.flow_every)
    missing = flow_evidence(health, params.train.flow_every)
    verdict = "insufficient data" if missing else "healthy" if health.healthy else "flagged"
    metrics = {**health.metrics(), **dynamics.metrics()}
    write_json(paths.FINDINGS_METRICS, metrics)
    write_json(paths.FINDINGS, {"flow_health": {**health.detail(), "verdict": verdict, "missing": missing},
                                "dynamics": dynamics.detail(), "claims": [dataclasses.asdict(c) for c in claims]})
    flagged = "; ".join(f"{h.layer}: {', '.join(h.flags)}" for h in health.flagged) or "no layer flagged"
    judged = [c for c in claims if c.verdict != "insufficient data"]
    print(f"findings: gradient flow {verdict} ({missing or flagged}); of the original study's {len(claims)} claims "
          f"{sum(c.verdict == 'holds' for c in judged)} hold, {len(judged) - sum(c.verdict == 'holds' for c in judged)} "
          f"do not, {len(claims) - len(judged)} cannot be judged on this run (reports/findings.json says why)")

    if wandb_mode(params.wandb) == "disabled":
        return
    # W&B only (no result): join the group of the train run whose flow and history these are; its key
    # comes from the same params, data and code (no PyTorch, no checkpoint to load).
    try:
        key = run_key(params)
    except UserError as exc:  # the data file is gone (a stage run by hand): the W&B run is then ungrouped
        print(f"warning: W&B: no run key for the group ({exc}); logging outside the train run's group", file=sys.stderr)
        key = "unknown"
    with Tracker(params.wandb, "findings", wandb_group(key),
                 {"model": params.section("model"), "train": params.section("train")}) as tracker:
        tracker.summary({**{f"findings/{k}": v for k, v in metrics.items()}, "findings/flow": verdict,
                         **{f"findings/claim{i + 1}": c.verdict for i, c in enumerate(claims)}})


if __name__ == "__main__":
    run_stage(main)
