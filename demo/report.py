"""The demo's report: the success metrics per round (reward-model accuracy > 85%,
policy reward +15%, positive feedback +20%), in the terminal and as HTML with plots.

Figures come from what the system itself recorded (the trainer's published metrics, the decider's
ExperimentDecided with the per-user statistics it rested on); the hidden user preference is used only for the "ground
truth" column, which the system never sees.
"""

from __future__ import annotations

import base64
import html
import io
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

TARGETS = {"reward_accuracy": 0.85, "policy_reward_gain": 0.15, "positive_lift": 0.20}


@dataclass(frozen=True)
class RoundFigures:
    """One round's success metrics, extracted from its RoundResult."""

    candidate: str
    decision: str
    reward_accuracy: float | None
    reward_before: float | None
    reward_after: float | None
    control_rate: float | None
    treatment_rate: float | None
    lift: float | None
    lift_low: float | None
    lift_high: float | None
    users_control: float | None = None
    users_treatment: float | None = None
    decision_reason: str = ""
    true_quality_parent: float | None = None
    true_quality_candidate: float | None = None

    @property
    def policy_reward_gain(self) -> float | None:
        if self.reward_before is None or self.reward_after is None or self.reward_before <= 0:
            return None
        return self.reward_after / self.reward_before - 1


def figures_of(result: dict, truth: dict[str, float]) -> RoundFigures:
    """The round's figures: the trainer's published metrics and the decider's recorded statistics."""
    metrics = result.get("published", {}).get("metrics", {})
    stats = result.get("ab", {}).get("statistics", {})
    return RoundFigures(
        candidate=result["candidate"], decision=result["decision"],
        reward_accuracy=metrics.get("rm_eval.pairwise_accuracy"),
        reward_before=metrics.get("mean_reward_before"), reward_after=metrics.get("mean_reward_after"),
        control_rate=stats.get("positive_rate_control"), treatment_rate=stats.get("positive_rate_treatment"),
        lift=stats.get("lift"), lift_low=stats.get("lift_low"), lift_high=stats.get("lift_high"),
        users_control=stats.get("users_control"), users_treatment=stats.get("users_treatment"),
        decision_reason=result.get("ab", {}).get("reason", ""),
        true_quality_parent=truth.get(result.get("parent") or ""), true_quality_candidate=truth.get(result["candidate"]),
    )  # fmt: skip


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x:+.1%}"


def _num(x: float | None, fmt: str = ".3f") -> str:
    return "n/a" if x is None else format(x, fmt)


def terminal_summary(rounds: list[RoundFigures], dashboard_url: str, html_path: Path) -> str:
    lines = ["", "rlhf demo: results per round (targets: reward-model accuracy >= 85%, policy reward +15%, positive feedback +20%)"]
    for n, r in enumerate(rounds, 1):
        interval = "n/a" if r.lift_low is None else f"[{r.lift_low:+.1%}, {r.lift_high:+.1%}]"
        lines += [
            f"  round {n}: {r.candidate} -> {r.decision.upper()}",
            f"    reward model held-out pairwise accuracy  {_num(r.reward_accuracy, '.1%')}",
            f"    policy mean reward (reward model)        {_num(r.reward_before)} -> {_num(r.reward_after)}  ({_pct(r.policy_reward_gain)})",
            f"    positive-feedback rate control/treatment {_num(r.control_rate)} / {_num(r.treatment_rate)}  lift {_pct(r.lift)} {interval}"
            f"  (per user; {_num(r.users_control, '.0f')} / {_num(r.users_treatment, '.0f')} users)",
            f"    decision                                 " + ("the gate rejected it before any user saw it" if r.decision == "rejected"
                                                              else f"the decider: {r.decision} ({r.decision_reason or 'no reason recorded'})"),
            f"    hidden user preference (ground truth)    {_num(r.true_quality_parent)} -> {_num(r.true_quality_candidate)}",
        ]
    lines += [f"  report: {html_path}", f"  dashboard (while running): {dashboard_url}", ""]
    return "\n".join(lines)


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _ab_plot(rounds: list[RoundFigures]) -> str:
    fig, ax = plt.subplots(figsize=(6, 3.2))
    xs = range(1, len(rounds) + 1)
    ax.bar([x - 0.2 for x in xs], [r.control_rate or 0 for r in rounds], 0.4, label="control")
    ax.bar([x + 0.2 for x in xs], [r.treatment_rate or 0 for r in rounds], 0.4, label="treatment (candidate)")
    for x, r in zip(xs, rounds):
        ax.annotate(f"{_pct(r.lift)}\n{r.decision}", (x + 0.2, (r.treatment_rate or 0) + 0.02), ha="center", fontsize=8)
    ax.set(xlabel="round", ylabel="positive-feedback rate", title="A/B test per round", xticks=list(xs), ylim=(0, 1))
    ax.legend(loc="upper left", fontsize=8)
    return _png(fig)


