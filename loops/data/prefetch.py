"""Prefetching one batch ahead on a background thread.

While the step runs on batch ``i``, a worker thread pulls batch ``i + 1`` from
the source, prepares it on the host (padding, checks) and hands it to the
backend's ``to_native`` (``jax.device_put`` and ``tf.convert_to_tensor`` copy
to the device; ``device_put`` is asynchronous), so the host-to-device transfer
overlaps the step. Exactly one batch is prepared ahead, never more: a
generator is not advanced further than the loop will use, and nothing waits on
the device (no host sync is added).
"""

from __future__ import annotations

import queue
import threading
from typing import Any, Callable, Iterator

_END = object()


class _Failure:
    def __init__(self, error: BaseException):
        self.error = error


class Prefetcher:
    """Iterates ``fn(item)`` for each item of ``source``, one item ahead."""

    def __init__(self, source: Iterator[Any], fn: Callable[[Any], Any], *, name: str = "loops-prefetch"):
        self._source = source
        self._fn = fn
        self._out: queue.Queue[Any] = queue.Queue()
        self._wanted = threading.Semaphore(1)  # the first item is fetched at once
        self._stop = False
        self._done = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while True:
                self._wanted.acquire()
                if self._stop:
                    return
                try:
                    item = next(self._source)
                except StopIteration:
                    self._out.put(_END)
                    return
                self._out.put(self._fn(item))
        except BaseException as error:  # re-raised in the consuming thread
            self._out.put(_Failure(error))

    def __iter__(self) -> Prefetcher:
        return self

    def __next__(self) -> Any:
        if self._done:
            raise StopIteration
        item = self._out.get()
        if item is _END:
            self._done = True
            raise StopIteration
        if isinstance(item, _Failure):
            self._done = True
            raise item.error
        self._wanted.release()  # prepare the next one while the caller steps
        return item

    def close(self) -> None:
        """Stops the worker (after the item it may be preparing)."""
        self._stop = True
        self._done = True
        self._wanted.release()
        self._thread.join()


class Inline:
    """The same interface without a thread (``prefetch_batches=0``)."""

    def __init__(self, source: Iterator[Any], fn: Callable[[Any], Any]):
        self._it = map(fn, source)

    def __iter__(self) -> Inline:
        return self

    def __next__(self) -> Any:
        return next(self._it)

    def close(self) -> None:
        return None


__all__ = ["Inline", "Prefetcher"]
