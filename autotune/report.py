"""Reports people look at: plots and a summary of a model-tuning session, from the database alone.

`write_report(session, out_dir)` writes four PNG plots (best latency per task over trials and
over wall time, the estimated model latency over time, where the trials went) and a Markdown
summary that links them. `session_trials` gives the same data as a pandas DataFrame, for
notebooks.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from .database import Database, open_database
from .records import ms_text
from .session import SessionProgress, session_progress

PLOTS = ("best_latency_over_trials.png", "best_latency_over_time.png", "model_latency_over_time.png",
         "trials_per_task.png")


@dataclass(frozen=True)
class Report:
    """Where a report was written: the Markdown summary and the plots."""

    summary: Path
    plots: tuple[Path, ...]


def session_trials(db: Database, session_id: int) -> pd.DataFrame:
    """One row per trial of the session, in order: task, weight, status, latency (s), seconds since
    the session's first trial, and the task's best latency so far."""
    progress = session_progress(db, session_id)
    tasks = {t.workload_key: t for t in progress.tasks}
    rows = db._db.query(
        "SELECT id, workload_key, status, latency_median AS latency, created_at FROM trials "
        "WHERE session_id = ? ORDER BY id", [session_id])
    frame = pd.DataFrame(list(rows), columns=["id", "workload_key", "status", "latency", "created_at"])
    frame["task"] = frame["workload_key"].map(lambda k: tasks[k].name if k in tasks else k)
    frame["weight"] = frame["workload_key"].map(lambda k: tasks[k].weight if k in tasks else 1)
    frame["seconds"] = frame["created_at"] - (frame["created_at"].min() if len(frame) else 0.0)
    frame["task_trial"] = frame.groupby("workload_key").cumcount() + 1
    frame["best_so_far"] = frame.groupby("workload_key")["latency"].cummin()
    return frame


def model_latency_over_time(frame: pd.DataFrame) -> pd.DataFrame:
    """Estimated model latency (sum of weight × best so far) after each trial, once every task has a value."""
    best: dict[str, float] = {}
    weights = frame.groupby("workload_key")["weight"].first().to_dict()
    points = []
    for row in frame.itertuples():
        if pd.notna(row.latency):
            best[row.workload_key] = min(best.get(row.workload_key, float("inf")), row.latency)
        if len(best) == len(weights):
            points.append((row.seconds, row.Index + 1, sum(weights[k] * v for k, v in best.items())))
    return pd.DataFrame(points, columns=["seconds", "trials", "latency"])


def write_report(session_id: int, out_dir: str | os.PathLike[str],
                 database: str | os.PathLike[str] | Database | None = None) -> Report:
    """Write the plots and summary.md of a session into out_dir (created if needed)."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display needed
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with open_database(database) as db:
        progress = session_progress(db, session_id)
        frame = session_trials(db, session_id)
        name = (db.session(session_id) or {}).get("name", "")
    model = model_latency_over_time(frame)
    plots = (_plot_per_task(frame, "task_trial", "trials of the task", out / PLOTS[0]),
             _plot_per_task(frame, "seconds", "wall time (s)", out / PLOTS[1]),
             _plot_model(model, out / PLOTS[2]),
             _plot_trials(frame, out / PLOTS[3]))
    summary = out / "summary.md"
    summary.write_text(_summary(progress, name, model, plots))
    return Report(summary, plots)


# ---------------------------------------------------------------------------------------------
# plots and text


def _plot_per_task(frame: pd.DataFrame, x: str, xlabel: str, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for task, group in frame.dropna(subset=["best_so_far"]).groupby("task"):
        ax.step(group[x], group["best_so_far"] * 1e3, where="post", label=task)
    ax.set(xlabel=xlabel, ylabel="best latency (ms)", yscale="log", title="Best latency per task")
    ax.grid(alpha=0.3)
    if len(frame):
        ax.legend(fontsize="small")
    return _save(fig, path)


def _plot_model(model: pd.DataFrame, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.step(model["seconds"], model["latency"] * 1e3, where="post")
    ax.set(xlabel="wall time (s)", ylabel="estimated model latency (ms)",
           title="Estimated model latency (sum of weight x best kernel latency)")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def _plot_trials(frame: pd.DataFrame, path: Path) -> Path:
    import matplotlib.pyplot as plt

    counts = frame.groupby(["task", "status"]).size().unstack(fill_value=0) if len(frame) else pd.DataFrame()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    if len(counts):
        counts.plot.barh(stacked=True, ax=ax)
    ax.set(xlabel="trials", ylabel="", title="Where the trials went (by outcome)")
    return _save(fig, path)


def _save(fig: object, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()  # type: ignore[attr-defined]
    fig.savefig(path, dpi=110)  # type: ignore[attr-defined]
    plt.close(fig)  # type: ignore[arg-type]
    return path


def _summary(progress: SessionProgress, name: str, model: pd.DataFrame, plots: tuple[Path, ...]) -> str:
    first = model["latency"].iloc[0] if len(model) else None
    last = progress.estimated_latency
    lines = [f"# Session {progress.session_id}: {name}", "",
             f"- status: {progress.status}; written {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
             f"- trials: {progress.trials_done}" + (f" of {progress.trials_budget}" if progress.trials_budget else ""),
             f"- wall time: {progress.elapsed:.0f} s" + (f" of {progress.time_budget:.0f} s" if progress.time_budget else "")]
    if first and last:
        lines.append(f"- estimated model latency: {ms_text(first)} ms when every task had a first result "
                     f"(its untuned schedule), {ms_text(last)} ms now ({first / last:.2f}x)")
    lines += ["", "| task | weight | trials | best (ms) | GFLOPS | share |", "|---|---|---|---|---|---|"]
    for t in progress.tasks:
        share = f"{t.contribution / last:.0%}" if last and t.contribution is not None else "-"
        best = ms_text(t.best_latency) if t.best_latency else "-"
        rate = f"{t.gflops:.1f}" if t.gflops else "-"
        lines.append(f"| {t.name} | {t.weight} | {t.trials} | {best} | {rate} | {share} |")
    lines += [""] + [f"![{p.stem.replace('_', ' ')}]({p.name})" for p in plots] + [""]
    return "\n".join(lines)