def _reward_plot(rounds: list[RoundFigures]) -> str:
    fig, ax = plt.subplots(figsize=(6, 3.2))
    xs = list(range(1, len(rounds) + 1))
    ax.plot(xs, [r.reward_before for r in rounds], "o--", label="parent policy (reward model)")
    ax.plot(xs, [r.reward_after for r in rounds], "o-", label="candidate policy (reward model)")
    ax.plot(xs, [r.true_quality_parent for r in rounds], "s--", alpha=0.6, label="parent (hidden preference)")
    ax.plot(xs, [r.true_quality_candidate for r in rounds], "s-", alpha=0.6, label="candidate (hidden preference)")
    ax.set(xlabel="round", ylabel="mean reward on held-out queries", title="Policy improvement", xticks=xs)
    ax.legend(fontsize=7)
    return _png(fig)


def _timeline_plot(timeline: list[dict]) -> str:
    fig, ax = plt.subplots(figsize=(6, 3.2))
    if timeline:
        t0 = timeline[0]["t"]
        window = 8  # steps in the moving average
        rates = []
        for i in range(len(timeline)):
            chunk = timeline[max(0, i - window + 1) : i + 1]
            n = sum(c["n"] for c in chunk)
            rates.append(sum(c["positive"] for c in chunk) / n if n else float("nan"))
        ax.plot([(p["t"] - t0) / 60 for p in timeline], rates)
    ax.set(xlabel="minutes", ylabel="positive-feedback rate (moving avg)", title="What users felt over the run", ylim=(0, 1))
    return _png(fig)


def write_html(path: Path, rounds: list[RoundFigures], timeline: list[dict], summary: str) -> Path:
    images = [_ab_plot(rounds), _reward_plot(rounds), _timeline_plot(timeline)] if rounds else [_timeline_plot(timeline)]
    body = "".join(f'<img src="data:image/png;base64,{img}" style="max-width:48%;margin:4px">' for img in images)
    path.write_text(
        "<!doctype html><meta charset=utf-8><title>rlhf demo report</title>"
        "<style>body{font-family:sans-serif;margin:2em}pre{background:#f6f6f6;padding:1em}</style>"
        f"<h1>rlhf-stream demo</h1>{body}<pre>{html.escape(summary)}</pre>"
    )
    return path


def true_quality(registry_root: Path, versions: set[str], max_new_tokens: int, samples: int = 2) -> dict[str, float]:
    """Mean hidden preference of each version's answers to the held-out questions (ground truth)."""
    from registry.store import ModelRegistry
    from assistant.service import answer, load_version
    from trainers.synthetic import quality, split_questions

    registry = ModelRegistry(registry_root)
    _, held_out = split_questions()
    out = {}
    for version in sorted(versions):
        policy = load_version(registry, version)
        scores = []
        for s in range(samples):
            answers = answer(policy, [q.text for q in held_out], max_new_tokens, seed=s)
            scores += [quality(q, a) for q, a in zip(held_out, answers)]
        out[version] = sum(scores) / len(scores)
    return out


def write_report(run_dir: Path, results: list[Any], elapsed_s: float, max_new_tokens: int) -> str:
    """RUN/report.html and the terminal summary (returned) of a finished demo run."""
    # A rejected candidate is a manifest without weights: it never answered anyone.
    versions = {r.candidate for r in results if r.decision != "rejected"} | {r.parent for r in results if r.parent}
    truth = true_quality(run_dir / "state" / "registry", versions, max_new_tokens)
    rounds = [figures_of(asdict(r), truth) for r in results]
    html_path = run_dir / "report.html"
    dashboard = f"rerun `RLHF_HOME={run_dir}/state rlhf sink run` to browse the dashboard again"
    summary = terminal_summary(rounds, dashboard, html_path) + f"  wall time: {elapsed_s / 60:.1f} min\n"
    timeline_file = run_dir / "timeline.json"
    write_html(html_path, rounds, json.loads(timeline_file.read_text()) if timeline_file.exists() else [], summary)
    return summary
