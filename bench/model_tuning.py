"""Whole models at a fixed trial budget: end-to-end latency untuned vs tuned vs PyTorch eager.

Two models built here in PyTorch with random weights: a ResNet-style stack (a 3×3 stem and two
residual blocks of two 3×3 convolutions, 64 channels, 56×56) and a transformer encoder layer
(d_model 256, 4 heads, FFN 1024, sequence 128, post-norm, GELU). Each is tuned as a session
(`autotune.tune_model`, default gradient scheduler and model-guided search) into a fresh
temporary database, then `autotune.evaluate_session` builds it tuned and untuned, times both end
to end in a worker (TVM threads = cores) and PyTorch eager in another, and checks the outputs.

    python bench/model_tuning.py --trials 200
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import torch

import autotune


class ResidualBlock(torch.nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.conv2(torch.relu(self.conv1(x))))


class ResNetStack(torch.nn.Module):
    def __init__(self, channels: int = 64, blocks: int = 2):
        super().__init__()
        self.stem = torch.nn.Conv2d(3, channels, 3, padding=1)
        self.blocks = torch.nn.Sequential(*[ResidualBlock(channels) for _ in range(blocks)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(torch.relu(self.stem(x)))


class EncoderLayer(torch.nn.Module):
    """A post-norm transformer encoder layer written out in plain ops (what torch.export sees)."""

    def __init__(self, d_model: int = 256, heads: int = 4, ffn: int = 1024):
        super().__init__()
        self.heads = heads
        self.qkv, self.out = torch.nn.Linear(d_model, 3 * d_model), torch.nn.Linear(d_model, d_model)
        self.norm1, self.norm2 = torch.nn.LayerNorm(d_model), torch.nn.LayerNorm(d_model)
        self.ffn1, self.ffn2 = torch.nn.Linear(d_model, ffn), torch.nn.Linear(ffn, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, d = x.shape
        q, k, v = self.qkv(x).reshape(b, s, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        attention = torch.softmax(q @ k.transpose(-1, -2) / (d // self.heads) ** 0.5, dim=-1)
        y = (attention @ v).transpose(1, 2).reshape(b, s, d)
        x = self.norm1(x + self.out(y))
        return self.norm2(x + self.ffn2(torch.nn.functional.gelu(self.ffn1(x))))


MODELS = {
    "resnet_stack": (ResNetStack, (1, 3, 56, 56)),
    "encoder_layer": (EncoderLayer, (1, 128, 256)),
}


def run(name: str, trials: int, seed: int, workdir: Path) -> tuple:
    torch.manual_seed(seed)
    make, shape = MODELS[name]
    net, x = make().eval(), torch.randn(*shape)
    db = workdir / f"{name}.db"
    start = time.perf_counter()
    session = autotune.tune_model(net, example_inputs=(x,), trials=trials, database=db, seed=seed, name=name)
    wall = time.perf_counter() - start
    report = autotune.evaluate_session(session.session_id, db, reference=net)
    return name, len(session.tasks), session.trials_done, wall, report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=200, help="trials per model")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="autotune-bench-") as tmp:
        rows = [run(name, args.trials, args.seed, Path(tmp)) for name in args.models]
    hw = autotune.resolve_target("llvm")
    print(f"\nautotune {autotune.__version__}, {hw.fingerprint.get('model_name')} ({hw.target.attrs.get('mcpu')}), "
          f"{hw.num_cores} cores, torch {torch.__version__}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print(f"{'model':<16}{'tasks':>6}{'trials':>8}{'tuning':>9}{'untuned ms':>12}{'tuned ms':>10}"
          f"{'PyTorch ms':>12}{'vs untuned':>12}{'vs PyTorch':>12}{'correct':>9}")
    for name, n_tasks, trials, wall, r in rows:
        print(f"{name:<16}{n_tasks:>6}{trials:>8}{wall / 60:>8.1f}m{r.untuned_latency * 1e3:>12.3f}"
              f"{r.tuned_latency * 1e3:>10.3f}{r.torch_latency * 1e3:>12.3f}{r.speedup:>11.1f}x"
              f"{r.torch_latency / r.tuned_latency:>11.2f}x{str(r.correct):>9}")
    print(f"({platform.python_version()}; 'vs PyTorch' > 1 means autotune's build is faster)")


if __name__ == "__main__":
    main()
