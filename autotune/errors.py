"""Exceptions raised for user mistakes. Per-candidate failures are data (trial statuses), not exceptions."""


def last_line(err: BaseException) -> str:
    """The last line of an exception's text: where TVM puts the actual message of its multi-line errors."""
    lines = str(err).strip().splitlines()
    return lines[-1] if lines else type(err).__name__


class AutotuneError(Exception):
    """Base class of every error autotune raises on purpose; its message is one clear line."""


class WorkloadError(AutotuneError):
    """The workload cannot be tuned: wrong type, symbolic shapes, unsupported dtype, several functions."""


class UnknownOperatorError(AutotuneError):
    """A built-in operator name that `autotune.ops` does not know."""


class ShapeError(AutotuneError):
    """A shape or option that does not fit the operator."""


class TargetError(AutotuneError):
    """A target that cannot be resolved or is not supported."""


class SearchSpaceError(AutotuneError):
    """A search-space file (search_spaces/*.toml) that is missing, malformed or names an unknown key."""


class DatabaseError(AutotuneError):
    """A database that cannot be opened, is not ours, or comes from a newer schema version."""


class BudgetError(AutotuneError):
    """An impossible tuning budget (for example a trial count below one)."""


class LogError(AutotuneError):
    """A tuning log that cannot be imported: malformed or truncated line, newer format, keys that lie."""


class ModelError(AutotuneError):
    """A model that cannot be loaded or has nothing to tune; a session that cannot be resumed."""


class FleetError(AutotuneError):
    """A fleet that cannot be used: tracker unreachable, no device under the key, devices that differ."""
