"""Data parallelism on ``torch.distributed``: one process per device (launched
by ``torchrun``), one process group (gloo on CPU, NCCL on GPU).

Each process is one replica and feeds its own rows of every global batch. What
DDP does, done where this project's steps need it:

- ``value_and_grad`` all-reduces (mean) the gradients of the variables at its
  outermost call, so every replica applies the gradient of the global batch
  (and clipping, accumulation and loss scaling see it too);
- the state (weights, optimizer slots, seeds) is broadcast from rank 0 when the
  runner is built, so every replica starts from the same values;
- metric state (Keras's ``on_read`` variables) stays replica-local and is
  reduced (by each variable's ``aggregation``) when results are read;
- ``predict`` outputs are all-gathered, in rank order (the order of the rows).
"""

from __future__ import annotations

import contextlib
import datetime
import os
import re
import time
import warnings
from typing import Any, Callable, Iterator, Sequence

import keras
import numpy as np
import torch
import torch.distributed as dist

_REDUCED = ("sum", "mean", "only_first_replica")  # aggregations whose global value is defined


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def active() -> bool:
    """Whether a process group with more than one process is running."""
    return world_size() > 1


def _device() -> torch.device:
    # NCCL reduces CUDA tensors, gloo CPU tensors.
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _grouped(tensors: Sequence[torch.Tensor]) -> dict[torch.dtype, list[int]]:
    groups: dict[torch.dtype, list[int]] = {}
    for i, t in enumerate(tensors):
        groups.setdefault(t.dtype, []).append(i)
    return groups


def _coalesced(tensors: list[torch.Tensor], collective: Callable[[torch.Tensor], None]) -> list[torch.Tensor]:
    """Runs ``collective`` (in place) once per dtype over the tensors flattened
    into one buffer (one message per dtype, as DDP buckets them); returns new
    tensors of the original shapes."""
    out: list[torch.Tensor] = list(tensors)
    for idx in _grouped(tensors).values():
        parts = [tensors[i] for i in idx]
        device = parts[0].device
        flat = torch.cat([p.detach().reshape(-1) for p in parts]).to(_device())
        collective(flat)
        flat = flat.to(device)
        offset = 0
        for i, p in zip(idx, parts):
            out[i] = flat[offset:offset + p.numel()].view(p.shape)
            offset += p.numel()
    return out


def mean_gradients(grads: list[Any]) -> list[Any]:
    """All-reduce (mean) of the non-None gradients across the process group."""
    if not active():
        return grads
    idx = [i for i, g in enumerate(grads) if g is not None]
    if not idx:
        return grads
    n = world_size()

    def average(flat: torch.Tensor) -> None:
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat.div_(n)

    reduced = _coalesced([grads[i] for i in idx], average)
    out = list(grads)
    for i, g in zip(idx, reduced):
        out[i] = g
    return out


def broadcast_state(variables: Sequence[keras.Variable]) -> None:
    """Every replica takes rank 0's values (metric state excepted: it is local)."""
    if not active():
        return
    shared = [v for v in variables if v.synchronization != "on_read"]
    if not shared:
        return
    values = _coalesced([v.value for v in shared], lambda flat: dist.broadcast(flat, src=0))
    with torch.no_grad():
        for v, value in zip(shared, values):
            v.assign(value)


def gather_rows(tree: Any) -> Any:
    """All-gathers every tensor along its first axis, in rank order."""

    def gather(t: Any) -> Any:
        if not isinstance(t, torch.Tensor) or t.ndim == 0:
            return t
        parts = [torch.empty_like(t) for _ in range(world_size())]
        dist.all_gather(parts, t.contiguous())
        return torch.cat(parts, dim=0)

    return keras.tree.map_structure(gather, tree)


# How a collective fails when another process is gone (gloo's TCP pair, NCCL's watchdog, the store).
_TORCH_LOST = re.compile(r"Connection (closed|reset) by peer|Broken pipe|communicator was aborted"
                         r"|Socket Timeout|Connection refused|remote process exited|ProcessGroup.*aborted")


