"""XGBoost cost model: predicts how fast a candidate is relative to the best of its workload.

Labels are per-workload log2 relative throughput, ``log2(min_latency / latency)`` in
[-LOG_FLOOR, 0], clipped at LOG_FLOOR (64x slower than the best; failed candidates get one below
that). The log scale weighs "2x slower" alike in every workload, where MetaSchedule's linear
``min_latency / latency`` squeezes every candidate slower than ~4x into [0, 0.25] and so cannot
rank them; the clip keeps the few 1000x-slow candidates from dominating the squared error. The
scores only rank candidates of one workload (search.py sorts by them). Labels are recomputed at
every fit, since a new best changes every label of its workload. Records of all workloads on
the same hardware train one model, so a new workload starts with a model that already ranks
well (transfer). The model retrains from scratch when its data has grown by a fifth since the
last fit, which keeps retraining cheap in total over a long session; it is saved in the
database after each fit (keyed by FEATURE_VERSION, so a model of older features is refitted).

Between fits, a tune still learns from its own measurements at once: each update fits, for every
workload it brought rows of, a small residual booster on that workload's rows alone, starting
from the fitted model's predictions (XGBoost's base_margin), and predictions for that workload
add it. Without it, a 256-trial tune on top of a cache of 1,300 records of other workloads would
never be refitted; refitting from scratch whenever its own records grew cost 1.17x the tuning
wall time (bench/RESULTS.md, 2026-12-03). Kept per workload, these trees do not shift the other
workloads' predictions, as trees added to the shared model would (a session tunes several
workloads with one model). They live until the next fit, which learns the same rows.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import xgboost as xgb

from .database import Database
from .features import FEATURE_LENGTH, FEATURE_VERSION, FeatureExtractor
from .records import TrialRecord
from .search_space import Candidate, SearchSpace
from .space_config import SpaceConfig
from .target import HardwareTarget, available_cores
from .workload import stored_workload

logger = logging.getLogger(__name__)

MIN_TRAINING_RECORDS = 16  # below this, the search explores at random
RETRAIN_GROWTH = 0.2
RESIDUAL_ROUNDS = 30  # rounds of each workload's residual booster (module docstring); 0 = none
MAX_WARM_START_RECORDS = 20_000

LOG_FLOOR = 6.0  # labels stop at 2**-6 of the best throughput

_PARAMS = {
    "objective": "reg:squarederror",
    "max_depth": 6,
    "eta": 0.1,
    "min_child_weight": 1.0,
    "subsample": 0.9,
    "colsample_bytree": 0.8,
    # Fits and predictions run between batches, while the measurement workers wait: every core is
    # free. Same trees on any thread count (549 corpus rows: identical predictions, 1.31 s on one
    # thread, 0.83 s on two).
    "nthread": available_cores(),
    "seed": 0,
}
_ROUNDS = 200


def model_group(record: TrialRecord, target: HardwareTarget) -> str:
    """The group a record's latency is normalized in: its workload, and its device when not this one."""
    if record.target_key == target.key:
        return record.workload_key
    return f"{record.workload_key}@{record.target_key}"


def relative_log_throughput(latencies: np.ndarray, groups: Sequence[str], floor: float = LOG_FLOOR) -> np.ndarray:
    """Per-group ``log2(best latency / latency)``, clipped at -floor; failed candidates get -floor - 1."""
    latencies = np.asarray(latencies, dtype=np.float64)
    ok = np.isfinite(latencies) & (latencies > 0)
    labels = np.full(len(latencies), -floor - 1.0, dtype=np.float32)
    groups_arr = np.asarray(groups)
    for group in set(groups):
        mask = (groups_arr == group) & ok
        if mask.any():
            labels[mask] = np.maximum(np.log2(latencies[mask].min() / latencies[mask]), -floor)
    return labels


