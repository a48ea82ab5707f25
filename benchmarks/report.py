"""Render a pytest-benchmark JSON as a markdown table and a PNG bar chart.

    python -m benchmarks.report [results.json] [--out PREFIX]

writes PREFIX.md, PREFIX.png and PREFIX.json (the input without the raw timings, small enough to
commit); PREFIX defaults to ``.benchmarks/report/`` plus the input's name, outside the source
tree: the committed results in ``benchmarks/results/`` are written only when named, as in
``--out benchmarks/results/cpu``. Training
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
DEFAULT_OUT = Path(".benchmarks/report")  # git ignores .benchmarks/
REFERENCES = {
    "numpy-plain": "NumPy (plain)",
    "numpy": "NumPy (tinynet)",
    "pytorch": "PyTorch",
    "jax-scan": "JAX scan",
    "pytorch-cuda": "PyTorch CUDA",
}
MNIST_TRAIN = 60_000


class ReportError(Exception):
    """The input is not a usable pytest-benchmark JSON; the message says why."""


def read_json(path: Path) -> dict:
    """The run in ``path``; ReportError naming the file when it is missing, empty or not a
    pytest-benchmark JSON (an interrupted run leaves an empty file)."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ReportError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if not text.strip():
        raise ReportError(f"{path} is empty: the benchmark run that wrote it did not finish")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ReportError(f"{path} is not valid JSON ({exc})") from exc
    if not isinstance(data, dict) or not isinstance(data.get("benchmarks"), list):
        raise ReportError(f"{path} is not a pytest-benchmark JSON (no 'benchmarks' list)")
    return data


def load(data: dict) -> tuple[dict, list[dict]]:
    """(machine facts, one row per benchmark) of a run read by ``read_json``."""
    rows = []
    for bench in data["benchmarks"]:
        row = dict(bench.get("extra_info", {}))
        stats = bench["stats"]
        row["median_s"] = stats["median"]
        row["min_s"] = stats.get("min", stats["median"])
        row["max_s"] = stats.get("max", stats["median"])
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
    if not speeds:
        return [], {}
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


def optimizer_cost_table(rows: list[dict], speeds: dict) -> list[str]:
    """Each network trained with another optimizer (its rows name a ``baseline`` network)
    against that baseline: seconds per epoch of both, per contender, and their ratio."""
    pairs = sorted(
        {
            (r["network"], r["baseline"])
            for r in rows
            if r.get("kind") == "train" and r.get("baseline")
        }
    )
    lines = []
    for network, baseline in pairs:
        for key in sorted(k for k in speeds if k[0] == network):
            _, dtype, batch = key
            base = speeds.get((baseline, dtype, batch), {})
            for name, speed in sorted(speeds[key].items()):
                if name in base:
                    lines.append(
                        f"| {network} | {baseline} | {dtype} | {batch} | {name} | "
                        f"{MNIST_TRAIN / speed:.3f} | {MNIST_TRAIN / base[name]:.3f} | "
                        f"{base[name] / speed:.2f} |"
                    )
    if not lines:
        return []
    return [
        "| network | against | dtype | batch | contender | s/epoch | against, s/epoch | ratio |",
        "|---|---|---|---:|---|---:|---:|---:|",
        *lines,
    ]


