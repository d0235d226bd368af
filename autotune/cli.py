"""The `autotune` command line: tune, best, demo, ops, cache (export/import/ls/stats/prune, MetaSchedule interop).

Errors from bad input are one line on stderr and exit code 2; progress goes to a tqdm bar.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from . import logs, ops, vector_math
from .database import Database, default_database_path
from .errors import AutotuneError, BudgetError, FleetError, ShapeError
from .measure import MeasureOptions
from .records import TrialRecord, ms_text
from .search_space import SearchSpace
from .space_config import load_space_config
from .target import resolve_target
from .tuner import Progress, TuneResult, check_budget, gflops, not_tuned_here, tune
from .workload import Workload

DEMO_OP, DEMO_SHAPE, DEMO_TRIALS = "matmul", "256,256,256", 48


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    try:
        return int(args.run(args) or 0)
    except AutotuneError as err:
        print(f"autotune: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("autotune: interrupted; every finished trial is saved in the database", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and friends: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


# ---------------------------------------------------------------------------------------------
# commands


def cmd_tune(args: argparse.Namespace) -> int:
    workload = _workload(args)
    result = _tune_with_bar(workload, args.target, args.trials, args.db, args.seed, args.similar, _rpc_options(args))
    _print_result(result, args.db)
    return 0


def cmd_best(args: argparse.Namespace) -> int:
    workload = _workload(args)
    target = resolve_target(_target_spec(args.target))
    with Database(args.db) as db:
        best = db.best(workload.key, target.key)
        why = not_tuned_here(db, workload, target) if best is None else ""
    if best is None:
        print(why)
        return 1
    print(_describe_best(workload, best))
    if args.show:
        from .tuner import apply_record

        print(apply_record(workload, best, load_space_config(args.space)).script())
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    workload = ops.make(DEMO_OP, DEMO_SHAPE)
    print(f"autotune demo: tuning {workload.name} ({workload.flops / 1e6:.0f} MFLOP) for {args.trials} trials")
    result = _tune_with_bar(workload, args.target, args.trials, args.db, args.seed)
    untuned = _untuned_latency(result, args.db)
    tuned, numpy_secs = _timed_with_numpy(result) if result.mod is not None else (None, _numpy_matmul_secs(workload.random_inputs(0)))
    rows = [("untuned TVM", untuned), ("autotune best", tuned), ("NumPy (BLAS)", numpy_secs)]
    print(f"\n{'kernel':<16}{'latency (ms)':>14}{'GFLOPS':>10}")
    for label, secs in rows:
        if secs:
            print(f"{label:<16}{ms_text(secs):>14}{gflops(workload, secs):>10.1f}")
    if result.best_latency:
        print(f"(autotune best and NumPy timed in turn just now; recorded while tuning: {ms_text(result.best_latency)} ms,"
              " the fastest moment of the tune)")
    if untuned and tuned:
        print(f"\nspeed-up over untuned: {untuned / tuned:.1f}x; tuned output checked against the untuned reference")
    print(f"database: {args.db or default_database_path()}")
    return 0


def cmd_cache_export(args: argparse.Namespace) -> int:
    with Database(args.db) as db:
        n = logs.export_log(db, args.out, workload=args.workload, target_key=args.target_key)
    print(f"wrote {n} trials to {args.out}")
    return 0


def cmd_cache_import(args: argparse.Namespace) -> int:
    expected = resolve_target(_target_spec(args.target)) if args.exact else None
    with Database(args.db) as db:
        for path in args.files:
            s = logs.import_log(db, path, expect_target=expected)
            print(f"{path}: {s.trials} trials read, {s.added} added, {s.skipped} already present "
                  f"({s.workloads} workloads, {s.targets} targets)")
    return 0


def cmd_cache_ls(args: argparse.Namespace) -> int:
    here = resolve_target(_target_spec(args.target)).key
    with Database(args.db) as db:
        rows = db.summary()
    if not rows:
        print(f"{args.db or default_database_path()}: no records")
        return 0
    print(f"{'workload':<28}{'key':<22}{'target':<24}{'trials':>8}{'ok':>6}{'best (ms)':>12}")
    for r in rows:
        best = ms_text(r["best_latency"]) if r["best_latency"] else "-"
        mark = " (this device)" if r["target_key"] == here else ""
        print(f"{(r['workload_name'] or '?')[:27]:<28}{r['workload_key']:<22}{r['target_key'] + mark:<24}"
              f"{r['trials']:>8}{r['ok']:>6}{best:>12}")
    return 0


def cmd_cache_stats(args: argparse.Namespace) -> int:
    with Database(args.db) as db:
        stats = db.stats()
    statuses = ", ".join(f"{n} {s}" for s, n in sorted(stats["by_status"].items())) or "none"
    origins = ", ".join(f"{n} from {o or '?'}" for o, n in sorted(stats["by_origin"].items())) or "none"
    print(f"database: {stats['path']} (schema {stats['schema']}, {stats['bytes'] / 1e6:.2f} MB)")
    print(f"workloads: {stats['workloads']}  targets: {stats['targets']}  cost models: {stats['models']}")
    print(f"trials: {stats['trials']} ({statuses})")
    print(f"origins: {origins}")
    return 0


def cmd_cache_prune(args: argparse.Namespace) -> int:
    with Database(args.db) as db:
        deleted = db.prune(args.keep)
    print(f"deleted {deleted} trials; kept the {args.keep} fastest correct ones per workload and target")
    return 0


def cmd_cache_import_ms(args: argparse.Namespace) -> int:
    from .metaschedule import RECORD_FILE, WORKLOAD_FILE, import_metaschedule

    folder = Path(args.dir)
    summary = import_metaschedule(folder / WORKLOAD_FILE, folder / RECORD_FILE, args.db, _target_spec(args.target))
    print(f"{folder}: {summary.read} MetaSchedule records read, {summary.added} added, "
          f"{summary.skipped} already present, {len(summary.rejected)} rejected")
    for reason in summary.rejected[:10]:
        print(f"  rejected: {reason}")
    return 0


def cmd_cache_export_ms(args: argparse.Namespace) -> int:
    from .metaschedule import export_metaschedule

    target = args.target_key or _target_spec(args.target)
    n = export_metaschedule(args.db, args.dir, target, overwrite=args.overwrite)
    print(f"wrote {n} records as a MetaSchedule JSON database in {args.dir}")
    return 0


def cmd_tune_model(args: argparse.Namespace) -> int:
    from .session import tune_model

    if args.trials is None and args.time is None:
        raise BudgetError("give a budget: --trials N and/or --time 2h")
    return _run_session(args, lambda on_progress: tune_model(
        args.model, target=_target_spec(args.target), trials=args.trials, time_budget=args.time, database=args.db,
        scheduler=args.scheduler, batch_size=args.batch_size, seed=args.seed, name=args.name, progress=on_progress,
        rpc=_rpc_options(args), fast_math=args.fast_math))


def cmd_resume(args: argparse.Namespace) -> int:
    from .session import tune_model

    return _run_session(args, lambda on_progress: tune_model(
        session=args.session, target=_target_spec(args.target), trials=args.trials, time_budget=args.time,
        database=args.db, progress=on_progress, rpc=_rpc_options(args)))


def cmd_compile_model(args: argparse.Namespace) -> int:
    from .evaluate import build_session, evaluate_session

    target = _target_spec(args.target)
    report = evaluate_session(args.session, args.db, target, reference=args.reference)
    _print_model_report(report)
    if args.out:
        executable, _, _ = build_session(args.session, args.db, target)
        vector_math.export_library(executable, args.out, resolve_target(target).target)
        print(f"wrote the tuned model to {args.out} (load with tvm.runtime.load_module + relax.VirtualMachine)")
    return 0 if report.correct else 1


def _print_model_report(report: Any) -> None:
    rows = [("untuned TVM", report.untuned_latency), ("autotune", report.tuned_latency),
            ("PyTorch eager", report.torch_latency)]
    print(f"\n{'model build':<16}{'latency (ms)':>14}{'vs untuned':>12}")
    for label, secs in rows:
        if secs:
            print(f"{label:<16}{ms_text(secs):>14}{report.untuned_latency / secs:>11.2f}x")
    checks = f"max error vs untuned {report.max_error_vs_untuned:.2g}"
    if report.max_error_vs_torch is not None:
        checks += f", vs PyTorch {report.max_error_vs_torch:.2g}"
    verdict = "outputs match" if report.correct else "OUTPUTS DIFFER"
    print(f"{len(report.applied)} kernels tuned, {len(report.untuned_kernels)} left untuned; {verdict} ({checks})")
    if report.fast_math:
        print("fast math: both TVM builds use TVM's approximations of softmax/exp/erf/tanh (tune-model --fast-math)")


def cmd_report(args: argparse.Namespace) -> int:
    from .report import write_report

    report = write_report(args.session, args.out, args.db)
    print(f"wrote {report.summary} and {len(report.plots)} plots in {args.out}")
    return 0


def cmd_sessions(args: argparse.Namespace) -> int:
    from .session import session_progress

    with Database(args.db) as db:
        rows = db.sessions()
        if not rows:
            print(f"{args.db or default_database_path()}: no sessions")
            return 0
        print(f"{'id':>4}  {'name':<20}{'status':<13}{'tasks':>6}{'trials':>14}{'time':>16}{'est. latency':>15}")
        for row in rows:
            p = session_progress(db, row["id"])
            budget = f"{p.trials_done}/{p.trials_budget}" if p.trials_budget else str(p.trials_done)
            spent = _duration(p.elapsed) + (f"/{_duration(p.time_budget)}" if p.time_budget else "")
            est = f"{ms_text(p.estimated_latency)} ms" if p.estimated_latency else "-"
            print(f"{row['id']:>4}  {row['name'][:19]:<20}{p.status:<13}{len(p.tasks):>6}{budget:>14}{spent:>16}{est:>15}")
    return 0


def cmd_fleet_status(args: argparse.Namespace) -> int:
    from .fleet import fleet_status

    queues = fleet_status(args.rpc)
    if not queues:
        print(f"the RPC tracker at {args.rpc} has no devices")
        return 0
    print(f"{'device key':<24}{'devices':>8}{'free':>6}{'waiting':>9}  servers")
    for q in queues:
        print(f"{q.key:<24}{q.total:>8}{q.free:>6}{q.pending:>9}  {', '.join(q.servers) or '-'}")
    return 0


def cmd_fleet_tracker(args: argparse.Namespace) -> int:
    from .fleet import UNAUTHENTICATED, run_tracker

    print(f"note: {UNAUTHENTICATED}", file=sys.stderr)
    run_tracker(args.host, args.port, on_ready=lambda where: print(f"RPC tracker listening on {where}", flush=True))
    return 0


def cmd_fleet_server(args: argparse.Namespace) -> int:
    from .fleet import UNAUTHENTICATED, serve

    if not args.rpc or not args.device_key:
        raise FleetError("a device server needs --rpc HOST:PORT (the tracker) and --device-key KEY")
    target = {"kind": "llvm", "num-cores": args.cores} if args.cores else None
    print(f"note: {UNAUTHENTICATED}", file=sys.stderr)
    serve(args.rpc, args.device_key, args.host, args.port, target=target, on_ready=lambda where: print(
        f"device server listening on {where}, registered as {args.device_key!r} with the tracker at {args.rpc}",
        flush=True))
    return 0


def cmd_fleet_describe(args: argparse.Namespace) -> int:
    from .fleet import describe_device

    target = {"kind": "llvm", "num-cores": args.cores} if args.cores else None
    print(json.dumps(describe_device(target), indent=2, sort_keys=True))
    return 0


def cmd_ops(args: argparse.Namespace) -> int:
    for spec in ops.OPERATORS.values():
        options = ", ".join(f"{k} ({v})" for k, v in spec.options.items()) or "-"
        default = ",".join(map(str, spec.default_shape))
        print(f"{spec.name:<18} shape {spec.shape_help:<16} default {default:<22} options: {options}")
    return 0


# ---------------------------------------------------------------------------------------------
# helpers


def _tune_with_bar(
    workload: Workload, target: str | None, trials: int, db: str | None, seed: int | None, similar: bool = False,
    rpc: Any = None,
) -> TuneResult:
    from tqdm import tqdm

    from .tuner import measurement_target

    hw, _ = measurement_target(_target_spec(target), None, rpc)  # bad input fails before the bar is drawn
    check_budget(trials)
    if rpc is not None:
        print(f"measuring on the devices {rpc.device_key!r} of {rpc.tracker} (target key {hw.key})")
    with tqdm(total=trials, unit="trial", desc=workload.name, dynamic_ncols=True) as bar:

        def on_progress(p: Progress) -> None:
            bar.update(1)
            if p.best_latency:
                bar.set_postfix_str(f"best {ms_text(p.best_latency)} ms, {p.best_gflops or 0:.1f} GFLOPS")

        return tune(workload, hw, trials, db, seed=seed, progress=on_progress, similar=similar, rpc=rpc)


def _rpc_options(args: argparse.Namespace) -> Any:
    """RpcOptions from --rpc/--device-key/..., or None to measure on this machine."""
    if not getattr(args, "rpc", None) and not getattr(args, "device_key", None):
        return None
    if not args.rpc or not args.device_key:
        raise FleetError("measuring on a fleet needs both --rpc HOST:PORT and --device-key KEY")
    from .fleet import RpcOptions

    return RpcOptions(args.rpc, args.device_key, device_target=args.device_target,
                      cross_compiler=args.cross_compiler, device_wait=args.device_wait)


def _run_session(args: argparse.Namespace, start: Any) -> int:
    """Run (or resume) a session with a live per-task table; Ctrl-C stops it with a summary."""
    from .session import SessionProgress

    last: list[SessionProgress] = []

    def on_progress(p: SessionProgress) -> None:
        last[:] = [p]
        print(_session_table(p), flush=True)

    try:
        final = start(on_progress)
    except KeyboardInterrupt:
        if last:
            print(_session_table(last[0]))
            print(f"stopped; resume with: autotune resume {last[0].session_id}", file=sys.stderr)
        raise
    print(_session_table(final))
    print(f"session {final.session_id} {final.status}; database: {args.db or default_database_path()}")
    if getattr(args, "evaluate", True) and getattr(args, "rpc", None):
        print("the whole model is not evaluated here: its kernels were tuned for the fleet's devices")
    elif getattr(args, "evaluate", True):
        from .evaluate import evaluate_session

        report = evaluate_session(final.session_id, args.db, _target_spec(args.target))
        _print_model_report(report)
        return 0 if report.correct else 1
    return 0


def _session_table(p: Any) -> str:
    """The per-task table: trials, best latency, GFLOPS and share of the estimated model latency."""
    total = p.estimated_latency
    budget = f"/{p.trials_budget}" if p.trials_budget else ""
    time_budget = f"/{_duration(p.time_budget)}" if p.time_budget else ""
    lines = [f"session {p.session_id} [{p.status}]: {p.trials_done}{budget} trials, {_duration(p.elapsed)}{time_budget}"
             + (f", estimated model latency {ms_text(total)} ms" if total else "")
             + (f" (last: {p.last_task})" if p.last_task else ""),
             f"  {'task':<34}{'weight':>7}{'trials':>8}{'best (ms)':>12}{'GFLOPS':>9}{'share':>8}"]
    for t in p.tasks:
        best = ms_text(t.best_latency) if t.best_latency else "-"
        rate = f"{t.gflops:.1f}" if t.gflops else "-"
        share = f"{t.contribution / total:.0%}" if total and t.contribution is not None else "-"
        lines.append(f"  {t.name[:33]:<34}{t.weight:>7}{t.trials:>8}{best:>12}{rate:>9}{share:>8}")
    return "\n".join(lines)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


def _print_result(result: TuneResult, db: str | None) -> None:
    counts = ", ".join(f"{n} {s}" for s, n in sorted(result.counts().items()))
    rate = len(result.trials) / result.wall_secs if result.wall_secs else 0.0
    print(f"{len(result.trials)} trials in {result.wall_secs:.1f} s ({rate:.2f} trials/s): {counts or 'none'}")
    if result.best is None:
        print("no correct candidate found")
        return
    print(_describe_best(result.workload, result.best))
    if result.remeasured_latency:
        print(f"re-measured (fresh build) before reporting: {ms_text(result.remeasured_latency)} ms")
    print(f"database: {db or default_database_path()}  target key: {result.target.key}")


def _describe_best(workload: Workload, best: TrialRecord) -> str:
    rate = gflops(workload, best.latency)
    spread = f" ± {ms_text(best.latency_std)}" if best.latency_std else ""
    perf = f", {rate:.1f} GFLOPS" if rate else ""
    return f"{workload.name}: best {ms_text(best.latency)}{spread} ms{perf} (candidate {best.candidate_key})"


def _untuned_latency(result: TuneResult, db_path: str | None) -> float | None:
    default_key = SearchSpace(result.workload).default_candidate().key
    with Database(db_path) as db:
        for record in db.trials(result.workload.key, result.target.key):
            if record.candidate_key == default_key and record.latency:
                return record.latency
    return None


def _timed_with_numpy(result: TuneResult, rounds: int = 5) -> tuple[float, float]:
    """The tuned matmul and NumPy's, timed in turn in this process: medians over `rounds` rounds.

    Why side by side: these VMs change speed from one second to the next, and the recorded best
    latency is the fastest moment of the tune (bench/RESULTS.md, "Why recorded latencies are lower
    than re-timed ones"), so NumPy timed afterwards would be compared with a lucky moment.
    """
    import tvm

    # Before the first parallel kernel of this process starts TVM's thread pool: its default on x86 is half the cores.
    os.environ.setdefault("TVM_NUM_THREADS", str(result.target.num_cores))
    lib = vector_math.build(result.mod, result.target.target)
    arrays = result.workload.random_inputs(0)
    tensors = [tvm.runtime.tensor(a, tvm.cpu()) for a in arrays]
    timing = MeasureOptions()  # as the runner times a candidate
    evaluator = lib.mod.time_evaluator("main", tvm.cpu(), number=1, repeat=timing.repeat,
                                       min_repeat_ms=timing.min_repeat_ms)
    tuned, blas = [], []
    for _ in range(rounds):
        tuned.append(statistics.median(evaluator(*tensors).results))
        blas.append(_numpy_matmul_secs(arrays))
    return statistics.median(tuned), statistics.median(blas)


def _numpy_matmul_secs(arrays: list[np.ndarray], repeat: int = 20) -> float:
    """Median seconds of NumPy's `a @ b` on the matmul's arguments (a, b, c)."""
    a, b, _ = arrays
    a @ b
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def _workload(args: argparse.Namespace) -> Workload:
    options = dict(_parse_option(o) for o in args.option)
    return ops.make(args.op, args.shape, args.dtype, **options)


def _parse_option(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ShapeError(f"option {text!r} must look like KEY=VALUE (e.g. bias=true)")
    return key.replace("-", "_"), value


def _target_spec(text: str | None) -> Any:
    if text is None:
        return "llvm"
    stripped = text.strip()
    if stripped.startswith("{"):
        try:
            return json.loads(stripped)
        except json.JSONDecodeError as err:
            from .errors import TargetError

            raise TargetError(f"--target JSON is malformed: {err}") from None
    return stripped


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="autotune", description="Tune tensor-operator schedules with TVM.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--db", help=f"SQLite database (default: $AUTOTUNE_DB or {default_database_path()})")
    common.add_argument("--target", help="'llvm' (this CPU, default) or a JSON target dict")
    workload = argparse.ArgumentParser(add_help=False)
    workload.add_argument("op", help="built-in operator (see `autotune ops`)")
    workload.add_argument("--shape", help="comma-separated sizes, e.g. 512,512,512 (default: the operator's)")
    workload.add_argument("--dtype", default="float32")
    workload.add_argument("-o", "--option", action="append", default=[], help="operator option KEY=VALUE, repeatable")
    workload.add_argument("--space", default="cpu", help="search-space family or TOML path (default: cpu)")

    fleet = argparse.ArgumentParser(add_help=False)
    fleet.add_argument("--rpc", metavar="HOST:PORT", help="measure on the devices of this TVM RPC tracker")
    fleet.add_argument("--device-key", metavar="KEY", help="the tracker's key for the devices to measure on")
    fleet.add_argument("--device-target", metavar="FILE",
                       help="the devices' hardware (JSON of `autotune fleet describe`) when they do not report it")
    fleet.add_argument("--cross-compiler", metavar="CC", help="compiler that links libraries for the devices")
    fleet.add_argument("--device-wait", type=float, default=120.0, metavar="SECONDS",
                       help="how long to wait for a free device before giving up (default 120)")

    p = sub.add_parser("tune", parents=[common, workload, fleet], help="tune a built-in operator and cache the results")
    p.add_argument("--trials", type=int, default=64)
    p.add_argument("--seed", type=int)
    p.add_argument("--similar", action="store_true",
                   help="start from the records of the most similar other device (measured here before use)")
    p.set_defaults(run=cmd_tune)
    p = sub.add_parser("best", parents=[common, workload], help="show the best cached schedule of an operator")
    p.add_argument("--show", action="store_true", help="print the scheduled TVMScript")
    p.set_defaults(run=cmd_best)
    p = sub.add_parser("demo", parents=[common], help=f"tune a {DEMO_OP} {DEMO_SHAPE} for about a minute")
    p.add_argument("--trials", type=int, default=DEMO_TRIALS)
    p.add_argument("--seed", type=int)
    p.set_defaults(run=cmd_demo)
    p = sub.add_parser("ops", help="list the built-in operators")
    p.set_defaults(run=cmd_ops)
    p = sub.add_parser("tune-model", parents=[common, fleet], help="tune a whole model (.onnx or .pt2 file) as a session")
    p.add_argument("model", help="an .onnx file or a torch.export .pt2 file")
    _session_budget(p)
    p.add_argument("--scheduler", default="gradient", help="task scheduler: gradient (default) or round-robin")
    p.add_argument("--batch-size", type=int, default=16, help="trials per batch given to one task")
    p.add_argument("--seed", type=int)
    p.add_argument("--name", help="session name (default: the model file's name)")
    p.add_argument("--fast-math", action="store_true",
                   help="lower softmax/exp/erf/tanh to TVM's fast float32 approximations (exp: within 1e-5 relative, tests/test_ops.py)")
    p.set_defaults(run=cmd_tune_model)
    p = sub.add_parser("resume", parents=[common, fleet], help="continue a stopped or killed session")
    p.add_argument("session", type=int, metavar="SESSION")
    _session_budget(p)
    p.set_defaults(run=cmd_resume)
    p = sub.add_parser("compile-model", parents=[common],
                       help="build a session's model with its best kernels; time it against the untuned build")
    p.add_argument("session", type=int, metavar="SESSION")
    p.add_argument("--out", help="also write the tuned model as a shared library")
    p.add_argument("--reference", help="a torch.export .pt2 file to compare with (default: the session's .pt2 source)")
    p.set_defaults(run=cmd_compile_model)
    p = sub.add_parser("report", parents=[common], help="write plots and a Markdown summary of a session")
    p.add_argument("session", type=int, metavar="SESSION")
    p.add_argument("--out", required=True, help="directory for summary.md and the PNG plots")
    p.set_defaults(run=cmd_report)
    p = sub.add_parser("sessions", parents=[common], help="list model-tuning sessions")
    p.set_defaults(run=cmd_sessions)
    _cache_parser(sub, common)
    _fleet_parser(sub)
    return parser


def _fleet_parser(sub: Any) -> None:
    from .fleet import DEFAULT_TRACKER_PORT, LOOPBACK

    tracker = f"{LOOPBACK}:{DEFAULT_TRACKER_PORT}"
    p = sub.add_parser("fleet", help="a fleet of devices behind a TVM RPC tracker: status, tracker, server, describe")
    p.set_defaults(run=lambda args: p.print_help() or 2)
    actions = p.add_subparsers(dest="fleet_command", metavar="ACTION")
    a = actions.add_parser("status", help="the tracker's device keys: devices, free, waiting requests")
    a.add_argument("--rpc", default=tracker, metavar="HOST:PORT", help=f"the tracker (default {tracker})")
    a.set_defaults(run=cmd_fleet_status)
    a = actions.add_parser("tracker", help="run a TVM RPC tracker (bound to loopback unless --host says otherwise)")
    a.add_argument("--host", default=LOOPBACK, help=f"address to bind (default {LOOPBACK}; RPC has no authentication)")
    a.add_argument("--port", type=int, default=DEFAULT_TRACKER_PORT)
    a.set_defaults(run=cmd_fleet_tracker)
    a = actions.add_parser("server", help="serve this machine as a device of the fleet (TVM RPC server)")
    a.add_argument("--rpc", metavar="HOST:PORT", help="the tracker to register with")
    a.add_argument("--device-key", metavar="KEY", help="the key this device is registered under")
    a.add_argument("--host", default=LOOPBACK, help=f"address to bind (default {LOOPBACK}; RPC has no authentication)")
    a.add_argument("--port", type=int, default=9090, help="first port to try (default 9090)")
    a.add_argument("--cores", type=int, help="threads the kernels use (default: this machine's cores)")
    a.set_defaults(run=cmd_fleet_server)
    a = actions.add_parser("describe", help="print this machine's target and fingerprint (for --device-target)")
    a.add_argument("--cores", type=int, help="threads the kernels will use (default: this machine's cores)")
    a.set_defaults(run=cmd_fleet_describe)


def _session_budget(p: argparse.ArgumentParser) -> None:
    p.add_argument("--trials", type=int, help="total trials for the session")
    p.add_argument("--time", help="total wall time for the session, e.g. 90m, 2h, 1h30m")
    p.add_argument("--no-evaluate", dest="evaluate", action="store_false",
                   help="skip building and timing the whole model at the end")


def _cache_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("cache", help="export, import, list, count and prune the cached records")
    p.set_defaults(run=lambda args: p.print_help() or 2)
    actions = p.add_subparsers(dest="cache_command", metavar="ACTION")
    a = actions.add_parser("export", parents=[common], help="write records as a JSON-lines log")
    a.add_argument("--out", required=True, help="log file to write (JSON lines)")
    a.add_argument("--workload", help="only this workload (key or name)")
    a.add_argument("--target-key", help="only this hardware target key")
    a.set_defaults(run=cmd_cache_export)
    a = actions.add_parser("import", parents=[common], help="merge logs into the database (idempotent)")
    a.add_argument("files", nargs="+", metavar="FILE")
    a.add_argument("--exact", action="store_true",
                   help="refuse (importing nothing) a log holding records of any device but --target (this machine)")
    a.set_defaults(run=cmd_cache_import)
    a = actions.add_parser("ls", parents=[common], help="workloads and targets with record counts and best latency")
    a.set_defaults(run=cmd_cache_ls)
    a = actions.add_parser("stats", parents=[common], help="totals: workloads, targets, trials by status and origin")
    a.set_defaults(run=cmd_cache_stats)
    a = actions.add_parser("prune", parents=[common], help="keep the N fastest correct trials per workload and target")
    a.add_argument("--keep", type=int, required=True, metavar="N")
    a.set_defaults(run=cmd_cache_prune)
    a = actions.add_parser("import-ms", parents=[common],
                           help="merge a MetaSchedule JSON database (DIR/database_*.json) tuned on --target")
    a.add_argument("dir", metavar="DIR")
    a.set_defaults(run=cmd_cache_import_ms)
    a = actions.add_parser("export-ms", parents=[common], help="write one target's records as a MetaSchedule JSON database")
    a.add_argument("dir", metavar="DIR")
    a.add_argument("--target-key", help="a stored target key (default: --target, this machine)")
    a.add_argument("--overwrite", action="store_true", help="replace MetaSchedule files already in DIR")
    a.set_defaults(run=cmd_cache_export_ms)


if __name__ == "__main__":
    sys.exit(main())