class Replicas:
    """The running process group, as ``loops.backends.protocol.Replicas``."""

    def __init__(self) -> None:
        self.num_replicas = world_size()
        self.replicas_in_step = self.num_replicas  # a step sees its process's rows only
        self.process_count = self.num_replicas
        self.process_index = dist.get_rank()
        self.key = ("torch.distributed", self.num_replicas, self.process_index)
        self.description = (f"torch.distributed ({dist.get_backend()}), {self.num_replicas} processes, "
                            f"rank {self.process_index}")

    def scope(self) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()

    def to_native(self, batch: Any) -> Any:
        return keras.tree.map_structure(lambda a: None if a is None else keras.ops.convert_to_tensor(a), batch)

    @contextlib.contextmanager
    def global_metric_state(self, variables: Sequence[keras.Variable]) -> Iterator[None]:
        local = [v for v in variables if v.synchronization == "on_read" and v.aggregation in _REDUCED]
        saved = [v.value.detach().clone() for v in local]
        n = world_size()
        for aggregation in _REDUCED:
            group = [v for v in local if v.aggregation == aggregation]
            if not group:
                continue

            def reduce(flat: torch.Tensor, how: str = aggregation) -> None:
                if how == "only_first_replica":
                    dist.broadcast(flat, src=0)
                    return
                dist.all_reduce(flat, op=dist.ReduceOp.SUM)
                if how == "mean":
                    flat.div_(n)

            with torch.no_grad():
                for v, value in zip(group, _coalesced([v.value for v in group], reduce)):
                    v.assign(value)
        try:
            yield
        finally:
            with torch.no_grad():
                for v, value in zip(local, saved):
                    v.assign(value)

    def localize_metric_state(self, variables: Sequence[keras.Variable]) -> None:
        # Restored global sums: rank 0 holds them, the others start from zero,
        # so the sum over replicas is the saved value.
        if self.process_index == 0:
            return
        with torch.no_grad():
            for v in variables:
                if v.synchronization == "on_read" and v.aggregation == "sum":
                    v.assign(torch.zeros_like(v.value))

    def mean(self, tree: Any) -> Any:
        n = world_size()

        def average(value: Any) -> Any:
            if isinstance(value, keras.Variable):
                value = value.value
            try:
                t = torch.as_tensor(value if isinstance(value, torch.Tensor) else np.asarray(value))
            except (TypeError, ValueError, RuntimeError):
                return value
            if not (t.is_floating_point() or t.dtype in (torch.int32, torch.int64, torch.bool)):
                return value
            t = t.detach().to(_device(), dtype=torch.float64 if t.dtype == torch.float64 else torch.float32)
            t = t.clone()
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
            return t / n

        return keras.tree.map_structure(average, tree)

    def _int(self, value: int, op: str) -> int:
        t = torch.tensor([int(value)], dtype=torch.int64, device=_device())
        if op == "first":
            dist.broadcast(t, src=0)
        else:
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return int(t.item())

    def replica_index(self) -> int:
        return self.process_index  # one process per replica

    def first(self, value: int) -> int:
        return self._int(value, "first")

    def max(self, value: int) -> int:
        return self._int(value, "max")

    def lost(self, error: BaseException) -> str | None:
        if self.process_count == 1 or not isinstance(error, RuntimeError):  # (DistBackendError is one)
            return None
        for line in str(error).splitlines():
            if _TORCH_LOST.search(line):
                return line.strip()[:300]
        return None


_warned_unlaunched = False


def replicas(variables: Sequence[keras.Variable]) -> Replicas | None:
    del variables  # the process group is global to the process
    global _warned_unlaunched
    if active():
        return Replicas()
    if (not _warned_unlaunched and int(os.environ.get("WORLD_SIZE", "1")) > 1
            and not (dist.is_available() and dist.is_initialized())):
        _warned_unlaunched = True
        warnings.warn(
            f"This process was launched as one of WORLD_SIZE={os.environ['WORLD_SIZE']} (torchrun), but no "
            "torch.distributed process group is initialized, so it trains alone. Call loops.data_parallel() "
            "(or torch.distributed.init_process_group) before building the model.", stacklevel=3)
    return None