def best_of_table(rows: list[dict], contender: str, peer: str) -> list[str]:
    """``contender`` against ``peer`` by best (minimum) round over all repeats, with each one's
    range of rounds: fast peers with a wide spread (JAX) are compared at their best."""
    rounds: dict[tuple, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        if r.get("kind") == "train" and r["contender"] in (contender, peer):
            key = (r["network"], r["dtype"], r["batch"])
            per = r["samples_per_round"] / MNIST_TRAIN  # seconds per round -> per epoch
            rounds[key][r["contender"]] += [r["min_s"] / per, r["max_s"] / per]
    keys = [k for k in sorted(rounds) if len(rounds[k]) == 2]
    if not keys:
        return []
    lines = [
        f"| network | dtype | batch | {contender} best (range), s/epoch | "
        f"{peer} best (range), s/epoch | best / best |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for key in keys:
        mine, theirs = rounds[key][contender], rounds[key][peer]
        lines.append(
            f"| {key[0]} | {key[1]} | {key[2]} | {min(mine):.3f} ({min(mine):.3f}-{max(mine):.3f})"
            f" | {min(theirs):.3f} ({min(theirs):.3f}-{max(theirs):.3f}) | "
            f"{min(mine) / min(theirs):.2f} |"
        )
    return lines


def kernel_table(rows: list[dict]) -> list[str]:
    times: dict[tuple, dict[str, float]] = defaultdict(dict)
    for r in rows:
        if r.get("kind") == "kernel":
            times[(r["kernel"], r["shape"], r["batch"])][r["contender"]] = r["median_s"]
    if not times:
        return []
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
    if not any(r.get("kind") == "startup" for r in rows):
        return []
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
            key = (r["network"], r["batch"], r.get("inputs", "uint8"))
            peaks[key][r["contender"]] = r
    if not peaks:
        return []
    lines = [
        "| network | batch | inputs | contender | peak memory | during training | peak vs NumPy |",
        "|---|---:|---|---|---:|---:|---:|",
    ]
    for key in sorted(peaks):
        numpy_peak = peaks[key].get("numpy", {}).get("peak_mb")
        for name, r in sorted(peaks[key].items()):
            delta = f"{r['peak_mb'] - numpy_peak:+.0f} MiB" if numpy_peak is not None else "-"
            lines.append(
                f"| {key[0]} | {key[1]} | {key[2]} | {name} | {r['peak_mb']:.0f} MiB | "
                f"+{r['training_mb']:.0f} MiB | {delta} |"
            )
    return lines


CONTENTION = {  # condition: its column; older runs named the one-busy conditions "loaded"
    "quiet": "quiet",
    "one-busy": "1 busy",
    "loaded": "1 busy",
    "loaded-1-thread": "1 busy, 1 thread",
    "two-busy": "2 busy",
    "two-busy-1-thread": "2 busy, 1 thread",
    "two-busy-2-threads": "2 busy, 2 threads",
}


def contention_table(rows: list[dict]) -> list[str]:
    """Per path: the median round in each condition (quiet, beside busy processes, with the
    threads fixed); each busy condition / quiet, and under two busy processes the default's
    choice / the best fixed thread count."""
    times: dict[tuple, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        if r.get("kind") == "contention" and r["condition"] in CONTENTION:
            key = (r["contender"], r["path"], r["batch"])
            times[key][CONTENTION[r["condition"]]].append(r["median_s"])
    if not times:
        return []
    columns = [c for c in dict.fromkeys(CONTENTION.values()) if any(c in t for t in times.values())]
    loads = [c for c in ("1 busy", "2 busy") if c in columns]
    fixed = [c for c in ("2 busy, 1 thread", "2 busy, 2 threads") if c in columns]
    lines = [
        "| contender | path | batch | "
        + " | ".join(columns)
        + " | "
        + "".join(f"{c} / quiet | " for c in loads)
        + ("2 busy / best fixed |" if fixed else ""),
        "|---|---|---:|" + "---:|" * (len(columns) + len(loads) + bool(fixed)),
    ]
    for key in sorted(times):
        med = {c: statistics.median(v) for c, v in times[key].items()}
        cells = [f"{med[c] * 1e3:.1f} ms" if c in med else "-" for c in columns]
        ratios = [_ratio(med.get(c), med.get("quiet")) for c in loads]
        best = min((med[c] for c in fixed if c in med), default=None)
        lines.append(
            f"| {key[0]} | {key[1]} | {key[2]} | {' | '.join(cells)} | "
            + "".join(f"{r} | " for r in ratios)
            + (f"{_ratio(med.get('2 busy'), best)} |" if fixed else "")
        )
    return lines


def sklearn_table(rows: list[dict]) -> list[str]:
    """Per dataset and contender: the median seconds per epoch and test score over repeats,
    and scikit-learn's time over the contender's (above 1: faster than scikit-learn)."""
    runs: dict[tuple, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        if r.get("kind") == "sklearn":
            runs[(r["dataset"], r["contender"])]["s"].append(r["s_per_epoch"])
            runs[(r["dataset"], r["contender"])]["score"].append(r["score"])
            runs[(r["dataset"], r["contender"])]["info"] = [r]
    if not runs:
        return []
    lines = [
        "| dataset | contender | epochs | s/epoch | test score | scikit-learn's time / this |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for dataset, contender in sorted(runs):
        run = runs[(dataset, contender)]
        info = run["info"][0]
        seconds = statistics.median(run["s"])
        reference = runs.get((dataset, "sklearn"), {}).get("s")
        ratio = _ratio(statistics.median(reference), seconds) if reference else "-"
        lines.append(
            f"| {dataset} ({info['train_samples']:,} train) | {contender} | {info['epochs']} | "
            f"{seconds:.3f} | {statistics.median(run['score']):.4f} {info['metric']} | {ratio} |"
        )
    return lines


def sklearn_op_table(rows: list[dict]) -> list[str]:
    """Per operation, dataset and contender: the median seconds of one call over repeats (and
    the final loss, where the operation has one), and scikit-learn's time over the
    contender's (above 1: faster than scikit-learn)."""
    runs: dict[tuple, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        if r.get("kind") == "sklearn-op":
            run = runs[(r["op"], r["dataset"], r["contender"])]
            run["s"].append(r["seconds"])
            run["loss"].append(r["loss"])
    if not runs:
        return []
    lines = [
        "| operation | data | contender | seconds | final loss | scikit-learn's time / this |",
        "|---|---|---|---:|---:|---:|",
    ]
    for op, dataset, contender in sorted(runs):
        run = runs[(op, dataset, contender)]
        seconds = statistics.median(run["s"])
        reference = runs.get((op, dataset, "sklearn"), {}).get("s")
        ratio = _ratio(statistics.median(reference), seconds) if reference else "-"
        losses = [v for v in run["loss"] if v is not None]
        loss = f"{statistics.median(losses):.5f}" if losses else "-"
        lines.append(f"| {op} | {dataset} | {contender} | {seconds:.5f} | {loss} | {ratio} |")
    return lines


def scaling_table(rows: list[dict]) -> list[str]:
    """Per backend and batch: seconds per epoch on 1 process x 2 threads and 2 processes x 1
    thread (medians over repeats), the speed-up of 2 x 1, and one step's allreduce alone."""
    runs: dict[tuple, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        if r.get("kind") == "scaling":
            epoch = r["seconds"] * 60000 / r["samples"]
            runs[(r["backend"], r["batch"])][r["layout"]].append(epoch)
            if "allreduce_s" in r:
                runs[(r["backend"], r["batch"])]["allreduce"].append(r["allreduce_s"])
                runs[(r["backend"], r["batch"])]["bytes"] = [r["allreduce_bytes"]]
    if not runs:
        return []
    lines = [
        "| backend | batch | 1 x 2 threads, s/epoch | 2 x 1 thread, s/epoch | speed-up | "
        "allreduce per step | allreduces per epoch, s |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for (backend, batch), run in sorted(runs.items()):
        one = statistics.median(run["1x2"]) if run["1x2"] else None
        two = statistics.median(run["2x1"]) if run["2x1"] else None
        reduce_s = statistics.median(run["allreduce"]) if run["allreduce"] else None
        per_step = f"{reduce_s * 1e6:.0f} µs ({run['bytes'][0] / 1e6:.2f} MB)" if reduce_s else "-"
        per_epoch = f"{reduce_s * -(-60000 // batch):.3f}" if reduce_s else "-"
        lines.append(
            f"| {backend} | {batch} | {one:.3f} | {two:.3f} | {_ratio(one, two)} | {per_step} | "
            f"{per_epoch} |"
            if one and two
            else f"| {backend} | {batch} | - | - | - | {per_step} | {per_epoch} |"
        )
    return lines


def chart(speeds: dict, path: Path, title: str) -> None:
    """Save ``chart_figure`` as a PNG."""
    import matplotlib.pyplot as plt

    fig = chart_figure(speeds, title)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# One colour per contender, the same in every panel and every chart (the legend is shared);
# colour-blind-safe (Okabe-Ito), in the order the bars stand. A contender not named here takes
# the next spare colour in the order of its name among the chart's contenders, never by its
# position within one panel.
CONTENDER_COLOURS = {
    "numpy-plain": "#cccccc",
    "numpy": "#999999",
    "numba": "#0072B2",
    "cupy": "#009E73",
    "pytorch": "#E69F00",
    "pytorch-compile": "#F0E442",
    "pytorch-cuda": "#D55E00",
    "jax": "#CC79A7",
    "jax-scan": "#882255",
}
SPARE_COLOURS = ["#56B4E9", "#117733", "#44AA99", "#332288", "#AA4499", "#661100"]


def _bar_order(name: str) -> tuple[int, str]:
    known = list(CONTENDER_COLOURS)
    return (known.index(name) if name in known else len(known), name)


def contender_colours(contenders) -> dict[str, str]:
    """{contender: colour} for every contender of a chart, from one mapping."""
    spare = iter(SPARE_COLOURS * (1 + len(contenders) // len(SPARE_COLOURS)))
    return {
        name: CONTENDER_COLOURS[name] if name in CONTENDER_COLOURS else next(spare)
        for name in sorted(contenders, key=_bar_order)
    }


def chart_figure(speeds: dict, title: str):
    """Bars of speed relative to NumPy (linear axis, NumPy = 1), each labelled with its ratio,
    one panel per network stacked in one column (readable at a README's width), each
    contender in its own colour in every panel; the legend sits below the panels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    networks = sorted({k[0] for k in speeds})
    colours = contender_colours({c for by_name in speeds.values() for c in by_name})
    fig, axes = plt.subplots(
        len(networks),
        1,
        figsize=(7.5, 0.9 + 2.2 * len(networks)),
        squeeze=False,
        layout="constrained",
    )
    for ax, network in zip(axes[:, 0], networks, strict=True):
        keys = sorted(k for k in speeds if k[0] == network and k[1] == "float32")
        contenders = sorted({c for k in keys for c in speeds[k]}, key=_bar_order)
        width = 0.8 / max(len(contenders), 1)
        crowded = len(keys) * len(contenders) > 12  # labels side by side would overlap
        for i, name in enumerate(contenders):
            xs = [j + i * width for j in range(len(keys))]
            ratios = [
                speeds[k].get(name, 0) / speeds[k]["numpy"] if "numpy" in speeds[k] else 0
                for k in keys
            ]
            bars = ax.bar(xs, ratios, width, label=name, color=colours[name])
            ax.bar_label(
                bars,
                [f"{r:.2f}x" if r else "" for r in ratios],
                fontsize=6.5,
                padding=1,
                rotation=90 if crowded else 0,
            )
        ax.axhline(1.0, color="grey", linewidth=0.8, linestyle="--")
        ax.set_xticks([j + width * (len(contenders) - 1) / 2 for j in range(len(keys))])
        ax.set_xticklabels([f"batch {k[2]}" for k in keys], fontsize=8)
        ax.set_ylabel("speed / NumPy's", fontsize=8)
        ax.tick_params(axis="y", labelsize=7)
        ax.margins(y=0.3 if crowded else 0.15)  # room for the labels above the tallest bar
        ax.set_title(f"{network}, float32", fontsize=9)
    handles = [plt.Rectangle((0, 0), 1, 1, color=colour) for colour in colours.values()]
    fig.legend(handles, list(colours), loc="outside lower center", ncol=5, fontsize=8)
    fig.suptitle(title, fontsize=9)
    return fig


def _section(title: str, intro: str, table: list[str]) -> list[str]:
    """A markdown section, or nothing when the run has no rows for it."""
    return [f"## {title}", "", intro, "", *table, ""] if table else []


def render(json_path: Path, prefix: Path) -> str:
    data = read_json(json_path)
    machine, rows = load(data)
    train_lines, speeds = training_table(rows)
    if not rows:
        raise ReportError(f"{json_path} holds no benchmarks (were they all skipped?)")
    sources = sorted({r["data"] for r in rows if r.get("kind") == "train"}) or ["-"]
    header = [
        f"# tinynet benchmarks ({machine.get('date', '?')})",
        "",
        f"Command: `pytest --benchmark --benchmark-json {json_path}` then "
        f"`python -m benchmarks.report {json_path}`.",
        "",
        "| machine | |",
        "|---|---|",
        *(f"| {k} | {v} |" for k, v in machine.items() if k != "date"),
        f"| training data | {', '.join(sources)} |",
        "",
    ]
    sections = [
        *_section(
            "Training throughput",
            "Steady state after one warm-up round; samples/s is the median over 3 alternating "
            "repeats of the median of 3 rounds; s/epoch = 60,000 / samples/s; first call "
            "includes compilation.",
            train_lines,
        ),
        *_section(
            "numba against JAX at its best",
            "JAX's round times spread widely, so both are compared by their best round over "
            "all repeats (the range of rounds in brackets); best / best below 1: numba faster.",
            best_of_table(rows, "numba", "jax-scan"),
        ),
        *_section(
            "Adam against SGD",
            "The same network, data and batches trained with Adam and with SGD (momentum 0.9), "
            "per contender, from the medians above; ratio above 1: Adam costs more.",
            optimizer_cost_table(rows, speeds),
        ),
        *_section(
            "Against scikit-learn",
            "tinynet.sklearn's estimators and scikit-learn's MLPClassifier / MLPRegressor with "
            "the same settings (one hidden layer of 100 ReLU units, Adam, batch 200, a fixed "
            "number of epochs, float32 data); medians over 2 alternating fits.",
            sklearn_table(rows),
        ),
        *_section(
            "Against scikit-learn: L-BFGS and prediction",
            "solver='lbfgs' for a fixed number of iterations: seconds per evaluation of the "
            "loss and its gradient over the training rows, and the final loss; predict_proba "
            "on the MNIST test set (median of 5 calls). Medians over 2 alternating repeats.",
            sklearn_op_table(rows),
        ),
        *_section(
            "Scaling over MPI",
            "The default recipe's network (SGD with momentum) on one process with 2 threads "
            "and on 2 MPI processes with 1 thread each (the same global batch, split), fresh "
            "processes, medians over 2 alternating repeats; speed-up above 1: the 2 processes "
            "are faster. The allreduce: one step's gradients alone, between the 2 processes.",
            scaling_table(rows),
        ),
        *_section(
            "Beside busy processes",
            "The 784-128-10 network's rounds (float32) on a quiet machine, beside one and two "
            "single-threaded busy-loop processes, and beside two with the threads fixed at 1 "
            "and 2 (tn.use_threads); medians over 2 alternating repeats of the median of 3 "
            "rounds. Two busy processes leave training a fair share of one core: 2.0x quiet is "
            "the floor.",
            contention_table(rows),
        ),
        *_section(
            "Startup",
            "A fresh process: import, then the first per-sample and mini-batch training calls "
            "and a prediction; the warm-cache figure is the last of 3 runs.",
            startup_table(rows),
        ),
        *_section(
            "Peak memory",
            "A fresh process per case (float32): peak resident memory during one training "
            "round, including MNIST (47 MB of uint8) and the libraries, and how much the round "
            "added.",
            memory_table(rows),
        ),
        *_section("Kernels (float32)", "Median time per call.", kernel_table(rows)),
    ]
    text = "\n".join([*header, *sections])
    prefix.parent.mkdir(parents=True, exist_ok=True)
    prefix.with_suffix(".md").write_text(text)
    for bench in data["benchmarks"]:
        bench["stats"].pop("data", None)  # every raw timing: megabytes, not needed to compare
    prefix.with_suffix(".json").write_text(json.dumps(data, indent=1))
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
    parser.add_argument(
        "--out",
        type=Path,
        help=f"prefix for the .md, .png and .json files (default: {DEFAULT_OUT}/ and the "
        "input's name; name benchmarks/results/... to update the committed results)",
    )
    args = parser.parse_args(argv)
    prefix = args.out or DEFAULT_OUT / args.json.stem
    try:
        print(render(args.json, prefix))
    except ReportError as exc:
        parser.exit(2, f"{parser.prog}: error: {exc}\n")


if __name__ == "__main__":
    main()