@dataclass
class CostModel:
    """fit / predict / update / save / load over feature rows, latencies and workload groups."""

    features: np.ndarray = field(default_factory=lambda: np.zeros((0, FEATURE_LENGTH), dtype=np.float32))
    latencies: np.ndarray = field(default_factory=lambda: np.zeros(0))
    groups: list[str] = field(default_factory=list)
    booster: xgb.Booster | None = None
    trained_on: int = 0  # rows the booster was last fitted on
    residuals: dict[str, xgb.Booster] = field(default_factory=dict)  # per group, since the last fit

    @property
    def is_trained(self) -> bool:
        return self.booster is not None

    def fit(self, features: np.ndarray, latencies: np.ndarray, groups: Sequence[str]) -> None:
        """Replace the data and train from scratch."""
        self.features = np.asarray(features, dtype=np.float32).reshape(-1, FEATURE_LENGTH)
        self.latencies = np.asarray(latencies, dtype=np.float64)
        self.groups = list(groups)
        if len(self.groups) < 2:
            return
        labels = relative_log_throughput(self.latencies, self.groups)
        self.booster = xgb.train(_PARAMS, xgb.DMatrix(self.features, label=labels), num_boost_round=_ROUNDS)
        self.trained_on = len(self.groups)
        self.residuals = {}

    def update(self, features: np.ndarray, latencies: np.ndarray, groups: Sequence[str]) -> bool:
        """Add rows; retrain when the data grew by RETRAIN_GROWTH, else refit the residual boosters
        of the new rows' groups. Returns whether it retrained."""
        if len(groups) == 0:
            return False
        updated = set(groups)
        features = np.vstack([self.features, np.asarray(features, dtype=np.float32)])
        latencies = np.concatenate([self.latencies, np.asarray(latencies, dtype=np.float64)])
        groups = self.groups + list(groups)
        if len(groups) >= max(MIN_TRAINING_RECORDS, self.trained_on * (1 + RETRAIN_GROWTH)):
            self.fit(features, latencies, groups)
            return True
        self.features, self.latencies, self.groups = features, latencies, groups
        for group in updated:
            self._fit_residual(group)
        return False

    def _fit_residual(self, group: str) -> None:
        """Fit `group`'s residual booster on its rows (at least MIN_TRAINING_RECORDS of them),
        from the fitted model's predictions (module docstring)."""
        rows = np.asarray(self.groups) == group
        if self.booster is None or RESIDUAL_ROUNDS <= 0 or rows.sum() < MIN_TRAINING_RECORDS:
            return
        labels = relative_log_throughput(self.latencies[rows], [group] * int(rows.sum()))
        train = xgb.DMatrix(self.features[rows], label=labels)
        train.set_base_margin(self.booster.predict(train, output_margin=True))
        self.residuals[group] = xgb.train(_PARAMS, train, num_boost_round=RESIDUAL_ROUNDS)

    def predict(self, features: np.ndarray, group: str | None = None) -> np.ndarray:
        """Predicted log2 throughput relative to the workload's best (higher is faster); zeros when
        untrained. With the candidates' `group` (workload key), its residual booster is added."""
        features = np.asarray(features, dtype=np.float32)
        if self.booster is None or len(features) == 0:
            return np.zeros(len(features), dtype=np.float32)
        data = xgb.DMatrix(features)
        if group not in self.residuals:
            return self.booster.predict(data)
        data.set_base_margin(self.booster.predict(data, output_margin=True))
        return self.residuals[group].predict(data)

    def save(self) -> bytes:
        """The booster in XGBoost's own JSON format (no pickle)."""
        if self.booster is None:
            raise ValueError("cannot save an untrained cost model")
        return bytes(self.booster.save_raw("json"))

    @staticmethod
    def load(blob: bytes, trained_on: int = 0) -> "CostModel":
        booster = xgb.Booster(params={"nthread": _PARAMS["nthread"]})
        booster.load_model(bytearray(blob))
        return CostModel(booster=booster, trained_on=trained_on)


