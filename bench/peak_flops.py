"""The machine's float32 FMA peak: what no kernel can beat, to read the GFLOPS of compare.py against.

    python bench/peak_flops.py            # prints a table: GFLOPS on 1 core and on every core
    python bench/peak_flops.py --write bench/RESULTS.md

A C loop of independent fused multiply-adds on SIMD registers of the target's width (from
autotune's `VectorRegisters` of this host's llvm target), no memory traffic, compiled here with
the system C compiler (`cc -O2 -march=native`, OpenMP for the threads). Each thread keeps half
the register file as accumulators: enough independent chains to cover the FMA latency on the
CPUs we know (4 cycles, 2 pipes: 8 chains). Best of several repeats.

Why: a ratio to another tool is bounded by how close both come to this peak. A matmul that
runs at 90% of it cannot be beaten 2x by anyone.
"""

from __future__ import annotations

import argparse
import atexit
import datetime
import functools
import os
import shutil
import subprocess
import sys
import tempfile

import autotune

SOURCE = r"""
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <omp.h>
typedef float vec __attribute__((vector_size(VBYTES)));
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec * 1e-9; }
int main(int argc, char **argv) {
  long steps = atol(argv[1]);
  double best = 0.0;
  float sink = 0.0f;
  for (int rep = 0; rep < 5; rep++) {
    double start = now();
    #pragma omp parallel reduction(+:sink)
    {
      vec acc[CHAINS], x, y;
      for (int l = 0; l < VBYTES / 4; l++) { x[l] = 1.0000001f; y[l] = 0.9999999f; }
      for (int i = 0; i < CHAINS; i++) for (int l = 0; l < VBYTES / 4; l++) acc[i][l] = (float)(i + omp_get_thread_num());
      for (long n = 0; n < steps; n++) {
        #pragma GCC unroll 64
        for (int i = 0; i < CHAINS; i++) acc[i] = acc[i] * x + y;
      }
      for (int i = 0; i < CHAINS; i++) for (int l = 0; l < VBYTES / 4; l++) sink += acc[i][l];
    }
    double secs = now() - start;
    double flops = 2.0 * omp_get_max_threads() * (double)steps * CHAINS * (VBYTES / 4);
    if (flops / secs > best) best = flops / secs;
  }
  printf("%.3f %g\n", best / 1e9, sink);
  return 0;
}
"""


def measure(binary: str, threads: int, steps: int) -> float:
    """Best GFLOPS of the compiled loop with `threads` OpenMP threads."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), OMP_PROC_BIND="spread")
    out = subprocess.run([binary, str(steps)], env=env, check=True, capture_output=True, text=True).stdout
    return float(out.split()[0])


@functools.lru_cache(maxsize=None)
def probe_binary(vector_bytes: int, chains: int) -> str | None:
    """The FMA loop compiled once per process (removed at exit), or None without a C compiler."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        return None
    tmp = tempfile.mkdtemp(prefix="peak-flops-")
    atexit.register(shutil.rmtree, tmp, True)
    source, binary = os.path.join(tmp, "peak.c"), os.path.join(tmp, "peak")
    with open(source, "w") as f:
        f.write(SOURCE)
    subprocess.run([compiler, "-O2", "-march=native", "-ffp-contract=fast", "-fopenmp",
                    f"-DVBYTES={vector_bytes}", f"-DCHAINS={chains}", source, "-o", binary], check=True)
    return binary


def peak_gflops(hw: autotune.HardwareTarget, threads: int | None = None, steps: int = 5_000_000) -> float | None:
    """The FMA peak now, on `threads` threads (default: the target's cores); None where it cannot be measured.

    Short by default (about 0.1 s at full speed), for benchmarks to say how fast the machine was
    when they timed something: on shared VMs that changes within seconds.
    """
    registers = hw.vector_registers
    binary = probe_binary(registers.bytes, registers.count // 2) if registers else None
    return measure(binary, threads or hw.num_cores, steps) if binary else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20_000_000, help="loop steps per thread and repeat")
    parser.add_argument("--write", metavar="PATH", help="append the table to a Markdown file")
    args = parser.parse_args(argv)
    hw = autotune.resolve_target("llvm")
    registers = hw.vector_registers
    one = peak_gflops(hw, 1, args.steps)
    if registers is None or one is None:
        print("peak_flops: needs a CPU target autotune knows the registers of, and a C compiler", file=sys.stderr)
        return 2
    chains = registers.count // 2
    every = peak_gflops(hw, hw.num_cores, args.steps)
    text = (f"## peak_flops: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC\n\n"
            f"- machine: mcpu `{hw.target.attrs.get('mcpu', '?')}`, {hw.num_cores} cores; {registers.count} vector "
            f"registers of {registers.bytes} bytes; {chains} FMA chains per thread, float32\n\n"
            "| threads | GFLOPS |\n|---|---|\n"
            f"| 1 | {one:.1f} |\n| {hw.num_cores} | {every:.1f} |\n")
    print(text)
    if args.write:
        with open(args.write, "a", encoding="utf-8") as f:
            f.write("\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
