"""``benchmarks/first_call.py``'s numbers: the timers turned into rows (a
phase each, in seconds), the Markdown table, and the candidate cuts with the
savings the measured rows give them."""

from __future__ import annotations

from typing import Any

# (key, label); "·" rows add up to the total, "↳" rows are parts of the row above.
ROWS = (
    ("construct", "model build + Trainer() / compile(), before fit (not in the total)"),
    ("total", "**fit() first call, total** (1 batch)"),
    ("fit_rest", "· fit: data, plan, callbacks, epoch end (rest)"),
    ("symbolic_build", "· symbolic model build (Keras: + optimizer, metrics)"),
    ("discover", "· variable discovery"),
    ("optimizer", "· optimizer prepare + build"),
    ("eager_step", "· first step with its checks: eager (jax: traced only)"),
    ("eager_xla", "  ↳ XLA compiles of eager ops (jax)"),
    ("check_shapes", "· check: loss/label shapes"),
    ("check_traps", "· check: label range, from_logits traps (host read)"),
    ("check_liveness", "· check: unused variables (jax make_jaxpr liveness)"),
    ("check_other", "· check: no-gradient warning, debug hooks"),
    ("step_other", "· step build: other (keys, caches)"),
    ("make_runner", "· make runner / make_train_function"),
    ("compiled", "· compiled step, first call (torch model.fit: eager)"),
    ("jax_trace", "  ↳ trace to jaxpr (runs the step's Python)"),
    ("jax_lower", "  ↳ lower to MLIR"),
    ("xla_compile", "  ↳ XLA compile"),
    ("tf_trace", "  ↳ trace: the step's Python under autograph"),
    ("tf_graph", "  ↳ trace: autograph conversion, graph building (rest)"),
    ("tf_autograph", "  ↳ (in the two rows above: autograph source conversion, once per function)"),
    ("tf_optimize", "  ↳ graph optimization (grappler), instantiation, first run (model.fit: + graph building)"),
    ("capture_trace", "  ↳ make_fx trace (fake tensors)"),
    ("graph_passes", "  ↳ graph passes + deepcopy"),
    ("reproduce_fx", "  ↳ relayout reproduction check (throw-away run)"),
    ("torchscript", "  ↳ TorchScript trace (throw-away run)"),
    ("reproduce_ts", "  ↳ TorchScript reproduction check (throw-away run)"),
    ("race", "  ↳ executor race (up to 6 throw-away runs)"),
    ("compiled_rest", "  ↳ rest (graph, dispatch, run)"),
)
CHECKS = ("check_shapes", "check_traps", "check_liveness", "check_other")


# id, what to do, the rows it saves (a dict: only on that backend, or of the
# first fit in the process), keeps the first-batch checks? (Done since and
# removed: jax's first step on a trace with the value checks in the compiled
# step's first call; torch's first call eager and capture when a run pays.)
CANDIDATES: tuple[tuple[str, str, tuple[str, ...], dict[str, Any], str], ...] = (
    ("tf_no_autograph", "tensorflow: no autograph conversion of the library's own code (do_not_convert on "
     "the default steps, value_and_grad, compute_loss, the step wrappers; a user's custom step still "
     "converted)", ("tf_autograph",), {"backend": "tensorflow", "warmup": True}, "yes"),
    ("torch_race", "torch: no executor race on the first step (choose TorchScript vs FX by graph content, "
     "or race later, off the first step)", ("race",), {"backend": "torch"}, "yes"),
    ("torch_ts", "torch: defer TorchScript (trace + its reproduction check) until the step has run a few "
     "times, replaying the FX graph meanwhile", ("torchscript", "reproduce_ts"), {"backend": "torch"}, "yes"),
    ("torch_relayout", "torch: relayout without its reproduction replay (prove the rewrite safe statically, "
     "or check it on a later step)", ("reproduce_fx",), {"backend": "torch"}, "yes"),
    ("jax_liveness", "jax: unused-variable detection from the compiled step's jaxpr instead of an extra "
     "make_jaxpr trace", ("check_liveness",), {"backend": "jax"}, "yes"),
    ("traps_in_step", "label-range / from_logits traps read from the first compiled step's outputs "
     "instead of a host read in the eager step", ("check_traps",), {}, "yes (moved)"),
    ("no_eager_step", "default train_step, any engine: no eager first step when the models build "
     "symbolically; shape checks at trace time, value checks on the first compiled call's outputs",
     ("eager_step", "optimizer", "check_shapes", "check_traps", "check_liveness", "check_other"), {},
     "yes, if moved into the trace"),
    ("skip_checks", "an opt-out (e.g. Trainer(first_step_checks=False)): no eager first step at all",
     ("eager_step", "check_shapes", "check_traps", "check_liveness", "check_other"), {}, "no"),
)