def latency_or_nan(record: TrialRecord) -> float:
    """The seconds a record is ranked by (TrialRecord.ranked_latency: its own median, or its latency on its
    tune's common scale once finals or a control set one), or NaN when it did not run correctly: what the
    model learns and the search keeps as parents, so that they agree with `best`, with the control off too."""
    return record.ranked_latency or float("nan")


def warm_start(
    db: Database, target: HardwareTarget, config: SpaceConfig, similar_target_keys: Sequence[str] = ()
) -> CostModel:
    """A model trained on every record of this hardware target in the database (all workloads).

    With `similar_target_keys` (tune(..., similar=True)) the records of those devices join
    the training set, each (workload, device) pair normalized on its own, since latencies of
    two devices are not comparable. The features of past records are recomputed from their
    decisions (trace-only records, imported from MetaSchedule, have none and are left out); a
    saved model trained on exactly these records is loaded instead of refitted.
    """
    start = time.perf_counter()
    records = db.trials(target_key=target.key)[-MAX_WARM_START_RECORDS:]
    for key in similar_target_keys:
        records += db.trials(target_key=key)[-MAX_WARM_START_RECORDS:]
    records = [r for r in records if r.decisions]
    features, latencies, groups = _features_of_records(db, records, target, config)
    saved = db.load_model(target.key, FEATURE_VERSION)
    if saved is not None and saved[1] == len(groups) and not similar_target_keys:
        model = CostModel.load(saved[0], trained_on=saved[1])
        model.features, model.latencies, model.groups = features, latencies, groups
    else:
        model = CostModel()
        if len(groups) >= MIN_TRAINING_RECORDS:
            model.fit(features, latencies, groups)
        else:
            model.features, model.latencies, model.groups = features, latencies, groups
    logger.info("cost model warm start: %d records in %.1f s", len(groups), time.perf_counter() - start)
    return model


def _cached_features(
    db: Database, workload_row: dict[str, Any], group: list[TrialRecord], target: HardwareTarget, config: SpaceConfig
) -> np.ndarray:
    """Features of one workload's records: those the database keeps, the others computed (by
    replaying each candidate) and then kept. Rows are per (workload, target, candidate, feature
    version): the features read the target's caches and cores, and change with FEATURE_VERSION."""
    workload_key = workload_row["key"]
    cached = db.cached_features(workload_key, target.key, FEATURE_VERSION)
    row_bytes = FEATURE_LENGTH * np.dtype(np.float32).itemsize
    missing = list({r.candidate_key: r for r in group if len(cached.get(r.candidate_key, b"")) != row_bytes}.values())
    if missing:
        extractor = FeatureExtractor(SearchSpace(stored_workload(workload_row), config), target)
        computed = extractor.extract([Candidate(r.decisions) for r in missing])
        new_rows = {r.candidate_key: row.tobytes() for r, row in zip(missing, computed)}
        db.save_features(workload_key, target.key, FEATURE_VERSION, new_rows)
        cached.update(new_rows)
    return np.vstack([np.frombuffer(cached[r.candidate_key], dtype=np.float32) for r in group])


def _features_of_records(
    db: Database, records: list[TrialRecord], target: HardwareTarget, config: SpaceConfig
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    by_workload: dict[str, list[TrialRecord]] = {}
    for record in records:
        by_workload.setdefault(record.workload_key, []).append(record)
    rows, latencies, groups = [], [], []
    for key, group in by_workload.items():
        row = db.workload_row(key)
        if row is None:
            continue
        try:
            rows.append(_cached_features(db, row, group, target, config))
        except Exception as err:  # a record that no longer replays is skipped, not fatal
            logger.warning("skipping %d records of workload %s for the cost model: %s", len(group), key, err)
            continue
        latencies += [latency_or_nan(r) for r in group]
        groups += [model_group(r, target) for r in group]
    features = np.vstack(rows) if rows else np.zeros((0, FEATURE_LENGTH), dtype=np.float32)
    return features, np.asarray(latencies, dtype=np.float64), groups
