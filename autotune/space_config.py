"""Rule parameters of the search space, read from `search_spaces/<family>.toml`.

The rules themselves live in search_space.py; their parameter domains live in TOML so that a
user can adapt the space to new hardware without touching code. A bad file gets a clear error
naming the offending key.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import SearchSpaceError

SEARCH_SPACES_ENV = "AUTOTUNE_SEARCH_SPACES"

# section -> key -> (python type, element type for lists or None)
_SCHEMA: dict[str, dict[str, tuple[type, type | None]]] = {
    "tiling": {
        "structure": (str, None),
        "max_innermost_factor": (int, None),
        "vector_factors": (list, int),
        "vector_factor_probability": (float, None),
        "write_levels": (list, int),
        "accumulator_scopes": (list, str),
        "vector_axes": (str, None),
        "max_transposed_register_tile": (int, None),
        "accumulator_register_share": (float, None),
        "pack_levels": (list, int),
        "panel_pack_probability": (float, None),
        "padded_tile_probability": (float, None),
        "padded_inner_factors": (list, int),
        "max_padding_waste": (float, None),
        "unvectorized_tile_probability": (float, None),
        "micro_kernel_probability": (float, None),
        "vector_tails": (bool, None),
    },
    "loops": {"vector_factors": (list, int), "vector_tails": (bool, None), "reduction_vector_factors": (list, int)},
    "compute_location": {"enabled": (bool, None)},
    "parallel": {"min_iterations_per_core": (int, None)},
    "unroll": {"max_steps": (list, int), "weights": (list, float)},
}


@dataclass(frozen=True)
class SpaceConfig:
    """Parameter domains of the scheduling rules (see search_spaces/cpu.toml for their meaning)."""

    structure: str
    max_innermost_factor: int
    vector_factors: tuple[int, ...]
    vector_factor_probability: float
    write_levels: tuple[int, ...]
    accumulator_scopes: tuple[str, ...]
    vector_axes: str  # "last": only the last spatial loop is vectorized; "any": any whose extent allows it
    max_transposed_register_tile: int  # register tile elements when another axis than the last is vectorized
    accumulator_register_share: float  # draws keep a register tile's accumulators in this share of the SIMD registers
    pack_levels: tuple[int, ...]  # 0: no packing; L: strided operands packed after the L-th letter's loops
    panel_pack_probability: float  # draws pack contiguous panels (a matmul's B[k, j]) this often
    padded_tile_probability: float  # draws give a non-vector loop an innermost tile that does not divide it this often
    padded_inner_factors: tuple[int, ...]  # the innermost tiles such draws choose from
    max_padding_waste: float  # ... when the iterations the last tile runs past the extent are at most this share
    unvectorized_tile_probability: float  # draws leave a tiled block's vectorization to LLVM this often
    micro_kernel_probability: float  # mutations of a tiled block redraw its register kernel whole this often
    vector_tails: bool  # whether the vector loop may be tiled by a width that does not divide it (with a scalar tail)
    loop_vector_factors: tuple[int, ...]
    loop_vector_tails: bool  # whether a width that does not divide the loop may be drawn (with a scalar tail)
    reduction_vector_factors: tuple[int, ...]
    compute_location: bool
    min_parallel_per_core: int  # draws give a block's parallel loop at least cores x this many iterations
    unroll_steps: tuple[int, ...]
    unroll_weights: tuple[float, ...]  # relative draw weights of unroll_steps
    source: str

    @property
    def spatial_levels(self) -> int:
        return self.structure.count("S")

    @property
    def reduction_levels(self) -> int:
        return self.structure.count("R")


def search_spaces_dir() -> Path:
    """Folder of the shipped TOML files: $AUTOTUNE_SEARCH_SPACES, else the checkout's search_spaces/."""
    env = os.environ.get(SEARCH_SPACES_ENV)
    return Path(env) if env else Path(__file__).resolve().parents[1] / "search_spaces"


def load_space_config(family_or_path: str | os.PathLike = "cpu") -> SpaceConfig:
    """Read and validate a search-space file: a family name ("cpu") or a path to a .toml file."""
    path = Path(family_or_path)
    if path.suffix != ".toml":
        path = search_spaces_dir() / f"{family_or_path}.toml"
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise SearchSpaceError(f"search-space file not found: {path}") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
        raise SearchSpaceError(f"cannot read search-space file {path}: {err}") from None
    _validate(data, path)
    return _to_config(data, path)


def _validate(data: dict[str, Any], path: Path) -> None:
    for section, keys in data.items():
        if section not in _SCHEMA:
            raise SearchSpaceError(f"{path}: unknown section [{section}] (known: {', '.join(_SCHEMA)})")
        if not isinstance(keys, dict):
            raise SearchSpaceError(f"{path}: [{section}] must be a table")
        for key, value in keys.items():
            if key not in _SCHEMA[section]:
                raise SearchSpaceError(f"{path}: unknown key {section}.{key} (known: {', '.join(_SCHEMA[section])})")
            _check_type(f"{section}.{key}", value, *_SCHEMA[section][key], path=path)
    for section, keys in _SCHEMA.items():
        for key in keys:
            if key not in data.get(section, {}):
                raise SearchSpaceError(f"{path}: missing key {section}.{key}")
    _check_values(data, path)


