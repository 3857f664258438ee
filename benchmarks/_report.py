"""Results to a markdown table, a JSON file and a PNG plot."""

from __future__ import annotations

import json
import os
from typing import Any

ARMS = ("trainer", "keras", "native")


def _fmt(x: float | None, spec: str = ".3f") -> str:
    return "—" if x is None else format(x, spec)


def _verdict(gate: dict[str, Any], detail: bool) -> str:
    worst = max(gate["max_rel"].values())
    if not gate["ok"]:
        return "INVALID (max rel {:.1e})".format(worst)
    return "ok (max rel {:.0e})".format(worst) if detail else "ok"


def markdown(results: list[dict[str, Any]], machine: str) -> str:
    detail = any("mode" in r for r in results)  # the --gpu / --dry runs say more
    lines = [f"Machine: {machine}", ""]
    for r in results:
        if detail:
            lines.append(f"- {r['backend']}: {r.get('engine', '?')} on {r.get('device', '?')}, keras {r['keras']}, "
                         f"Python {r['python']}, matmul precision: {r.get('precision', '?')}"
                         + (f"; not run (over the time budget): {', '.join(r['skipped'])}" if r.get("skipped") else ""))
    if detail:
        rtols = sorted({wl["gate"].get("rtol", 1e-5) for r in results for wl in r["workloads"].values()})
        lines += [f"- loss gate: the first 10 steps' losses agree to rtol {', '.join(f'{t:g}' for t in rtols)} "
                  "between the arms (max rel shown)", ""]
    lines += [
             "| backend | workload | trainer ms/step | keras ms/step | native ms/step | a/c | a/b "
             "| first call s (a / b / c) | loss gate |",
             "|---|---|---|---|---|---|---|---|---|"]
    spe_lines = []
    for r in results:
        for name, wl in r["workloads"].items():
            ms, ratios, gate = wl["ms_per_step"], wl["ratios"], wl["gate"]
            first = " / ".join(_fmt(gate["first_call_s"].get(a), ".2f") for a in ARMS)
            verdict = _verdict(gate, detail)
            lines.append(f"| {r['backend']} | {name} (b{wl['batch_size']}) | {_fmt(ms.get('trainer'))} "
                         f"| {_fmt(ms.get('keras'))} | {_fmt(ms.get('native'))} "
                         f"| {_fmt(ratios.get('trainer/native'), '.2f')} | {_fmt(ratios.get('trainer/keras'), '.2f')} "
                         f"| {first} | {verdict} |")
            if "spe_overhead_us_per_step" in wl:
                spe = [k for k in ms if k.startswith("trainer_spe")][0]
                spe_lines.append(f"| {r['backend']} | {name} | {spe.removeprefix('trainer_spe')} | {ms[spe]:.3f} "
                                 f"| {ms['native']:.3f} | {wl['spe_overhead_us_per_step']:+.0f} "
                                 f"| {ratios[spe + '/native']:.2f} |")
    lines += ["", "a = loops.Trainer.fit, b = keras model.fit(verbose=0), c = native loop; ratios are "
              "medians of per-round ratios.", "",
              "| backend | workload | steps_per_execution | trainer ms/step | native ms/step "
              "| overhead µs/step | ratio |", "|---|---|---|---|---|---|---|", *spe_lines]
    return "\n".join(lines) + "\n"


def plot(results: list[dict[str, Any]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    workloads = list(dict.fromkeys(wl for r in results for wl in r["workloads"]))
    if not workloads:
        return
    fig, axes = plt.subplots(2, len(workloads), figsize=(4 * len(workloads), 7), squeeze=False)
    for col, wl in enumerate(workloads):
        ax = axes[0][col]
        width = 0.8 / len(ARMS)
        for i, arm in enumerate(ARMS):
            vals = [r["workloads"].get(wl, {}).get("ms_per_step", {}).get(arm, 0.0) for r in results]
            ax.bar([j + i * width for j in range(len(results))], vals, width, label=arm)
        ax.set_xticks([j + width for j in range(len(results))], [r["backend"] for r in results])
        ax.set_title(f"{wl}: ms/step (lower is better)")
        ax.legend(fontsize=8)
        ax = axes[1][col]
        for r in results:
            if wl not in r["workloads"]:
                continue
            curve = r["workloads"][wl]["gate"]["curves"]["trainer"]
            ax.plot(range(1, len(curve) + 1), curve, label=r["backend"], alpha=0.7)
        ax.set_title(f"{wl}: Trainer loss per step, same init")
        ax.set_xlabel("step")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def write(results: list[dict[str, Any]], machine: str, out_dir: str, stem: str) -> dict[str, str]:
    os.makedirs(out_dir, exist_ok=True)
    paths = {ext: os.path.join(out_dir, f"{stem}.{ext}") for ext in ("md", "json", "png")}
    with open(paths["md"], "w") as f:
        f.write(markdown(results, machine))
    with open(paths["json"], "w") as f:
        json.dump({"machine": machine, "results": results}, f, indent=1)
    try:
        plot(results, paths["png"])
    except ImportError:  # matplotlib is optional (pip install ".[bench]")
        del paths["png"]
    return paths