def breakdown(t: Any, arm: str, backend: str, total: float) -> dict[str, float]:
    """The first call's rows from the probe's timers (``_probe.Timers``)."""
    rows = {key: 0.0 for key, _ in ROWS}
    rows["total"] = total
    compiled = t.total("compiled_call")
    rows["compiled"] = compiled
    if backend == "jax":
        for key in ("jax_trace", "jax_lower", "xla_compile"):
            rows[key] = t.total(key, under="compiled_call")
        rows["compiled_rest"] = compiled - rows["jax_trace"] - rows["jax_lower"] - rows["xla_compile"]
    elif backend == "tensorflow":
        rows["tf_trace"] = t.total("train_step_body", under="compiled_call")
        traced = t.total("tf_trace_all")  # 0: not a tf.function to split (model.fit's nests two)
        rows["tf_autograph"] = t.total("tf_autograph_convert", under="compiled_call")
        rows["tf_graph"] = traced - rows["tf_trace"] if traced else float("nan")
        rows["tf_optimize"] = compiled - (traced or rows["tf_trace"])
    if arm == "keras":
        rows["symbolic_build"] = t.total("keras_symbolic_build")
        rows["make_runner"] = t.total("make_train_function")
        rows["fit_rest"] = total - rows["symbolic_build"] - rows["make_runner"] - compiled
        return rows
    if backend == "torch":
        rows["capture_trace"] = t.total("capture_make_fx_run") + t.total("capture_make_fx")
        rows["graph_passes"] = sum(t.total(k) for k in ("graph_simplify", "graph_relayout", "graph_deepcopy"))
        for key, label in (("reproduce_fx", "reproduce_fx"), ("torchscript", "torchscript_trace"),
                           ("reproduce_ts", "reproduce_ts"), ("race", "executor_race")):
            rows[key] = t.total(label)
        rows["compiled_rest"] = compiled - sum(rows[k] for k in (
            "capture_trace", "graph_passes", "reproduce_fx", "torchscript", "reproduce_ts", "race"))
    first = "first_step"
    rows["symbolic_build"] = t.total("build_models", under="step_fn")
    rows["discover"] = t.total("discover_variables", under="step_fn")
    rows["optimizer"] = t.total("optimizer_prepare", under=first) + t.total("optimizer_build", under=first)
    rows["check_shapes"] = t.total("check_loss_shapes", under=first)
    rows["check_traps"] = t.total("check_traps", under=first) + t.total("check_record_loss", under=first)
    rows["check_liveness"] = t.total("check_unused_liveness", under=first)
    rows["check_other"] = sum(t.total(k, under=first) for k in ("check_no_gradient", "debug_hooks", "debug_prepare"))
    in_first = (t.total("build_models", under=first) + t.total("discover_variables", under=first)
                + rows["optimizer"] + sum(rows[k] for k in CHECKS))
    rows["eager_step"] = t.total(first) - in_first
    rows["eager_xla"] = t.total("xla_compile", under=first) + t.total("jax_lower", under=first)
    rows["make_runner"] = t.total("make_runner") + t.total("runner_compile")
    step_fn = t.total("step_fn")
    rows["step_other"] = step_fn - t.total(first) - t.total("build_models", under="step_fn") \
        - t.total("discover_variables", under="step_fn") + t.total("discover_variables", under=first) \
        - rows["make_runner"]
    rows["fit_rest"] = total - step_fn - compiled
    return rows


def _s(x: float | None) -> str:
    return "—" if x is None or x != x else f"{x:.3f}"


