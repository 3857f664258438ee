"""When a torch step is captured: the policy ``capture.CapturedStep`` follows.

Capturing a step (``make_fx``, the layout check, the TorchScript trace and
the executor race) costs what some 60 eager steps cost on an MLP and some
150-400 on a recurrent model, and pays back only the difference between an
eager step and a replay at every later call. So, per input signature:

- its first call runs eagerly, as Keras's own torch ``model.fit`` does (the
  first call costs what ``model.fit``'s does);
- a later call is captured when the calls still planned for it are at least
  ``CAPTURE_AFTER``. The loop says how many calls a run plans
  (``Runner.expect``); they count down as calls are made, and a signature is
  expected to take its share of them so far (a shape seen in one call of ten,
  a custom step's ragged last batch, is captured only when a tenth of the
  calls left reaches the threshold);
- when nothing is planned (a generator without ``steps_per_epoch``, or more
  calls than planned), it is captured once it has run eagerly
  ``CAPTURE_AFTER`` times: the ski-rental rule, which pays at most about
  twice what knowing the future would (where the threshold is the model's
  break-even). Eager calls are counted across
  runs, so a loop of short runs (``train_on_batch`` in a custom loop) is
  captured too.

A signature whose first call runs one of torch's fused recurrent kernels
(``torch.lstm``/``gru``, which Keras's torch LSTM and GRU call on a GPU, as
``torch.nn.LSTM`` does everywhere) is never captured: a trace decomposes the
kernel into its per-timestep ops (an LSTM of 64 steps on an H200: the graph
replayed at 54 ms a step, the eager step took 12 ms), and the capture itself
cost 4 s and ~90 MB of host memory before the timing rule below dropped it.

Two rules read timings (on a GPU an eager step's time without a sync is its
launch, so there the first ``TIMED_CALLS`` eager calls of a signature wait
for the device before and after; later ones run unsynchronized): a new graph whose
replay is not faster than the fastest eager call of its signature past the
first (by ``KEEP_BELOW``) is dropped, before any TorchScript trace, and the
signature runs eagerly from then on; one whose first run (the captured
step itself) is far slower still (``DROP_FIRST_ABOVE``, and by
``DROP_FIRST_MIN_S``) is dropped before its replays are even timed. Measured (``benchmarks/workloads_real``,
full size, 2 CPU cores): an LSTM of 256 units over 64 steps, batch 64, runs
166 ms a step eagerly; its graph (the recurrence unrolled into small ops)
replayed at 384 ms, and the TorchScript trace took 4.4 s and 3.6 GB more on
top of the capture's 3.9 s and 1 GB. Time alone cannot tell beforehand: the
ResNet's eager step is slow too, and its graph (without Keras's layout
copies) replays 1.8x faster. Whether a call replays or runs eagerly does not
change its numbers: both run the same aten ops (TorchScript's replay is kept
only where it reproduces the step).

``LOOPS_TORCH_CAPTURE`` overrides it: ``first`` captures at every signature's
first call (the behaviour before this policy), ``never`` runs every call
eagerly, ``auto`` (the default) is the policy above.
"""

from __future__ import annotations

import os
from typing import Any

# Calls a run must still plan for a capture to pay. Break-even = (capturing
# call - eager step) / (eager step - replay), measured on a fresh Adam
# classifier per model, batch 50 (2 CPU cores, torch 2.13, one thread, CPU
# time: the machine was shared), eager / replay per step, capturing call:
#   MLP (Dense 256-128-10 over 8x8)  2.15 / 0.48 ms, 0.13 s:  77 calls
#   tiny (Dense 10 over 5)           1.1 / 0.15 ms,  0.08 s:  85
#   Conv2D+BN, SeparableConv2D+GN, Embedding+Conv1D, attention: 60, 47, 70, 114
#   LSTM(32) over 16x8               5.2 / 1.8 ms,   0.75 s: 219
#   Bidirectional(GRU(16))           7.9 / 2.8 ms,   3.3 s:  642
# 100 sits among the feed-forward models' 47-114: a run of any length there
# costs at most ~1.35x the better choice, and a 48-step fit never captures.
# Recurrent models (an unrolled recurrence is a large graph) pay back later:
# a run of 100-600 calls captures at a loss (worst, 100 calls of the BiGRU:
# 3.3 s of capture against 0.8 s eagerly); from ~650 calls on they win.
CAPTURE_AFTER = 100
KEEP_BELOW = 0.95  # a replay is kept when it takes at most this share of the eager step
# A graph whose first run (the captured step itself) takes more than this
# many eager steps is dropped without timing its replays (two more runs, on
# copies of the state): a replay's best time came within 0.75-1.0x of its
# first run (CPU: the realistic GPT, LSTM and ResNet at quick sizes), so it
# cannot reach KEEP_BELOW. The full-size LSTM (CPU): first run 0.39 s against
# a 0.14 s eager step; its replay race cost 0.73 s and ~50 MB of peak RSS.
DROP_FIRST_ABOVE = 1.5
# ... and slower by this much: the rule saves a costly race, and a step of a
# millisecond or less has a thin margin against one cold, noisy first run.
DROP_FIRST_MIN_S = 0.05
TIMED_CALLS = 3  # eager calls per signature timed on a GPU, each waiting for the device

