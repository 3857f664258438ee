"""The contract every engine module implements. Nothing else varies by engine.

An engine package (``loops.backends.jax``, ``loops.backends.tensorflow``,
``loops.backends.torch``; folders ``backends/jax/`` ... in the repository)
exposes the names below at module level. The loop in ``loops/`` calls only
these; it never imports an engine itself.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any, Callable, Protocol, Sequence

Tree = Any  # a nest (tuple/list/dict) of arrays

# Keras optimizer options an optimizer adapter (optax on jax, torch.optim on
# torch) accepts: what the wrapped transformation itself does not cover.
# ``weight_decay`` is left out on purpose: use the wrapped library's.
KERAS_OPTIONS = ("name", "clipnorm", "clipvalue", "global_clipnorm", "use_ema", "ema_momentum",
                 "ema_overwrite_frequency", "loss_scale_factor", "gradient_accumulation_steps")


class Runner(Protocol):
    """Owns the values of every discovered variable while compiled steps run.

    Engines whose compiled steps are pure (jax) keep the state on device between
    steps and write it back to the ``keras.Variable`` objects only on ``sync``;
    stateful engines (tensorflow, torch) have nothing to sync.
    """

    def compile(self, fn: Callable[[Tree], Tree], *, eager: bool, jit_compile: bool,
                on_trace: Callable[[Tree], None] | None = None, kind: str = "train",
                checks: bool = False) -> Callable[[Tree], Tree]:
        """Builds the callable that runs ``fn(batch)`` as one step.

        Args:
            fn: the step, written against ``keras.Variable`` objects and
                ``keras.ops``: reads and assigns variables as if stateful.
            eager: run ``fn`` as plain Python (``run_eagerly=True``): ``print``
                and debuggers work inside it.
            jit_compile: when not eager, compile with XLA / ``torch.compile``.
            on_trace: called with the batch (tracers: shapes and dtypes only)
                each time the engine traces or compiles the step anew; never
                called for eager steps.
            kind: ``"train"``, ``"test"`` or ``"predict"``. Under data
                parallelism (``Backend.replicas``) the step's outputs are
                those of the global batch: logs averaged over replicas,
                ``"predict"`` outputs gathered along the batch axis.
            checks: the first-step value checks were not run (``trace_only``
                took the first step): ``host_values`` calls traced in ``fn``
                run on the first call's values, and what they raise leaves
                the variables as they were before the call.

        Returns:
            ``step(batch) -> outputs``; outputs are engine tensors.
        """
        ...

    def expect(self, kind: str, calls: int | None) -> None:
        """The loop says how many more calls of the ``kind`` step (``"train"``,
        ``"test"`` or ``"predict"``) the run that is starting plans (executions,
        with ``steps_per_execution``); None: unknown (a generator without
        ``steps``). An engine whose compilation pays off only over many calls
        (torch graph capture) may weigh it; the others ignore it."""
        ...

    def sync(self) -> None:
        """Writes state held by compiled steps back into the variables."""
        ...


class Replicas(Protocol):
    """Data parallelism on the engine's own distributed runtime: jax's
    ``keras.distribution`` (sharding), tensorflow's ``tf.distribute`` strategy,
    torch's ``torch.distributed`` process group. Every process iterates the
    same global batches; the loop hands ``to_native`` this process's rows.

    Under it the engine guarantees global-batch semantics: ``value_and_grad``
    returns the gradient averaged over replicas (so every replica applies the
    same update), ``Runner.compile(kind=...)`` returns global logs and
    predictions, and metric results read inside ``global_metric_state`` are
    those of all replicas' data.
    """

    num_replicas: int       # replicas the batch axis is split over (devices, or processes)
    replicas_in_step: int   # replicas a step's batch is one shard of: 1 where the step sees the global batch (jax)
    process_index: int      # this process; 0 is the chief (prints, writes files)
    process_count: int      # processes feeding batches (hosts, or torchrun's processes)
    key: tuple[Any, ...]    # identifies the setup (a compiled step is rebuilt when it changes)
    description: str        # for messages

    def scope(self) -> AbstractContextManager[None]:
        """The context the loop runs in (variables created inside are laid
        out / mirrored; tensorflow reads metric state as its aggregate)."""
        ...

    def to_native(self, batch: Tree) -> Tree:
        """This process's rows of a global batch (host arrays) to the step's
        input: jax global arrays split over devices, a tensorflow per-replica
        value, torch tensors. Runs on the prefetch thread."""
        ...

    def global_metric_state(self, variables: Sequence[Any]) -> AbstractContextManager[None]:
        """Inside it, metric state variables (``synchronization="on_read"``)
        read as their aggregate over replicas (a collective on torch: every
        process enters it at the same point)."""
        ...

    def localize_metric_state(self, variables: Sequence[Any]) -> None:
        """After restoring saved (aggregate) metric state into the variables:
        splits it so that the aggregate over replicas is the saved value."""
        ...

    def mean(self, tree: Tree) -> Tree:
        """Values each replica computed (a custom step's logs), averaged over
        replicas; the identity where the step's outputs are global already."""
        ...

    def first(self, value: int) -> int:
        """Process 0's ``value``, on every process (a data seed)."""
        ...

    def replica_index(self) -> Any:
        """Inside a step: which of the ``replicas_in_step`` shards of the global
        batch this replica holds (an int, or a tensor on tensorflow); 0 where
        the step sees the global batch. Neutral random draws use it to take
        this shard's rows of a global draw."""
        ...

    def max(self, value: int) -> int:
        """The largest ``value`` over processes (a signal any of them got)."""
        ...

    def lost(self, error: BaseException) -> str | None:
        """If ``error`` is the engine's way of saying another process is gone
        (its collective failed: connection closed, peer unavailable, heartbeat
        missed), what the engine said, in one line; else None."""
        ...


class Backend(Protocol):
    NAME: str

    def make_runner(self, variables: Sequence[Any]) -> Runner:
        """A ``Runner`` over ``variables`` (every variable the trainer owns)."""
        ...

    def value_and_grad(
        self,
        fn: Callable[..., Any],
        variables: Sequence[Any],
        *,
        inputs: Sequence[Any],
        has_aux: bool,
        state: Sequence[Any],
        detect_unused: bool,
    ) -> tuple[Any, list[Any]]:
        """Differentiates ``fn(*inputs)`` with respect to ``variables`` and ``inputs``.

        Args:
            fn: called as ``fn(*inputs)``; returns a scalar loss or ``(loss, aux)``.
            variables: ``keras.Variable`` objects to differentiate against.
            inputs: tensors to differentiate against as well (a gradient
                penalty needs the gradient with respect to the data).
            has_aux: whether ``fn`` returns ``(loss, aux)``.
            state: every variable the trainer owns; engines whose
                differentiation must be pure (jax) thread all of them through
                and assign the updated values (BatchNorm statistics, seeds)
                back after the call.
            detect_unused: report a variable that does not reach the loss as a
                ``None`` gradient even where the engine would return zeros.

        Returns:
            ``(out, grads)``: ``out`` as ``fn`` returned it, ``grads`` for
            ``variables`` then ``inputs``, in order; ``None`` where the loss
            does not depend on one. Under data parallelism (``replicas``) the
            gradients of ``variables`` at the outermost call are averaged over
            replicas (those of ``inputs`` stay per sample); ``out`` is this
            replica's.
        """
        ...

    def traces(self, eager: bool, jit_compile: bool) -> bool:
        """Whether ``Runner.compile`` with these options runs the step's Python
        only while tracing (so a ``print`` in it runs once, not every step)."""
        ...

    def tracing(self) -> bool:
        """Whether the step's Python running now is being traced (it will not
        run again for these input shapes); False when it runs eagerly, e.g. a
        torch step that could not be captured and fell back to eager."""
        ...

    def host_values(self, fn: Callable[..., None], tensors: Sequence[Any]) -> None:
        """Calls ``fn(*arrays)`` with the values of ``tensors`` as NumPy arrays,
        from eager code, including inside ``value_and_grad``'s function (jax:
        through ``jax.debug.callback``, which runs at once there). Where the
        values are abstract (a trace being staged) ``fn`` is not called,
        except while a step compiled with ``Runner.compile(checks=True)`` is
        traced: there ``fn`` runs on the values of that step's first call,
        after the call, and what it raises is raised by the call.
        For one-time checks and debugging replays, never per step.
        An exception ``fn`` raises propagates to the caller."""
        ...

    def trace_only(self, fn: Callable[[Tree], Any], batch: Tree) -> bool:
        """Runs ``fn(batch)`` on abstract values (shapes and dtypes, no
        computation) where the engine can: the first-step checks then cost a
        trace, not an eager step (jax: an eager step compiles every op).
        Returns False, having run nothing or part of ``fn``, where it cannot
        (a step whose Python reads a value; engines whose eager step is
        cheap): the caller then runs ``fn`` eagerly. Variables created or
        assigned on the way follow the enclosing ``keras.StatelessScope``."""
        ...

    def outside_trace(self) -> AbstractContextManager[None]:
        """Computes concretely inside ``trace_only`` (an optimizer building
        its slots while the first step is traced); a no-op elsewhere."""
        ...

    def to_native(self, batch: Tree) -> Tree:
        """Host (NumPy) arrays to the engine's tensor type, same structure."""
        ...

    def take_rows(self, leaf: Any, index: Any) -> Any:
        """Rows ``index`` (a slice or an integer array) of one host data leaf:
        ``leaf[index]`` for arrays; the engine's gather for its own host-side
        types (a ``tf.RaggedTensor`` on tensorflow)."""
        ...

    def concat_rows(self, parts: Sequence[Any]) -> Any:
        """``parts`` (predict outputs) joined on the batch axis: NumPy's
        concatenate, or the engine's for its own types (ragged outputs). Arrays
        that differ past the batch axis: the engine's ragged type (tensorflow,
        as Keras's predict), else ValueError (the loop explains it)."""
        ...

    def to_step_input(self, batch: Tree) -> Tree:
        """What the loop hands the step ``Runner.compile`` built: ``to_native(batch)``,
        or the host arrays themselves where the engine's compiled call takes
        them more cheaply (jax on CPU: ``jax.jit``'s C++ dispatch converts NumPy
        arguments faster than a Python-side ``device_put``). Eager steps still
        see engine tensors: the runner converts for them."""
        ...

    def step_context(self) -> AbstractContextManager[None]:
        """The context every step runs in (torch: ``no_grad``)."""
        ...

    def checks_only(self) -> AbstractContextManager[bool]:
        """The context of the loop's discarded eager first step (its checks):
        an outermost ``value_and_grad`` inside skips the backward pass and
        returns zero gradients. It yields whether those tell the targets the
        loss reaches (zeros) from the rest (``None``): torch reads that from
        the autograd graph (True); tensorflow cannot without a tape, so every
        target gets zeros (False) and the loop checks reach where the step is
        next traced or run. Nested calls differentiate (an outer loss may be
        built from their gradients). jax: a no-op yielding True (its checks'
        ``trace_only`` trace is forward only already)."""
        ...

    def resolve_jit_compile(self, value: bool | str) -> bool:
        """``"auto"`` to a bool, as Keras resolves it for this engine."""
        ...

    def compilation_cache(self, directory: str) -> str | None:
        """Keeps this engine's compiled programs in ``directory`` for later
        processes (``loops.compilation_cache``); returns what is cached there,
        or None where the engine has nothing to keep across processes."""
        ...

    def loop_steps(self, step: Callable[[Tree], Tree], variables: Sequence[Any]) -> Callable[[Tree], Tree]:
        """``steps_per_execution``: a body that runs ``step`` over batches
        stacked on a leading axis (one per step) inside one compiled call and
        returns the last step's outputs. jax: ``lax.scan`` with every variable
        in the carry; tensorflow: ``tf.while_loop``; torch: a Python loop."""
        ...

    def prefetch_default(self) -> int:
        """Batches the loop prepares ahead on a background thread unless the
        user sets ``trainer.prefetch_batches`` (0: none)."""
        ...

    def rng_state(self) -> dict[str, Any]:
        """The engine's global random state that Keras code may draw from
        outside any ``SeedGenerator`` (torch's unseeded dropout), as NumPy
        arrays by name; checkpoints save it so a resumed run draws the same."""
        ...

    def set_rng_state(self, state: dict[str, Any]) -> None:
        """Restores what ``rng_state`` returned (names it does not know are ignored)."""
        ...

    def set_deterministic(self, enabled: bool) -> None:
        """Turns the engine's deterministic-ops mode on or off (``loops.set_seed``)."""
        ...

    def prepare_optimizer(self, optimizer: Any) -> None:
        """Adapts a Keras optimizer, in place, to run inside this engine's
        compiled step (jax: ``LossScaleOptimizer`` applies through its
        ``stateless_apply``, as its stateful ``cond`` would leak tracers)."""
        ...

    def replicas(self, variables: Sequence[Any]) -> Replicas | None:
        """The data-parallel setup the trainer's ``variables`` run under (jax:
        the active ``keras.distribution``; tensorflow: the strategy they were
        created under, else the current one; torch: the initialized process
        group of more than one process), or None for one device."""
        ...

    def data_parallel(self, devices: Any, timeout: float | None = None) -> Callable[[], None]:
        """Starts data parallelism the engine's way (``loops.data_parallel``):
        jax ``set_distribution(DataParallel(devices))`` (after
        ``keras.distribution.initialize()`` when launched as several
        processes), tensorflow ``MirroredStrategy(devices)`` (or
        ``MultiWorkerMirroredStrategy`` under a multi-task ``TF_CONFIG``) made
        current, torch ``init_process_group`` from ``torchrun``'s environment
        (NCCL on GPU, gloo on CPU). ``timeout``: seconds a process waits on
        a silent peer before failing (jax: the coordination heartbeat;
        tensorflow: collectives; torch: the process group). Returns the
        function that undoes it."""
        ...

    def wrap_native_optimizer(self, native: Any, options: dict[str, Any]) -> Any:
        """A ``keras.optimizers.Optimizer`` adapter around this engine's own
        optimizer type (jax: an ``optax.GradientTransformation``; torch: a
        ``torch.optim.Optimizer`` class), or ``None`` if ``native`` is not one.

        Args:
            native: the engine's optimizer object (or class, for torch).
            options: keyword arguments: Keras optimizer options (``name``,
                ``clipnorm``, ``use_ema``, ...) and, for torch, the torch
                optimizer's own (``lr``, ``betas``, ...).
        """
        ...
