"""Render a pytest-benchmark JSON as a markdown table and a PNG bar chart.

    python -m benchmarks.report [results.json] [--out PREFIX]

writes PREFIX.md, PREFIX.png and PREFIX.json (the input without the raw timings, small enough to
commit); PREFIX defaults to ``benchmarks/results/`` plus the input's name. Training
rows give samples/s (median over the alternating repeats of each repeat's median round) and the
ratio against the NumPy reference and PyTorch measured in the same run; kernel rows give the
median time per call.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path

DEFAULT_JSON = Path(".benchmarks/latest.json")
REFERENCES = {"numpy": "NumPy", "pytorch": "PyTorch", "pytorch-cuda": "PyTorch CUDA"}
MNIST_TRAIN = 60_000


def load(path: Path) -> tuple[dict, list[dict]]:
    data = json.loads(path.read_text())
    rows = []
    for bench in data["benchmarks"]:
        row = dict(bench["extra_info"])
        row["median_s"] = bench["stats"]["median"]
        rows.append(row)
    machine = dict(data.get("machine_info", {}).get("tinynet", {}))
    machine["date"] = data.get("datetime", "?")[:16].replace("T", " ")
    return machine, rows


def _ratio(value: float | None, reference: float | None) -> str:
    return f"{value / reference:.2f}x" if value and reference else "-"


def training_table(rows: list[dict]) -> tuple[list[str], dict]:
    """Markdown lines, and {(network, dtype, batch): {contender: samples/s}} for the chart."""
    per_case: dict[tuple, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    first_call: dict[tuple, list] = defaultdict(list)
    for r in rows:
        if r.get("kind") != "train":
            continue
        key = (r["network"], r["dtype"], r["batch"])
        per_case[key][r["contender"]].append(r["samples_per_round"] / r["median_s"])
        first_call[(*key, r["contender"])].append(r["first_call_s"])
    speeds = {
        key: {name: statistics.median(values) for name, values in contenders.items()}
        for key, contenders in per_case.items()
    }
    references = [  # the ratio columns: contenders measured in this run
        (name, label)
        for name, label in REFERENCES.items()
        if any(name in by_name for by_name in speeds.values())
    ]
    lines = [
        "| network | dtype | batch | contender | samples/s | s/epoch | "
        + "".join(f"vs {label} | " for _, label in references)
        + "first call |",
        "|---|---|---:|---|---:|---:|" + "---:|" * len(references) + "---:|",
    ]
    for key in sorted(speeds, key=lambda k: (k[0], k[1], k[2])):
        network, dtype, batch = key
        for name, speed in sorted(speeds[key].items()):
            call = statistics.median(first_call[(*key, name)])
            ratios = "".join(f"{_ratio(speed, speeds[key].get(r))} | " for r, _ in references)
            lines.append(
                f"| {network} | {dtype} | {batch} | {name} | {speed:,.0f} | "
                f"{MNIST_TRAIN / speed:.2f} | {ratios}{call * 1e3:.1f} ms |"
            )
    return lines, speeds


def kernel_table(rows: list[dict]) -> list[str]:
    times: dict[tuple, dict[str, float]] = defaultdict(dict)
    for r in rows:
        if r.get("kind") == "kernel":
            times[(r["kernel"], r["shape"], r["batch"])][r["contender"]] = r["median_s"]
    lines = [
        "| kernel | shape | batch | contender | median | NumPy time / this | PyTorch time / this |",
        "|---|---|---:|---|---:|---:|---:|",
    ]
    for key in sorted(times):
        for name, t in sorted(times[key].items()):
            np_t, torch_t = times[key].get("numpy"), times[key].get("pytorch")
            lines.append(
                f"| {key[0]} | {key[1]} | {key[2]} | {name} | {t * 1e6:,.1f} us | "
                f"{_ratio(np_t, t)} | {_ratio(torch_t, t)} |"
            )
    return lines


def startup_table(rows: list[dict]) -> list[str]:
    lines = [
        "| backend | import | first calls, cold cache (compile) | first calls, warm cache |",
        "|---|---:|---:|---:|",
    ]
    for r in sorted((r for r in rows if r.get("kind") == "startup"), key=lambda r: r["contender"]):
        lines.append(
            f"| {r['contender']} | {r['import_s']:.2f} s | "
            f"{r['cold_first_calls_s']:.2f} s | {r['warm_first_calls_s']:.2f} s |"
        )
    return lines


def memory_table(rows: list[dict]) -> list[str]:
    peaks: dict[tuple, dict[str, dict]] = defaultdict(dict)
    for r in rows:
        if r.get("kind") == "memory":
            peaks[(r["network"], r["batch"])][r["contender"]] = r
    lines = [
        "| network | batch | contender | peak memory | during training | peak vs NumPy |",
        "|---|---:|---|---:|---:|---:|",
    ]
    for key in sorted(peaks):
        numpy_peak = peaks[key].get("numpy", {}).get("peak_mb")
        for name, r in sorted(peaks[key].items()):
            delta = f"{r['peak_mb'] - numpy_peak:+.0f} MB" if numpy_peak is not None else "-"
            lines.append(
                f"| {key[0]} | {key[1]} | {name} | {r['peak_mb']:.0f} MB | "
                f"+{r['training_mb']:.0f} MB | {delta} |"
            )
    return lines


def chart(speeds: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    networks = sorted({k[0] for k in speeds})
    fig, axes = plt.subplots(1, len(networks), figsize=(6 * len(networks), 4), squeeze=False)
    for ax, network in zip(axes[0], networks, strict=True):
        keys = sorted(k for k in speeds if k[0] == network and k[1] == "float32")
        contenders = sorted({c for k in keys for c in speeds[k]})
        width = 0.8 / max(len(contenders), 1)
        for i, name in enumerate(contenders):
            xs = [j + i * width for j in range(len(keys))]
            ax.bar(xs, [speeds[k].get(name, 0) for k in keys], width, label=name)
        ax.set_xticks([j + width * (len(contenders) - 1) / 2 for j in range(len(keys))])
        ax.set_xticklabels([f"batch {k[2]}" for k in keys])
        ax.set_yscale("log")
        ax.set_ylabel("training samples/s (log)")
        ax.set_title(f"{network}, float32", fontsize=10)
        ax.legend()
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def render(json_path: Path, prefix: Path) -> str:
    machine, rows = load(json_path)
    train_lines, speeds = training_table(rows)
    data = sorted({r["data"] for r in rows if r.get("kind") == "train"}) or ["-"]
    header = [
        f"# tinynet benchmarks ({machine.get('date', '?')})",
        "",
        f"Command: `pytest --benchmark --benchmark-json {json_path}` then "
        f"`python -m benchmarks.report {json_path}`.",
        "",
        "| machine | |",
        "|---|---|",
        *(f"| {k} | {v} |" for k, v in machine.items() if k != "date"),
        f"| training data | {', '.join(data)} |",
        "",
        "## Training throughput",
        "",
        "Steady state after one warm-up round; samples/s is the median over 3 alternating "
        "repeats of the median of 3 rounds; s/epoch = 60,000 / samples/s; first call includes "
        "compilation.",
        "",
    ]
    startup = [
        "## Startup",
        "",
        "A fresh process: import, then the first per-sample and mini-batch training calls and a "
        "prediction; the warm-cache figure is the last of 3 runs.",
        "",
        *startup_table(rows),
        "",
        "## Peak memory",
        "",
        "A fresh process per case (float32): peak resident memory during one training round, "
        "including MNIST (47 MB of uint8) and the libraries, and how much the round added.",
        "",
        *memory_table(rows),
        "",
    ]
    text = "\n".join(
        [*header, *train_lines, "", *startup, "## Kernels (float32)", "", *kernel_table(rows), ""]
    )
    prefix.parent.mkdir(parents=True, exist_ok=True)
    prefix.with_suffix(".md").write_text(text)
    slim = json.loads(json_path.read_text())
    for bench in slim["benchmarks"]:
        bench["stats"].pop("data", None)  # every raw timing: megabytes, not needed to compare
    prefix.with_suffix(".json").write_text(json.dumps(slim, indent=1))
    if speeds:
        chart(
            speeds,
            prefix.with_suffix(".png"),
            f"{machine.get('cpu', '?')}, {machine.get('threads', '?')} threads",
        )
    return text


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.report", description=__doc__.splitlines()[0]
    )
    parser.add_argument("json", nargs="?", type=Path, default=DEFAULT_JSON)
    parser.add_argument("--out", type=Path, help="prefix for the .md and .png files")
    args = parser.parse_args(argv)
    prefix = args.out or Path("benchmarks/results") / args.json.stem
    print(render(args.json, prefix))


if __name__ == "__main__":
    main()
