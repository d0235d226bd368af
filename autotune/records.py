"""Records: what one measured candidate produced, as plain data the cache stores.

A failed candidate is a record too (its status says how it failed), so that it is never
measured again and never chosen as best.
"""

from __future__ import annotations

import math
import socket
import statistics
import time
import uuid
from dataclasses import dataclass, field
from enum import Enum
from typing import Any


def ms_text(seconds: float) -> str:
    """`seconds` as milliseconds with 4 significant digits and no exponent ("0.005123", "1.259",
    "12340"): kernels take from microseconds to seconds, and a fixed number of decimals prints a
    small kernel as 0.000."""
    ms = float(f"{seconds * 1e3:.4g}")  # rounded first, so that 0.99996 gives 1.000, not 1.0000
    if not math.isfinite(ms) or ms == 0:
        return f"{ms:.3f}"
    return f"{ms:.{max(0, 3 - math.floor(math.log10(abs(ms))))}f}"


class Status(str, Enum):
    """How a measured candidate ended."""

    OK = "ok"
    BUILD_ERROR = "build_error"
    RUN_ERROR = "run_error"
    TIMEOUT = "timeout"
    WRONG_RESULT = "wrong_result"
    UNSTABLE = "unstable"  # ran correctly, but a re-measurement was far off its recorded latency


@dataclass(frozen=True)
class TrialRecord:
    """One measured candidate of one workload on one hardware target.

    `latencies` holds the seconds per run of each timed repeat (TVM's time_evaluator, or one run
    timed by the worker for kernels of a repeat's length or more: worker._time_repeat; for such a
    kernel screened on its first run, that run alone: worker._first_run_only); the median of them
    is the candidate's latency. `decisions` is the candidate (see
    search_space.Candidate) and `trace` TVM's schedule trace as plain JSON, kept for interop.
    """

    workload_key: str
    target_key: str
    candidate_key: str
    decisions: dict[str, Any]
    status: Status
    latencies: tuple[float, ...] = ()
    trace: Any = None
    error: str = ""
    build_secs: float = 0.0
    versions: dict[str, str] = field(default_factory=dict)
    created_at: float = field(default_factory=time.time)
    id: int | None = None
    # `uid` names this measurement in every database it is copied to (imports skip known uids);
    # `origin` says where it was measured (host name) or where it came from (an imported tool).
    uid: str = field(default_factory=lambda: uuid.uuid4().hex)
    origin: str = field(default_factory=socket.gethostname)
    session_id: int | None = None  # the model-tuning session that measured it (see session.py)
    # The seconds it is ranked by (best, top_k): None means its own median. A trial timed beside a
    # control (a fast kept run of its tune, MeasureOptions.control) is ranked by its median ratio to the control
    # times the control's ranking latency; finals, which time the leaders head to head, rank them anew
    # (tuner.TaskTuner.finals). Logs carry it, so every device that imports a log ranks its trials as
    # the device that tuned them did.
    ranking_latency: float | None = None

    @property
    def latency(self) -> float | None:
        """Median of the repeats in seconds, or None when the candidate did not run correctly."""
        if self.status is not Status.OK or not self.latencies:
            return None
        return statistics.median(self.latencies)

    @property
    def ranked_latency(self) -> float | None:
        """The seconds it is ranked by: `ranking_latency`, else its own median; None when it did not run correctly."""
        latency = self.latency
        return None if latency is None else (self.ranking_latency or latency)

    @property
    def latency_std(self) -> float | None:
        if self.status is not Status.OK or len(self.latencies) < 2:
            return None
        return statistics.stdev(self.latencies)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "workload_key": self.workload_key,
            "target_key": self.target_key,
            "candidate_key": self.candidate_key,
            "decisions": self.decisions,
            "status": self.status.value,
            "latencies": list(self.latencies),
            "trace": self.trace,
            "error": self.error,
            "build_secs": self.build_secs,
            "versions": dict(self.versions),
            "created_at": self.created_at,
            "uid": self.uid,
            "origin": self.origin,
            "session_id": self.session_id,
            "ranking_latency": self.ranking_latency,
        }

    @staticmethod
    def from_json(data: dict[str, Any]) -> "TrialRecord":
        return TrialRecord(
            workload_key=data["workload_key"],
            target_key=data["target_key"],
            candidate_key=data["candidate_key"],
            decisions=data["decisions"],
            status=Status(data["status"]),
            latencies=tuple(float(x) for x in data.get("latencies") or ()),
            trace=data.get("trace"),
            error=data.get("error") or "",
            build_secs=float(data.get("build_secs") or 0.0),
            versions=dict(data.get("versions") or {}),
            created_at=float(data.get("created_at") or time.time()),
            id=data.get("id"),
            uid=data.get("uid") or uuid.uuid4().hex,
            origin=data.get("origin") or "",
            session_id=data.get("session_id"),
            ranking_latency=data.get("ranking_latency"),
        )
