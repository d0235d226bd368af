"""Benchmark: the default search space against a variant of it, by what tuning finds in each.

    python bench/space_ab.py --variant padded_tile_probability=0            # matmul 512^3, seeds 0-2
    python bench/space_ab.py --variant panel_pack_probability=0 --workloads matmul_1024 dense --seeds 0 1
    python bench/space_ab.py --variant-strategy model                       # same space: model vs random
    python bench/space_ab.py --strategy model --variant-search population=128 generations=6
    python bench/space_ab.py --strategy model --variant-batch-size 8 --workloads conv2d_nchw dense

For each workload (bench/compare.py's suite names) and seed: `autotune.tune` with the default
space (search_spaces/cpu.toml) and with the variant (SpaceConfig fields set as given, and/or
another strategy: --variant-strategy, and/or other ModelGuidedSearch parameters: --variant-search,
and/or another batch size: --variant-batch-size),
same trials and seed, each into a fresh database. Then
each run's best (finals included) is built and all of them are timed head to head with PyTorch (compare.time_interleaved, 8
placements, medians), so the two arms are compared in the same moments of the machine.

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
from typing import Iterator

import autotune
from autotune import ops
from autotune.search import ModelGuidedSearch
from autotune.space_config import SpaceConfig, load_space_config
from autotune.tuner import STRATEGIES


def variant_config(base: SpaceConfig, assignments: list[str]) -> SpaceConfig:
    """`base` with fields set from "name=value" strings (value parsed as the field's current type)."""
    changes = {}
    for text in assignments:
        name, _, value = text.partition("=")
        current = getattr(base, name)  # an unknown name is an AttributeError, which names it
        if isinstance(current, tuple):  # elements parsed as the current ones: unroll_weights=2,2,2,0.5
            changes[name] = tuple(type(current[0])(v) for v in value.split(",") if v)
        else:
            changes[name] = type(current)(value)
    return dataclasses.replace(base, **changes)


@contextlib.contextmanager
def search_parameters(assignments: list[str]) -> Iterator[None]:
    """ModelGuidedSearch's keyword defaults (epsilon, population, generations) set from "name=value"
    strings while tuning. A bench-only override: the tuner does not expose these parameters, and
    an A/B of them should not need it to."""
    defaults = ModelGuidedSearch.__init__.__kwdefaults__
    saved = dict(defaults)
    for text in assignments:
        name, _, value = text.partition("=")
        if name not in ("epsilon", "population", "generations"):
            raise SystemExit(f"--variant-search: {name!r} is not epsilon, population or generations")
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
                        help="the variant's model-guided search parameters, as name=value (epsilon, population, generations)")
    parser.add_argument("--batch-size", type=int, default=16, help="candidates per measured batch")
    parser.add_argument("--variant-batch-size", type=int, help="the variant's batch size (default: --batch-size)")
    parser.add_argument("--workloads", nargs="+", default=["matmul_512"], choices=list(compare.SUITE))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--trials", type=int, default=64)
    parser.add_argument("--strategy", default="random", choices=STRATEGIES)
    args = parser.parse_args(argv)
    hw = autotune.resolve_target("llvm")
    default = load_space_config()
    variant_batch = args.variant_batch_size or args.batch_size
    arms = {"default": (default, args.strategy, [], args.batch_size),
            "variant": (variant_config(default, args.variant), args.variant_strategy or args.strategy, args.variant_search,
                        variant_batch)}
    print(f"# space_ab: variant {' '.join(args.variant + args.variant_search) or 'default space'}, {arms['variant'][1]}, "
          f"batches of {variant_batch}; against {args.strategy}, batches of {args.batch_size}; "
          f"{args.trials} trials, seeds {args.seeds}; "
          f"{hw.fingerprint.get('model_name')} ({hw.num_cores} cores), {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print("| workload | seed | default ms | variant ms | variant/default | PyTorch ms | default wall s | variant wall s |")
    print("|---|---|---|---|---|---|---|---|")
    ratios, wall_ratios = [], []
    with tempfile.TemporaryDirectory(prefix="space-ab-") as tmp:
        for name in args.workloads:
            op, shape, _, options = compare.SUITE[name]
            workload = ops.make(op, shape, **options)
            ref = compare.reference(workload, hw)
            timers, seeds, walls = {}, [], {}
            for seed in args.seeds:
                for arm, (config, strategy, search, batch_size) in arms.items():
                    db = os.path.join(tmp, f"{name}-{arm}-{seed}.db")
                    start = time.perf_counter()
                    with search_parameters(search):
                        autotune.tune(workload, target=hw, trials=args.trials, database=db, space=config,
                                      strategy=strategy, batch_size=batch_size, seed=seed)
                    walls[f"{arm}-{seed}"] = time.perf_counter() - start
                    mod = autotune.apply_best(workload, target=hw, database=db, space=config)
                    timers[f"{arm}-{seed}"] = compare.tvm_timer(f"{arm}-{seed}", mod, hw, ref)
                seeds.append(seed)
            torch = compare.torch_timer(op, ref)
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