def _check_type(name: str, value: Any, kind: type, item: type | None, path: Path) -> None:
    ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        ok = True
    if ok and kind is list:
        items = (int, float) if item is float else item  # a weight may be written 2 as well as 2.0
        ok = bool(value) and all(isinstance(v, items) and not isinstance(v, bool) for v in value)
    if not ok:
        expected = f"a non-empty list of {item.__name__}" if kind is list and item else kind.__name__
        raise SearchSpaceError(f"{path}: {name} must be {expected}, got {value!r}")


def _check_values(data: dict[str, Any], path: Path) -> None:
    tiling = data["tiling"]
    structure = tiling["structure"]
    if set(structure) - {"S", "R"} or not structure.startswith("S") or "R" not in structure:
        raise SearchSpaceError(f"{path}: tiling.structure must be S/R letters starting with S, got {structure!r}")
    problems = {
        "tiling.max_innermost_factor": tiling["max_innermost_factor"] < 1,
        "tiling.vector_factors": min(tiling["vector_factors"]) < 1,
        "tiling.vector_factor_probability": not 0.0 <= tiling["vector_factor_probability"] <= 1.0,
        "tiling.write_levels": not all(1 <= v < structure.count("S") for v in tiling["write_levels"]),
        "tiling.accumulator_scopes": not set(tiling["accumulator_scopes"]) <= {"local", "global"},
        "tiling.vector_axes": tiling["vector_axes"] not in ("last", "any"),
        "tiling.max_transposed_register_tile": tiling["max_transposed_register_tile"] < 1,
        "tiling.accumulator_register_share": not 0.0 <= tiling["accumulator_register_share"] <= 1.0,
        "tiling.pack_levels": not all(0 <= v < len(structure) for v in tiling["pack_levels"]),
        "tiling.panel_pack_probability": not 0.0 <= tiling["panel_pack_probability"] <= 1.0,
        "tiling.padded_tile_probability": not 0.0 <= tiling["padded_tile_probability"] <= 1.0,
        "tiling.padded_inner_factors": min(tiling["padded_inner_factors"], default=2) < 2,
        "tiling.max_padding_waste": not 0.0 <= tiling["max_padding_waste"] < 1.0,
        "tiling.unvectorized_tile_probability": not 0.0 <= tiling["unvectorized_tile_probability"] <= 1.0,
        "tiling.micro_kernel_probability": not 0.0 <= tiling["micro_kernel_probability"] <= 1.0,
        "loops.vector_factors": min(data["loops"]["vector_factors"]) < 1,
        "loops.reduction_vector_factors": min(data["loops"]["reduction_vector_factors"]) < 1,
        "unroll.max_steps": min(data["unroll"]["max_steps"]) < 0,
        "unroll.weights": (len(data["unroll"]["weights"]) != len(data["unroll"]["max_steps"])
                           or min(data["unroll"]["weights"]) < 0 or sum(data["unroll"]["weights"]) <= 0),
        "parallel.min_iterations_per_core": data["parallel"]["min_iterations_per_core"] < 1,
    }
    for key, bad in problems.items():
        if bad:
            section, name = key.split(".")
            raise SearchSpaceError(f"{path}: {key} has an invalid value {data[section][name]!r}")


def _to_config(data: dict[str, Any], path: Path) -> SpaceConfig:
    tiling = data["tiling"]
    return SpaceConfig(
        structure=tiling["structure"],
        max_innermost_factor=tiling["max_innermost_factor"],
        vector_factors=tuple(tiling["vector_factors"]),
        vector_factor_probability=float(tiling["vector_factor_probability"]),
        write_levels=tuple(tiling["write_levels"]),
        accumulator_scopes=tuple(tiling["accumulator_scopes"]),
        vector_axes=tiling["vector_axes"],
        max_transposed_register_tile=tiling["max_transposed_register_tile"],
        accumulator_register_share=float(tiling["accumulator_register_share"]),
        pack_levels=tuple(tiling["pack_levels"]),
        panel_pack_probability=float(tiling["panel_pack_probability"]),
        padded_tile_probability=float(tiling["padded_tile_probability"]),
        padded_inner_factors=tuple(tiling["padded_inner_factors"]),
        max_padding_waste=float(tiling["max_padding_waste"]),
        unvectorized_tile_probability=float(tiling["unvectorized_tile_probability"]),
        micro_kernel_probability=float(tiling["micro_kernel_probability"]),
        vector_tails=tiling["vector_tails"],
        loop_vector_factors=tuple(data["loops"]["vector_factors"]),
        loop_vector_tails=data["loops"]["vector_tails"],
        reduction_vector_factors=tuple(data["loops"]["reduction_vector_factors"]),
        compute_location=data["compute_location"]["enabled"],
        min_parallel_per_core=data["parallel"]["min_iterations_per_core"],
        unroll_steps=tuple(data["unroll"]["max_steps"]),
        unroll_weights=tuple(float(w) for w in data["unroll"]["weights"]),
        source=str(path),
    )
