"""``loops.compilation_cache``: keep compiled programs across processes.

Owns: the engine-neutral switch (the engine decides what it can keep, through
``compilation_cache`` in ``loops.backends.protocol``). May import: ``loops.backends``.
"""

from __future__ import annotations

import os

from loops import backends


def compilation_cache(directory: str | os.PathLike[str] | None = None) -> str | None:
    """Keeps the engine's compiled programs on disk, so the next process
    (a test run, a restarted notebook, the next run of a sweep) starts faster.

    - jax: jax's persistent compilation cache, for every program (the steps,
      and the per-op programs of eager code: a custom step that falls back to
      an eager first step, ``run_eagerly``, ``Trainer.check``).
    - tensorflow, torch: nothing to keep (their steps are traced per process;
      ``torch.compile`` has its own cache): returns None, changes nothing.

    Call it once, before training. Off by default (it writes to disk).

    Args:
        directory: where to keep them; default ``$LOOPS_COMPILATION_CACHE``,
            else ``~/.cache/loops/<engine>`` (``$XDG_CACHE_HOME`` if set).

    Returns:
        What the engine caches there (text), or None.

    Example:
        >>> loops.compilation_cache()   # before the first fit
    """
    engine = backends.get()
    if directory is None:
        directory = os.environ.get("LOOPS_COMPILATION_CACHE") or os.path.join(
            os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"),
            "loops", engine.NAME)
    path = os.path.abspath(os.fspath(directory))
    what = engine.compilation_cache(path)
    if what is not None:
        try:
            os.makedirs(path, exist_ok=True)
        except OSError as e:
            raise ValueError(f"compilation_cache({os.fspath(directory)!r}): the directory cannot be created "
                             f"({e.strerror or e}). Pass a writable directory.") from None
    return what


__all__ = ["compilation_cache"]
