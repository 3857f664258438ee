"""Data sources for the loop: ``DataSource`` and its two kinds, on every
backend. ``ArraySource`` holds arrays on the host (shuffling, splitting,
``steps_per_epoch``, exact resume by position); ``IterableSource`` pulls from
any iterable (tf.data, ``DataLoader``, ``PyDataset``, generators; see
``adapters.py``, which makes them). Backend-neutral: batches are NumPy nests;
the backend's ``to_native`` converts them.

A batch is the element the user's ``train_step`` receives: ``(x, y)``,
``(x, y, sample_weight)``, or ``x`` alone (``(x,)`` when ``x`` is itself a
tuple or list, so the structure stays unambiguous).
"""

from __future__ import annotations

import warnings
from typing import Any, Iterable, Iterator

import keras
import numpy as np

from loops.data.finite import check_finite

_ARRAY_TYPES = (np.ndarray, list, tuple, dict)


def _leaves(tree: Any) -> list[Any]:
    """The arrays in ``tree`` (a None leaf is a model's optional input left out)."""
    return [] if tree is None else [a for a in keras.tree.flatten(tree) if a is not None]


def _map(fn: Any, tree: Any) -> Any:
    """``fn`` over the arrays in ``tree``; None leaves stay None."""
    return None if tree is None else keras.tree.map_structure(lambda a: None if a is None else fn(a), tree)


def _to_numpy(leaf: Any) -> Any:
    if isinstance(leaf, np.ndarray):
        return leaf
    from loops._keras_private import is_ragged, is_sparse, sparse_to_host

    if is_sparse(leaf):  # kept sparse, as Keras keeps it (the engine converts it for the step)
        return sparse_to_host(leaf)
    if hasattr(leaf, "detach") and hasattr(leaf, "cpu"):  # a torch tensor
        leaf = leaf.detach().cpu()
    if is_ragged(leaf):
        if keras.backend.backend() == "tensorflow":
            return leaf  # Keras takes ragged inputs on tensorflow: kept as they are
        raise ValueError(
            f"Got a tf.RaggedTensor in the data, which only the tensorflow backend takes (as in Keras); "
            f"this is {keras.backend.backend()}. Convert it first (ragged.to_tensor()) or pad to a fixed shape.")
    return np.asarray(leaf)


def _as_host(tree: Any) -> Any:
    """NumPy leaves; float64 cast to floatx as Keras's adapters do."""

    def convert(leaf: Any) -> Any:
        if leaf is None:
            return None
        arr = _to_numpy(leaf)
        if arr.dtype == np.float64:
            arr = arr.astype(keras.backend.floatx())
        return arr

    return keras.tree.map_structure(convert, tree) if tree is not None else None


def _rows(a: Any, idx: np.ndarray | slice) -> Any:
    """Rows ``idx`` of an array leaf (an engine's own host type, such as a
    tf.RaggedTensor, through the engine)."""
    if isinstance(a, np.ndarray):
        return a[idx]
    from loops import backends

    return backends.get().take_rows(a, idx)


def _pack(x: Any, y: Any, sample_weight: Any) -> Any:
    if y is None and sample_weight is None:
        return (x,) if isinstance(x, (tuple, list)) else x
    if sample_weight is None:
        return (x, y)
    return (x, y, sample_weight)


def _class_weights(class_weight: dict[int, float], y: Any) -> np.ndarray:
    """Per-sample weights from a ``{class: weight}`` dict and host labels, as
    Keras computes them: classes the dict does not list weigh 1.0; one-hot
    (or probability) labels count as their argmax class."""
    if keras.tree.is_nested(y):
        raise ValueError(
            "class_weight is only supported for models with a single output; "
            "for several outputs pass sample_weight per output instead."
        )
    y = np.asarray(y)
    if y.ndim > 1:
        y = np.argmax(y, axis=-1) if y.shape[-1] != 1 else np.squeeze(y, axis=-1)
    classes = np.round(y.reshape(len(y))).astype(np.int64)
    weights = np.ones(len(classes), dtype=keras.backend.floatx())
    for cls, weight in class_weight.items():
        weights[classes == int(cls)] = weight
    return weights


