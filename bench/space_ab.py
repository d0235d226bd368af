"""Benchmark: the default search space against a variant of it, by what tuning finds in each.

    python bench/space_ab.py --variant padded_tile_probability=0            # matmul 512^3, seeds 0-2
    python bench/space_ab.py --variant panel_pack_probability=0 --workloads matmul_1024 dense --seeds 0 1
    python bench/space_ab.py --variant-strategy model                       # same space: model vs random
    python bench/space_ab.py --strategy model --variant-search population=128 generations=6
    python bench/space_ab.py --strategy model --variant-batch-size 8 --workloads conv2d_nchw dense
    python bench/space_ab.py --strategy model --corpus corpus.db --variant-model RETRAIN_GROWTH=0.05
    python bench/space_ab.py --strategy model --variant-env AUTOTUNE_VECTOR_MATH=0 --workloads softmax bert_ffn1
    python bench/space_ab.py --strategy model --variant-measure control=true --workloads batch_matmul dense

For each workload (bench/compare.py's suite names) and seed: `autotune.tune` with the default
space (search_spaces/cpu.toml) and with the variant (SpaceConfig fields set as given, and/or
another strategy: --variant-strategy, and/or other ModelGuidedSearch parameters: --variant-search,
and/or other cost-model constants: --variant-model, and/or another batch size: --variant-batch-size,
and/or other measurement options (MeasureOptions fields): --variant-measure, and/or environment variables set while it tunes and while its best is built: --variant-env),
same trials and seed, each into a fresh database, or into a copy of --corpus DB (records of other
workloads on this machine, from compare.py --make-corpus: the model starts trained). Then
each run's best (finals included) is built and all of them are timed head to head with PyTorch (compare.time_interleaved, 8
placements, medians), so the two arms are compared in the same moments of the machine.

Workloads: compare.py's suite and extras, or its corpus shapes from real models (bert_ffn1, ...).

Columns: per seed, the default's and the variant's best (ms) and variant/default (> 1: the
default space found the faster kernel); PyTorch (ms); each arm's tuning wall time (s). The last
lines are the geomeans over all runs of the best's time and of the wall time, variant/default.
"""

# ruff: noqa: E402
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compare  # sets TVM_NUM_THREADS before tvm is imported

import argparse
import contextlib
import dataclasses
import statistics
import tempfile
import time
from typing import Any, Iterator, NamedTuple

import autotune
from autotune import cost_model, ops
from autotune.measure import MeasureOptions
from autotune.search import ModelGuidedSearch
from autotune.space_config import SpaceConfig, load_space_config
from autotune.tuner import STRATEGIES


def variant_config(base: Any, assignments: list[str]) -> Any:
    """`base` (a dataclass: SpaceConfig, MeasureOptions) with fields set from "name=value" strings (value
    parsed as the field's current type)."""
    changes = {}
    for text in assignments:
        name, _, value = text.partition("=")
        current = getattr(base, name)  # an unknown name is an AttributeError, which names it
        if current is None or callable(current):
            raise SystemExit(f"space_ab: {name} has no value to parse {value!r} as; it cannot be set here")
        if isinstance(current, tuple):  # elements parsed as the current ones: unroll_weights=2,2,2,0.5
            changes[name] = tuple(type(current[0])(v) for v in value.split(",") if v)
        elif isinstance(current, bool):  # bool("false") would be True
            changes[name] = value.lower() in ("1", "true", "yes")
        else:
            changes[name] = type(current)(value)
    return dataclasses.replace(base, **changes)


class Arm(NamedTuple):
    """What one side of the A/B tunes with."""

    config: SpaceConfig
    strategy: str
    search: list[str]  # ModelGuidedSearch parameters, name=value
    model: list[str]  # cost_model constants, NAME=value
    batch_size: int
    env: list[str]  # environment variables, NAME=value
    measure: MeasureOptions


MODEL_CONSTANTS = ("RETRAIN_GROWTH", "MIN_TRAINING_RECORDS", "RESIDUAL_ROUNDS")


@contextlib.contextmanager
def model_constants(assignments: list[str]) -> Iterator[None]:
    """cost_model's module constants (MODEL_CONSTANTS) set from "NAME=value" strings while tuning
    (a bench-only override, like search_parameters)."""
    saved = {name: getattr(cost_model, name) for name in MODEL_CONSTANTS}
    for text in assignments:
        name, _, value = text.partition("=")
        if name not in MODEL_CONSTANTS:
            raise SystemExit(f"--variant-model: {name!r} is not one of {', '.join(MODEL_CONSTANTS)}")
        setattr(cost_model, name, type(saved[name])(value))
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(cost_model, name, value)


@contextlib.contextmanager
def environment(assignments: list[str]) -> Iterator[None]:
    """os.environ with "NAME=value" strings set (the tune's worker processes inherit it)."""
    saved = dict(os.environ)
    os.environ.update(text.partition("=")[::2] for text in assignments)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def workload_spec(name: str) -> tuple[str, str, dict]:
    """(operator, shape, options) of a compare.py suite, extra or corpus workload."""
    if name in compare.WORKLOADS:
        op, shape, _, options = compare.WORKLOADS[name]
        return op, shape, options
    return compare.CORPUS[name]