def markdown(cells: list[dict[str, Any]], machine: str, repeats: int, failed: list[str], note: str = "") -> str:
    main = [c for c in cells if c["arm"] in ("trainer", "keras")]
    lines = ["# First call: where the time goes, fit() to the first step done", "",
             f"Machine: {machine}. Median of {repeats} process(es) per cell; seconds. Each cell in its own "
             "process, after one warm-up fit of a tiny model (imports and the engine's start not counted); "
             "a fresh model's first `fit` on one batch. Rows marked · add up to the total; ↳ rows are parts "
             "of the row above. MLP 784-256-128-10 batch 128; ConvBN: 2×(Conv2D-BatchNorm-ReLU), pooling, "
             "dense, 28×28×1, batch 64; Adam, sparse CE from logits, accuracy metric.", ""]
    if note:
        lines += [f"Note: {note}", ""]
    if failed:
        lines += [f"Failed cells: {', '.join(failed)}", ""]
    for backend in dict.fromkeys(c["backend"] for c in main):
        cols = [c for c in main if c["backend"] == backend]
        head = [f"{c['model']} {'Trainer' if c['arm'] == 'trainer' else 'model.fit'}" for c in cols]
        lines += [f"## {backend}", "", "| phase | " + " | ".join(head) + " |", "|---" * (len(cols) + 1) + "|"]
        for key, label in ROWS:
            values = [c["rows"].get(key) for c in cols]
            if all(v is None or v != v or abs(v) < 5e-4 for v in values) and key != "total":
                continue
            lines.append(f"| {label} | " + " | ".join(_s(v) for v in values) + " |")
        for key, label in (("second_s", "second fit, same trainer (steady, 1 step)"),
                           ("fresh_again_s", "fresh model again, same process (shapes seen)"),
                           ("peak_rss_growth_mb", "peak RSS growth during the first fit, MB")):
            lines.append(f"| {label} | " + " | ".join(_s(c.get(key)) for c in cols) + " |")
        lines.append("")
        lines += _warmup_table(cols)
    lines += candidates(main)
    missing = sorted({m for c in cells for m in c.get("missing", [])})
    if missing:
        lines += ["", f"Probe points not found in this version of the library: {', '.join(missing)}"]
    for c in cells:
        if c["arm"] == "trainer_profile":
            lines += ["", f"## cProfile of the Trainer's first call, {c['backend']} {c['model']} (cumulative)", "",
                      "```", *c["profile"].strip().splitlines()[:60], "```"]
    return "\n".join(lines) + "\n"


def _warmup_table(cols: list[dict[str, Any]]) -> list[str]:
    """The first fit in the process (a tiny model, after the imports), per
    arm: the median over the cells' warm-ups."""
    import statistics

    arms = {arm: [c for c in cols if c["arm"] == arm] for arm in ("trainer", "keras")}
    arms = {arm: cs for arm, cs in arms.items() if cs}
    lines = ["First fit in the process (Dense 5→3, batch 8; imports done before), same rows:", "",
             "| phase | " + " | ".join("Trainer" if a == "trainer" else "model.fit" for a in arms) + " |",
             "|---" * (len(arms) + 1) + "|"]
    for key, label in ROWS:
        values = [statistics.median(c["warmup_rows"].get(key, 0.0) for c in cs) for cs in arms.values()]
        if all(v != v or abs(v) < 5e-4 for v in values) and key != "total":
            continue
        lines.append(f"| {label} | " + " | ".join(_s(v) for v in values) + " |")
    return lines + [""]


def candidates(cells: list[dict[str, Any]]) -> list[str]:
    """The candidate cuts, ranked by the largest saving they show on any cell."""
    import statistics

    trainers = [c for c in cells if c["arm"] == "trainer"]
    warm = [{"backend": b, "model": "(first fit in the process)",
             "rows": {k: statistics.median(c["warmup_rows"].get(k, 0.0) for c in trainers if c["backend"] == b)
                      for k in ("total", *dict(ROWS))}}
            for b in dict.fromkeys(c["backend"] for c in trainers)]
    ranked: list[tuple[float, str, str, str, str]] = []
    for cid, what, keys, where, keeps in CANDIDATES:
        per: list[tuple[float, str]] = []
        for c in warm if where.get("warmup") else trainers:
            if where.get("backend", c["backend"]) != c["backend"]:
                continue
            saved, total = sum(c["rows"].get(k, 0.0) for k in keys), c["rows"]["total"]
            if saved >= 5e-4:
                per.append((saved, f"{c['backend']} {c['model']}: {saved:.2f} s of {total:.2f} s "
                                   f"({100 * saved / total:.0f}%)"))
        if per:
            ranked.append((max(s for s, _ in per), cid, what, keeps, "; ".join(p for _, p in per)))
    ranked.sort(key=lambda r: -r[0])
    out = ["## Cut candidates (Trainer), ranked by the largest saving measured above", "",
           "| # | candidate | estimated saving on the first call | keeps the first-batch checks |",
           "|---|---|---|---|"]
    for i, (_, cid, what, keeps, where) in enumerate(ranked, 1):
        out.append(f"| {i} | {what} (`{cid}`) | {where} | {keeps} |")
    gaps = []
    for t in trainers:
        k = next((c for c in cells if c["arm"] == "keras" and c["backend"] == t["backend"]
                  and c["model"] == t["model"]), None)
        if k is not None:
            gaps.append(f"{t['backend']} {t['model']}: Trainer {t['first_s']:.2f} s, model.fit {k['first_s']:.2f} s "
                        f"(×{t['first_s'] / k['first_s']:.2f})")
    return out + ["", "First call, Trainer against model.fit: " + "; ".join(gaps) + "."]