def _validate_class_weight(class_weight: Any) -> None:
    if class_weight is None:
        return
    if not isinstance(class_weight, dict) or not class_weight:
        raise ValueError(f"class_weight must be a non-empty dict {{class_index: weight}}, got {class_weight!r}.")
    bad = [k for k in class_weight if isinstance(k, bool) or not isinstance(k, (int, np.integer))]
    if bad:
        raise ValueError(f"class_weight's keys must be integer class indices, got {bad!r}.")


class DataSource:
    """One pass of ``batches()`` is one epoch (or ``steps`` batches)."""

    num_batches: int | None = None
    batch_size: int | None = None  # rows per full batch, where the source fixes it
    infinite: bool = False
    kind: str = "arrays"

    def peek(self) -> Any:
        """The first batch, without consuming it (for building and checks)."""
        raise NotImplementedError

    def rewind(self) -> None:
        """Start again from the first batch where the source can (each evaluation)."""

    def batches(self, steps: int | None = None) -> Iterator[Any]:
        raise NotImplementedError

    def seek(self, consumed: int, in_epoch: int) -> None:
        """Position the source as if ``consumed`` batches had been drawn in
        total, ``in_epoch`` of them in the current epoch (a resumed run)."""
        raise NotImplementedError


class ArraySource(DataSource):
    batch_size: int

    def __init__(self, x: Any, y: Any = None, sample_weight: Any = None, *, batch_size: int | None = None,
                 shuffle: bool = False, class_weight: dict[int, float] | None = None,
                 seed: int | None = None):
        self.x, self.y, self.sample_weight = _as_host(x), _as_host(y), _as_host(sample_weight)
        sizes = {name: [a.shape[0] if len(a.shape) else None for a in _leaves(tree)]
                 for name, tree in (("x", self.x), ("y", self.y), ("sample_weight", self.sample_weight))}
        flat = [(name, s) for name, ss in sizes.items() for s in ss]
        # (x may hold None for a model's optional input, and only that: the model says which are not optional)
        if not flat or self.x is None or (flat[0][0] != "x" and not keras.tree.flatten(self.x)):
            raise ValueError("No input data: pass x (a NumPy array, or a list/dict of arrays).")
        if any(s is None for _, s in flat):
            raise ValueError(f"Inputs must be arrays with a batch dimension; got a scalar among {sizes}.")
        if len({s for _, s in flat}) != 1:
            shown = ", ".join(f"{name} has {s} samples" for name, s in flat)
            raise ValueError(
                f"All inputs must have the same number of samples, but {shown}. "
                "Pass x, y and sample_weight with matching first dimensions."
            )
        self.n: int = int(flat[0][1])  # type: ignore[arg-type]  # None excluded above
        if self.n == 0:
            raise ValueError("x is empty (0 samples): there is nothing to train on.")
        if batch_size is None:
            batch_size = 32
        if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
        _validate_class_weight(class_weight)
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.class_weight = class_weight
        self.num_batches = -(-self.n // self.batch_size)
        # Shuffling uses NumPy's generator, never an engine's: the same seed
        # gives the same batch order on every backend. Pass p's order is a pure
        # function of (seed, p), so a checkpoint resumes it from two integers.
        self.seed = int(np.random.randint(2**31) if seed is None else seed)
        self._pass = 0  # passes started
        self._skip = 0  # batches to skip at the start of the next pass (resume)
        self._stream: Iterator[Any] | None = None
        self._left = 0
        self._epoch_done = False

    def split(self, fraction: float) -> tuple[ArraySource, ArraySource]:
        """Keras's ``validation_split``: the last ``fraction`` of the samples,
        taken before shuffling, become the validation set."""
        cut = int(self.n * (1.0 - fraction))
        if cut == 0 or cut == self.n:
            raise ValueError(
                f"validation_split={fraction} leaves {'no training' if cut == 0 else 'no validation'} "
                f"samples out of {self.n}. Use a split that keeps both sets non-empty."
            )
        take = lambda tree, sl: _map(lambda a: a[sl], tree)
        train = ArraySource(take(self.x, slice(None, cut)), take(self.y, slice(None, cut)),
                            take(self.sample_weight, slice(None, cut)), batch_size=self.batch_size,
                            shuffle=self.shuffle, class_weight=self.class_weight,
                            seed=int(np.random.default_rng([self.seed, 2**31]).integers(2**31)))
        val = ArraySource(take(self.x, slice(cut, None)), take(self.y, slice(cut, None)),
                          take(self.sample_weight, slice(cut, None)), batch_size=self.batch_size)
        return train, val

    def _batch(self, idx: np.ndarray | slice) -> Any:
        pick = lambda tree: _map(lambda a: _rows(a, idx), tree)
        x, y, sw = pick(self.x), pick(self.y), pick(self.sample_weight)
        if self.class_weight is not None and y is not None:
            cw = _class_weights(self.class_weight, y)
            sw = cw if sw is None else sw * cw
        return _pack(x, y, sw)

    def order(self, p: int) -> np.ndarray:
        """The sample order of pass ``p`` (0-based)."""
        if not self.shuffle:
            return np.arange(self.n)
        return np.random.default_rng([self.seed, p]).permutation(self.n)

    def _one_pass(self) -> Iterator[Any]:
        order = self.order(self._pass)
        self._pass += 1
        skip, self._skip = self._skip, 0
        for start in range(skip * self.batch_size, self.n, self.batch_size):
            # Unshuffled: a slice is a view (no host copy before the transfer).
            yield self._batch(order[start:start + self.batch_size] if self.shuffle
                              else slice(start, start + self.batch_size))

    def seek(self, consumed: int, in_epoch: int) -> None:
        """Continue as if ``consumed`` batches had been drawn (a resumed run)."""
        self._pass, self._skip = divmod(int(consumed), -(-self.n // self.batch_size))
        self._stream = None
        # A checkpoint taken after an epoch that the end of a pass cut short
        # (steps_per_epoch): that epoch has nothing left to draw.
        self._epoch_done = in_epoch > 0 and self._skip == 0

    def rewind(self) -> None:
        """Start again from the first batch (each evaluation, as Keras's)."""
        self._pass, self._skip, self._stream, self._epoch_done = 0, 0, None, False

    def peek(self) -> Any:
        return self._batch(np.arange(min(self.batch_size, self.n)))

    def batches(self, steps: int | None = None) -> Iterator[Any]:
        if steps is None:
            yield from self._one_pass()
            return
        # With an explicit step count the position carries over between
        # epochs, as in Keras: an epoch takes up to `steps` batches of the
        # current pass through the data and ends early where the pass ends;
        # the next epoch starts a new (reshuffled) pass.
        if self._epoch_done:
            self._epoch_done = False  # (the resumed epoch had ended with its pass)
            return
        if self._stream is None:
            self._left = -(-self.n // self.batch_size) - self._skip  # batches left in this pass
            self._stream = self._one_pass()
        drawn = 0
        while drawn < steps and self._left > 0:
            batch = next(self._stream)
            self._left -= 1
            drawn += 1
            yield batch
        if drawn < steps:
            warnings.warn(
                f"The data ran out after {drawn} of {steps} batches asked for (steps_per_epoch / steps): this pass ends "
                f"early (the arrays hold {self.num_batches} batches of {self.batch_size}). Keras does "
                "the same; pass a step count <= the number of batches, or None.", stacklevel=2)
        if self._left == 0:
            self._stream = None  # the next epoch starts a new pass


class IterableSource(DataSource):
    """Generators, iterators and re-iterable collections of batches (and,
    through ``make_source``, tf.data datasets, DataLoaders and PyDatasets)."""

    def __init__(self, data: Iterable[Any], *, class_weight: dict[int, float] | None = None,
                 num_batches: int | None = None, infinite: bool = False, check_inputs: bool = False,
                 kind: str = "generator"):
        _validate_class_weight(class_weight)
        self._data = data
        self._class_weight = class_weight
        self._check_inputs = check_inputs
        self.kind = kind
        # An iterator carries over between epochs; a re-iterable (a list of
        # batches, a dataset) starts again each epoch.
        self._reiterable = iter(data) is not data
        self._iter: Iterator[Any] | None = None
        self._pending: list[Any] = []
        self._structure: Any = None
        self._seen = 0
        self._seek: tuple[int, int] | None = None  # (consumed, in epoch) to skip on resume
        self.infinite = infinite
        if num_batches is None and self._reiterable and hasattr(data, "__len__"):
            try:
                num_batches = len(data)  # type: ignore[arg-type]
            except TypeError:  # e.g. a DataLoader over an IterableDataset
                num_batches = None
        if num_batches == 0:
            raise ValueError(f"The {kind} is empty (0 batches): there is nothing to iterate over.")
        self.num_batches = num_batches

    def _next_raw(self) -> Any:
        if self._pending:
            return self._pending.pop()
        if self._iter is None:
            self._iter = iter(self._data)
        return next(self._iter)

    def _standardize(self, element: Any) -> Any:
        if isinstance(element, list):
            element = tuple(element)  # a DataLoader collates (x, y) into [x, y]; Keras reads lists as tuples
        element = _as_host(element)
        self._seen += 1
        # Dimensions may change from batch to batch, as in Keras (each new shape
        # compiles the step again); the nest, dtypes and ranks may not.
        structure = keras.tree.map_structure(lambda a: None if a is None else (a.dtype, len(a.shape)), element)
        if self._structure is None:
            self._structure = structure
        elif structure != self._structure:
            raise ValueError(
                f"The {self.kind} yielded batches of inconsistent structure: first "
                f"{self._structure}, now {structure} ((dtype, rank) per leaf). "
                "Yield the same nest of arrays, of the same dtypes and ranks, every time."
            )
        if self._check_inputs:
            check_finite(element, f"batch {self._seen - 1} of the {self.kind}")
        if self._class_weight is not None and isinstance(element, tuple) and len(element) >= 2:
            x, y = element[0], element[1]
            sw = element[2] if len(element) == 3 else None
            cw = _class_weights(self._class_weight, y)
            element = (x, y, cw if sw is None else sw * cw)
        return element

    def rewind(self) -> None:
        """Start a re-iterable (tf.data, PyDataset, DataLoader, a list) again
        from its first batch: each evaluation does, as Keras's (with
        ``validation_steps`` over a repeated dataset too). A generator cannot
        start again: it goes on."""
        if self._reiterable:
            self._iter, self._pending = None, []

    def seek(self, consumed: int, in_epoch: int) -> None:
        """Continue as if ``consumed`` batches had been drawn (``in_epoch`` of
        them in the current epoch): the skipped batches are read and dropped,
        so a resumed run is exact only if the stream yields the same batches."""
        self._seek = (int(consumed), int(in_epoch))

    def peek(self) -> Any:
        try:
            raw = self._next_raw()
        except StopIteration:
            raise ValueError(f"The {self.kind} is empty: it yielded no batch.") from None
        self._pending.append(raw)
        out = self._standardize(raw)
        self._seen -= 1
        return out

    def batches(self, steps: int | None = None) -> Iterator[Any]:
        if steps is None and self.infinite:
            raise ValueError(
                f"The {self.kind} is infinite: pass steps_per_epoch (fit) or steps (evaluate, predict) "
                "to say how many batches make an epoch.")
        if self._reiterable and not self._pending and steps is None:
            self._iter = None  # restart a re-iterable each epoch
        if self._seek is not None:
            # A re-iterable restarts each epoch unless steps are given; then,
            # like an iterator, its position carries over between epochs.
            consumed, in_epoch = self._seek
            self._seek = None
            for _ in range(in_epoch if self._reiterable and steps is None else consumed):
                try:
                    self._next_raw()
                except StopIteration:
                    if not self._reiterable:
                        raise ValueError(
                            f"Resuming needs to skip {consumed} batches already trained on, but the "
                            f"{self.kind} ran out first. Resume with the same data.") from None
                    self._iter = None
                    self._next_raw()
        count = 0
        while steps is None or count < steps:
            try:
                raw = self._next_raw()
            except StopIteration:
                self._iter = None if self._reiterable else self._iter
                if steps is not None:
                    warnings.warn(
                        f"The data ran out after {count} of the requested {steps} steps. "
                        "Make the generator loop forever, or lower steps_per_epoch / steps.",
                        stacklevel=3,
                    )
                return
            count += 1
            yield self._standardize(raw)