@contextlib.contextmanager
def search_parameters(assignments: list[str]) -> Iterator[None]:
    """ModelGuidedSearch's keyword defaults (epsilon, population, generations, ...) set from "name=value"
    strings while tuning. A bench-only override: the tuner does not expose these parameters, and
    an A/B of them should not need it to."""
    defaults = ModelGuidedSearch.__init__.__kwdefaults__
    saved = dict(defaults)
    for text in assignments:
        name, _, value = text.partition("=")
        numeric = [key for key, default in saved.items() if isinstance(default, (int, float))]
        if name not in numeric:
            raise SystemExit(f"--variant-search: {name!r} is not one of {', '.join(numeric)}")
        defaults[name] = type(saved[name])(value)
    try:
        yield
    finally:
        defaults.clear()
        defaults.update(saved)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant", nargs="*", default=[], help="SpaceConfig fields to change, as name=value")
    parser.add_argument("--variant-strategy", choices=STRATEGIES, help="the variant's strategy (default: --strategy)")
    parser.add_argument("--variant-search", nargs="*", default=[],
                        help="the variant's model-guided search parameters, as name=value (epsilon, population, generations, "
                             "scored_exploration)")
    parser.add_argument("--variant-model", nargs="*", default=[],
                        help=f"the variant's cost-model constants, as NAME=value ({', '.join(MODEL_CONSTANTS)})")
    parser.add_argument("--corpus", metavar="DB", help="tune every run in a copy of this database (compare.py "
                        "--make-corpus) instead of an empty one")
    parser.add_argument("--batch-size", type=int, default=16, help="candidates per measured batch")
    parser.add_argument("--variant-batch-size", type=int, help="the variant's batch size (default: --batch-size)")
    parser.add_argument("--variant-measure", nargs="*", default=[],
                        help="the variant's measurement options (MeasureOptions fields), as name=value")
    parser.add_argument("--variant-env", nargs="*", default=[],
                        help="environment variables of the variant's tune and build, as NAME=value")
    parser.add_argument("--workloads", nargs="+", default=["matmul_512"], choices=[*compare.WORKLOADS, *compare.CORPUS])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--trials", type=int, default=64)
    parser.add_argument("--strategy", default="random", choices=STRATEGIES)
    args = parser.parse_args(argv)
    hw = autotune.resolve_target("llvm")
    default = load_space_config()
    variant_batch = args.variant_batch_size or args.batch_size
    if args.corpus and not os.path.isfile(args.corpus):
        parser.error(f"--corpus {args.corpus}: no such file (make one with compare.py --make-corpus)")
    arms = {"default": Arm(default, args.strategy, [], [], args.batch_size, [], MeasureOptions()),
            "variant": Arm(variant_config(default, args.variant), args.variant_strategy or args.strategy,
                           args.variant_search, args.variant_model, variant_batch, args.variant_env,
                           variant_config(MeasureOptions(), args.variant_measure))}
    changes = args.variant + args.variant_search + args.variant_model + args.variant_measure + args.variant_env
    print(f"# space_ab: variant {' '.join(changes) or 'default space'}, {arms['variant'].strategy}, "
          f"batches of {variant_batch}; against {args.strategy}, batches of {args.batch_size}; "
          f"{args.trials} trials, seeds {args.seeds}; {'from a copy of ' + args.corpus if args.corpus else 'cold'}; "
          f"{hw.fingerprint.get('model_name')} ({hw.num_cores} cores), {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print("| workload | seed | default ms | variant ms | variant/default | PyTorch ms | default wall s | variant wall s |")
    print("|---|---|---|---|---|---|---|---|")
    ratios, wall_ratios = [], []
    with tempfile.TemporaryDirectory(prefix="space-ab-") as tmp:
        for name in args.workloads:
            op, shape, options = workload_spec(name)
            workload = ops.make(op, shape, **options)
            ref = compare.reference(workload, hw)
            timers, seeds, walls = {}, [], {}
            for seed in args.seeds:
                for arm, setup in arms.items():
                    db = os.path.join(tmp, f"{name}-{arm}-{seed}.db")
                    if args.corpus:
                        compare.copy_corpus(args.corpus, db, workload)
                    start = time.perf_counter()
                    with search_parameters(setup.search), model_constants(setup.model), environment(setup.env):
                        autotune.tune(workload, target=hw, trials=args.trials, database=db, space=setup.config,
                                      strategy=setup.strategy, batch_size=setup.batch_size, seed=seed,
                                      measure=setup.measure)
                        walls[f"{arm}-{seed}"] = time.perf_counter() - start
                        mod = autotune.apply_best(workload, target=hw, database=db, space=setup.config)
                        timers[f"{arm}-{seed}"] = compare.tvm_timer(f"{arm}-{seed}", mod, hw, ref)
                seeds.append(seed)
            torch = compare.torch_timer(op, ref, options.get("epilogue", "relu"))
            if not isinstance(torch, str):
                timers["torch"] = torch
            secs = {k: statistics.median(v) for k, v in compare.time_interleaved(timers, ref, compare.RETIME_PLACEMENTS).items()}
            for seed in seeds:
                base, other = secs[f"default-{seed}"], secs[f"variant-{seed}"]
                wall_base, wall_other = walls[f"default-{seed}"], walls[f"variant-{seed}"]
                ratios.append(other / base)
                wall_ratios.append(wall_other / wall_base)
                torch_ms = f"{secs['torch'] * 1e3:.3f}" if "torch" in secs else "-"
                print(f"| {name} | {seed} | {base * 1e3:.3f} | {other * 1e3:.3f} | {other / base:.2f} | {torch_ms} "
                      f"| {wall_base:.1f} | {wall_other:.1f} |", flush=True)
    print(f"geomean variant/default over {len(ratios)} runs: {compare.geomean(ratios):.3f} (best's time), "
          f"{compare.geomean(wall_ratios):.3f} (tuning wall time)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