MODES = ("auto", "first", "never")


def mode() -> str:
    """``LOOPS_TORCH_CAPTURE``: ``auto`` (default), ``first`` or ``never``."""
    value = os.environ.get("LOOPS_TORCH_CAPTURE", "").strip().lower() or "auto"
    if value not in MODES:
        raise ValueError(f"LOOPS_TORCH_CAPTURE must be one of {', '.join(MODES)}; got {value!r}.")
    return value


class Policy:
    """Counts a step's calls and decides when a signature is captured."""

    def __init__(self) -> None:
        self.mode = mode()
        self.remaining: int | None = None  # calls the current run still plans (None: unknown)
        self.calls = 0  # calls made, every signature
        self.eager: dict[Any, int] = {}  # eager calls per signature not captured yet
        self.eager_s: dict[Any, float] = {}  # the fastest eager call per signature but its first (CPU)
        self.warmed: set[Any] = set()  # signatures timed once (their first call: kernels warming up)
        self.stay_eager: set[Any] = set()  # signatures a graph would not speed up
        self.samples: dict[Any, int] = {}  # eager calls timed per signature

    def expect(self, calls: int | None) -> None:
        """A run starts that plans ``calls`` calls (None: unknown)."""
        self.remaining = calls

    def tick(self) -> None:
        """Counts one call (at every call, before ``capture``)."""
        self.calls += 1
        if self.remaining is not None:
            self.remaining -= 1

    def capture(self, key: Any) -> bool:
        """Whether this call of ``key`` (a signature without a graph) is
        captured; if not, it is counted as one more eager call of it."""
        if self.mode != "auto":
            return self.mode == "first"
        if key in self.stay_eager:
            return False
        eager = self.eager.get(key, 0)
        if key in self.warmed and key not in self.eager_s:
            self.eager[key] = eager + 1  # one more eager call first: a time past the warm-up
            return False
        if eager and (eager >= CAPTURE_AFTER or self._planned(eager) >= CAPTURE_AFTER):
            del self.eager[key]
            return True
        self.eager[key] = eager + 1
        return False

    def timed(self, key: Any, seconds: float) -> None:
        """An eager call of ``key`` took ``seconds`` (the first is not counted)."""
        self.samples[key] = self.samples.get(key, 0) + 1
        if key not in self.warmed:
            self.warmed.add(key)
            return
        self.eager_s[key] = min(seconds, self.eager_s.get(key, seconds))

    def first_call(self, key: Any) -> bool:
        """Whether the coming eager call is ``key``'s first (its warm-up)."""
        return key not in self.warmed

    def refuse(self, key: Any) -> None:
        """``key`` is never captured (its step calls what a trace would make slower)."""
        self.stay_eager.add(key)

    def wants_time(self, key: Any) -> bool:
        """Whether the next eager call of ``key`` is worth timing where timing
        costs a device sync (a GPU): the warm-up and two more are all
        ``capture`` and ``keep`` read."""
        return self.samples.get(key, 0) < TIMED_CALLS

    def keep(self, key: Any, replay_s: float) -> bool:
        """Whether ``key``'s new graph, replaying in ``replay_s``, is kept
        (without eager timings, as under ``first``: yes)."""
        eager_s = self.eager_s.get(key)
        if eager_s is None or replay_s <= KEEP_BELOW * eager_s:
            return True
        self.stay_eager.add(key)
        return False

    def hopeless(self, key: Any, first_run_s: float) -> bool:
        """Whether ``key``'s new graph, whose first run took ``first_run_s``,
        is dropped before its replays are timed (``DROP_FIRST_ABOVE``)."""
        eager_s = self.eager_s.get(key)
        if eager_s is None or first_run_s <= max(DROP_FIRST_ABOVE * eager_s, eager_s + DROP_FIRST_MIN_S):
            return False
        self.stay_eager.add(key)
        return True

    def _planned(self, eager: int) -> float:
        """Calls after this one that a signature with ``eager`` earlier calls
        is expected to take: its share of the calls so far, of those planned."""
        if not self.remaining or self.remaining < 0:
            return 0.0
        return self.remaining * (eager + 1) / self.calls
