"""``make_source``: what ``fit``/``evaluate``/``predict`` accept, as a ``DataSource``.

NumPy arrays (and lists/dicts of them) and engine tensors become an
``ArraySource``; ``tf.data.Dataset``, torch ``DataLoader``,
``keras.utils.PyDataset`` and any Python iterable or generator an
``IterableSource``. No engine is imported here: a ``tf.data.Dataset`` or a
``DataLoader`` is recognised only if its library is already loaded
(``sys.modules``), which it must be for the user to have made one. Also the
checks that run on a batch before any step: input names against the model's
inputs, and finiteness (``check_inputs=True``).
"""

from __future__ import annotations

import sys
from typing import Any, Callable, Iterator

import keras

from loops.data.finite import check_finite
from loops.data.sources import _ARRAY_TYPES, ArraySource, DataSource, IterableSource


def _is_tf_dataset(x: Any) -> bool:
    tf = sys.modules.get("tensorflow")
    data = getattr(tf, "data", None) if tf is not None else None
    return data is not None and isinstance(x, data.Dataset)


def _is_torch_dataloader(x: Any) -> bool:
    mod = sys.modules.get("torch.utils.data")
    return mod is not None and isinstance(x, mod.DataLoader)


class _Reiterable:
    """Calls ``open_epoch()`` for a fresh iterator at each pass."""

    def __init__(self, open_epoch: Callable[[], Iterator[Any]]):
        self._open = open_epoch

    def __iter__(self) -> Iterator[Any]:
        return self._open()


def _tf_dataset_source(ds: Any, class_weight: Any, check_inputs: bool) -> IterableSource:
    cardinality = int(ds.cardinality())  # -1: infinite, -2: unknown
    if cardinality == 0:
        raise ValueError("The tf.data.Dataset is empty (cardinality 0): there is nothing to iterate over.")
    return IterableSource(_Reiterable(ds.as_numpy_iterator), class_weight=class_weight,
                          num_batches=cardinality if cardinality > 0 else None,
                          infinite=cardinality == -1, check_inputs=check_inputs, kind="tf.data.Dataset")


def _py_dataset_source(ds: keras.utils.PyDataset, class_weight: Any, shuffle: bool,
                       check_inputs: bool) -> IterableSource:
    from loops._keras_private import PyDatasetAdapter

    # Keras's own adapter: it runs `workers` threads (or processes with
    # use_multiprocessing=True) through its OrderedEnqueuer, shuffles the batch
    # order with shuffle=True and calls on_epoch_begin/on_epoch_end, as fit does.
    adapter = PyDatasetAdapter(ds, shuffle=shuffle)

    def one_epoch() -> Iterator[Any]:
        adapter.on_epoch_begin()
        try:
            yield from adapter.get_numpy_iterator()
        finally:
            adapter.on_epoch_end()

    num_batches = adapter.num_batches
    return IterableSource(_Reiterable(one_epoch), class_weight=class_weight, num_batches=num_batches,
                          infinite=num_batches is None, check_inputs=check_inputs, kind="PyDataset")


# --------------------------------------------------------------------- checks


def check_input_names(model: Any, x: Any) -> None:
    """A dict of inputs must name exactly the model's inputs."""
    if not isinstance(x, dict) or model is None:
        return
    struct = getattr(model, "_inputs_struct", None)
    if isinstance(struct, dict):
        names = list(struct)
    else:
        inputs = getattr(model, "inputs", None) if getattr(model, "built", False) else None
        try:
            names = [t.name for t in inputs or []]
        except (AttributeError, TypeError):
            return
    if not names:
        return
    unknown = [k for k in x if k not in names]
    missing = [k for k in names if k not in x]
    if unknown or missing:
        raise ValueError(
            f"The input dict has key(s) {unknown or []} that name no input of model "
            f"{getattr(model, 'name', '?')!r}" + (f" and lacks {missing}" if missing else "")
            + f". The model's inputs are {names}: key the dict by those names "
            "(keras.Input(..., name=...)).")


# ------------------------------------------------------------------ dispatch


def make_source(x: Any, y: Any = None, sample_weight: Any = None, *, batch_size: int | None = None,
                shuffle: bool = False, class_weight: dict[int, float] | None = None,
                seed: int | None = None, check_inputs: bool = False) -> DataSource:
    """Picks the adapter for ``x`` and checks the arguments that go with it."""
    if isinstance(x, DataSource):
        return x
    if x is None:
        raise ValueError("No input data: pass x (arrays, or a generator/iterable of batches).")
    # A list of (x, y) tuples is a collection of batches, not multi-input arrays.
    batches_in_a_list = isinstance(x, list) and bool(x) and all(isinstance(e, tuple) for e in x)
    is_stream = (_is_tf_dataset(x) or _is_torch_dataloader(x) or isinstance(x, keras.utils.PyDataset)
                 or batches_in_a_list)
    from loops._keras_private import is_ragged, is_sparse

    if not is_stream and (isinstance(x, _ARRAY_TYPES) or hasattr(x, "__array__") or is_sparse(x)
                          or is_ragged(x)):
        source = ArraySource(x, y, sample_weight, batch_size=batch_size, shuffle=shuffle,
                             class_weight=class_weight, seed=seed)
        if check_inputs:
            check_finite((source.x, source.y, source.sample_weight), "The data")
        return source
    if is_stream or hasattr(x, "__iter__") or hasattr(x, "__next__"):
        kind = ("tf.data.Dataset" if _is_tf_dataset(x) else "DataLoader" if _is_torch_dataloader(x)
                else "PyDataset" if isinstance(x, keras.utils.PyDataset) else "generator")
        for name, value in (("y", y), ("sample_weight", sample_weight)):
            if value is not None:
                raise ValueError(
                    f"`{name}` must not be given when x is a {kind} (got x={type(x).__name__}); "
                    "yield (x, y) or (x, y, sample_weight) tuples instead."
                )
        if _is_tf_dataset(x):
            return _tf_dataset_source(x, class_weight, check_inputs)
        if isinstance(x, keras.utils.PyDataset):
            return _py_dataset_source(x, class_weight, shuffle, check_inputs)
        return IterableSource(x, class_weight=class_weight, check_inputs=check_inputs, kind=kind)
    raise ValueError(
        f"Unsupported input type {type(x).__name__} for x. Pass NumPy arrays (or lists/dicts "
        "of them), a tf.data.Dataset, a torch DataLoader, a keras.utils.PyDataset, or a "
        "generator/iterable yielding batches."
    )