def _fresh_store(timeout: datetime.timedelta | None) -> dict[str, Any]:
    """The process group's store, under a prefix of its own for this start of
    the group: ``{"store": ..., "rank": ..., "world_size": ...}``.

    Under ``torchrun`` the workers share the agent's store, which outlives a
    restart (``--max-restarts``): without a prefix, a restarted worker can read
    the address a dead worker published (gloo then times out connecting, or
    waits for good). Agents restart with different ``TORCHELASTIC_RESTART_COUNT``
    (a failure counts, a peer's restart does not), so the workers agree on a
    generation through the store itself: rank 0 draws it, and answers each
    other rank's fresh nonce with it (a nonce cannot be stale)."""
    import uuid

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    limit = timeout or datetime.timedelta(minutes=30)
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world, is_master=False,
                          timeout=limit)
    if rank == 0:
        generation = str(store.add("loops/generation", 1))
        # Each other rank takes a numbered slot for its nonce; slots earlier rank 0s answered are skipped
        # (the rest may be dead workers': answering them is harmless).
        done = int(store.get("loops/answered")) if store.check(["loops/answered"]) else 0
        pending: set[int] = set()
        deadline = time.monotonic() + limit.total_seconds()
        while int(store.add(f"loops/joined/{generation}", 0)) < world - 1:
            taken = int(store.add("loops/slots", 0))
            pending.update(range(done + 1, taken + 1))
            done = max(done, taken)
            for slot in sorted(pending):
                if store.check([f"loops/hello/{slot}"]):  # (a slot is taken, then its nonce set)
                    store.set(f"loops/answer/{store.get(f'loops/hello/{slot}').decode()}", generation)
                    pending.discard(slot)
            store.set("loops/answered", str(done))
            if time.monotonic() > deadline:
                raise RuntimeError(f"torch.distributed: not every rank of {world} joined within "
                                   f"{limit.total_seconds():.0f} s.")
            time.sleep(0.01)
    else:
        nonce = uuid.uuid4().hex
        slot = int(store.add("loops/slots", 1))
        store.set(f"loops/hello/{slot}", nonce)
        store.wait([f"loops/answer/{nonce}"])
        generation = store.get(f"loops/answer/{nonce}").decode()
        store.add(f"loops/joined/{generation}", 1)
    return {"store": dist.PrefixStore(f"loops/pg/{generation}", store), "rank": rank, "world_size": world}


def data_parallel(devices: Any = None, timeout: float | None = None) -> Callable[[], None]:
    if devices is not None:
        raise ValueError(
            "On torch, data parallelism is one process per device: launch the script with "
            "`torchrun --nproc-per-node=N script.py` (each process uses cuda:LOCAL_RANK on GPUs); "
            "loops.data_parallel() takes no devices there.")
    if dist.is_available() and dist.is_initialized():
        return lambda: None  # the user's own process group
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        warnings.warn(
            "loops.data_parallel() on torch needs one process per device, launched by torchrun "
            "(`torchrun --nproc-per-node=N script.py`); this process was not (WORLD_SIZE is unset or 1), "
            "so it trains on one device.", stacklevel=3)
        return lambda: None
    wait: dict[str, Any] = {} if timeout is None else {"timeout": datetime.timedelta(seconds=float(timeout))}
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
        wait.update(_fresh_store(wait.get("timeout")))
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))  # Keras's "cuda" is this GPU
        dist.init_process_group("nccl", **wait)
    else:
        dist.init_process_group("gloo", **wait)

    def undo() -> None:
        if dist.is_initialized():
            dist.destroy_process_group()

    return undo
