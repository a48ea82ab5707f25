"""benchmarks.report: clear errors on unusable input, no empty sections, a readable chart."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import report

ROOT = Path(__file__).resolve().parents[1]


def _bench(median_s: float, **extra) -> dict:
    return {"stats": {"median": median_s, "data": [median_s] * 3}, "extra_info": extra}


def _train(contender: str, median_s: float, batch: int = 32) -> dict:
    return _bench(
        median_s,
        kind="train",
        contender=contender,
        network="784-128-10 sigmoid/SE",
        dtype="float32",
        batch=batch,
        samples_per_round=4096,
        first_call_s=0.01,
        data="MNIST",
    )


def _kernel(contender: str, median_s: float) -> dict:
    return _bench(
        median_s, kind="kernel", contender=contender, kernel="matmul", shape="784->128", batch=32
    )


def _write(tmp_path: Path, benchmarks: list[dict]) -> Path:
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"benchmarks": benchmarks, "datetime": "2026-12-01T00:00:00"}))
    return path


def _run_report(*args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "benchmarks.report", *map(str, args)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("content", "says"),
    [("", "is empty"), ("{", "not valid JSON"), ("[1, 2]", "not a pytest-benchmark JSON")],
    ids=["empty", "cut-short", "other-json"],
)
def test_unusable_json_is_one_clear_line(tmp_path, content, says):
    # An interrupted `pytest --benchmark` leaves an empty latest.json (issue #10, item 1).
    path = tmp_path / "latest.json"
    path.write_text(content)
    result = _run_report(path, "--out", tmp_path / "out")
    assert result.returncode == 2
    assert says in result.stderr and str(path) in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_json_names_the_file(tmp_path):
    result = _run_report(tmp_path / "nope.json", "--out", tmp_path / "out")
    assert result.returncode == 2 and "nope.json" in result.stderr
    assert "Traceback" not in result.stderr


def test_kernel_only_run_prints_no_empty_sections(tmp_path):
    path = _write(tmp_path, [_kernel("numpy", 4e-5), _kernel("numba", 2e-5)])
    text = report.render(path, tmp_path / "out")
    assert "## Kernels" in text
    for empty in ("## Training throughput", "## Startup", "## Peak memory"):
        assert empty not in text
    # 40 us against 20 us: numba takes half NumPy's time
    assert "| matmul | 784->128 | 32 | numba | 20.0 us | 2.00x |" in text


def test_training_ratios_against_numpy(tmp_path):
    # 4096 samples in 0.1 s (numpy) and 0.025 s (numba): 4x; s/epoch = 60000 / 163,840
    path = _write(tmp_path, [_train("numpy", 0.1), _train("numba", 0.025)])
    text = report.render(path, tmp_path / "out")
    assert "| numba | 163,840 | 0.37 | 4.00x |" in text
    assert (tmp_path / "out.png").is_file()


def test_chart_labels_each_bar_with_its_ratio_and_keeps_the_legend_off_the_bars():
    speeds = {
        ("net", "float32", 1): {"numpy": 100.0, "numba": 1349.0, "pytorch": 24.0},
        ("net", "float32", 512): {"numpy": 100.0, "numba": 113.0, "pytorch": 84.0},
    }
    fig = report.chart_figure(speeds, "title")
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    (ax,) = fig.axes
    labels = {t.get_text() for t in ax.texts}
    assert {"13.49x", "1.13x", "0.24x", "0.84x", "1.00x"} <= labels
    # a linear axis of ratios: the bar heights are the ratios themselves
    heights = sorted(round(p.get_height(), 2) for p in ax.patches)
    assert heights == sorted([1.0, 13.49, 0.24, 1.0, 1.13, 0.84])
    legend_box = fig.legends[0].get_window_extent(renderer)
    for patch in ax.patches:
        assert not legend_box.overlaps(patch.get_window_extent(renderer))


def test_each_contender_has_one_colour_in_every_panel():
    """Panels with different sets of contenders (Adam's has no JAX): a contender's bars have
    its colour wherever they are, and no two contenders share one."""
    from matplotlib.colors import to_hex

    speeds = {
        ("a: all", "float32", 32): {"numpy": 1.0, "numba": 3.0, "jax": 2.0, "pytorch": 0.5},
        ("b: no jax", "float32", 32): {"numpy": 1.0, "numba": 3.4, "pytorch": 0.06},
        ("c: newcomer", "float32", 32): {"numpy": 1.0, "zeta": 2.0, "pytorch": 0.7},
    }
    fig = report.chart_figure(speeds, "title")
    colour_of: dict[str, set] = {}
    for ax, network in zip(fig.axes, sorted({k[0] for k in speeds}), strict=True):
        assert ax.get_title().startswith(network)
        for container in ax.containers:
            name = container.get_label()
            ratios = [speeds[(network, "float32", 32)][name] for _ in container.patches]
            assert [round(p.get_height(), 2) for p in container.patches] == ratios
            colour_of.setdefault(name, set()).update(
                to_hex(p.get_facecolor()) for p in container.patches
            )
    assert set(colour_of) == {"numpy", "numba", "jax", "pytorch", "zeta"}
    assert all(len(colours) == 1 for colours in colour_of.values()), colour_of
    assert len({c for colours in colour_of.values() for c in colours}) == len(colour_of)
    assert colour_of["numba"] == {to_hex(report.CONTENDER_COLOURS["numba"])}
    legend = fig.legends[0]
    for handle, text in zip(legend.legend_handles, legend.get_texts(), strict=True):
        assert {to_hex(handle.get_facecolor())} == colour_of[text.get_text()]


def test_the_chart_stacks_its_panels_in_one_column_at_a_readable_width():
    speeds = {
        (f"net {i}", "float32", b): {"numpy": 1.0, "numba": 2.0} for i in range(5) for b in (1, 64)
    }
    fig = report.chart_figure(speeds, "title")
    width, height = fig.get_size_inches() * 110  # the dpi chart() saves at
    assert width <= 900 and height > width  # five panels, one above the other
    lefts = {round(ax.get_position().x0, 3) for ax in fig.axes}
    assert len(lefts) == 1


def test_the_report_writes_outside_the_source_tree_unless_named(tmp_path):
    """By default the report goes to .benchmarks/report/, never over benchmarks/results/."""
    path = _write(tmp_path, [_train("numpy", 0.1), _train("numba", 0.025)])
    path = path.rename(tmp_path / "cpu.json")  # the committed results' name
    work = tmp_path / "clone"
    (work / "benchmarks" / "results").mkdir(parents=True)
    committed = work / "benchmarks" / "results" / "cpu.md"
    committed.write_text("committed")
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.report", str(path)],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert done.returncode == 0, done.stderr
    assert committed.read_text() == "committed"
    assert (work / ".benchmarks" / "report" / "cpu.md").is_file()
    assert (work / ".benchmarks" / "report" / "cpu.png").is_file()


def test_numba_against_jax_by_best_rounds_with_their_range(tmp_path):
    # rounds of 4096 samples; per epoch (60,000 samples) a round's time x 14.6484375
    def rounds(contender, lo, hi):
        bench = _train(contender, (lo + hi) / 2)
        bench["stats"].update(min=lo, max=hi)
        return bench

    path = _write(tmp_path, [rounds("numba", 0.010, 0.012), rounds("jax-scan", 0.008, 0.020)])
    text = report.render(path, tmp_path / "out")
    # best: 0.010 * 14.6484375 = 0.146 and 0.008 * 14.6484375 = 0.117; 0.010 / 0.008 = 1.25
    assert "| 0.146 (0.146-0.176) | 0.117 (0.117-0.293) | 1.25 |" in text


def test_contention_ratios(tmp_path):
    def case(contender, condition, median_s):
        return _bench(
            median_s,
            kind="contention",
            contender=contender,
            path="small batch",
            batch=32,
            condition=condition,
        )

    runs = [
        case("numba", "quiet", 0.010),
        case("numba", "one-busy", 0.015),
        case("numba", "two-busy", 0.024),
        case("numba", "two-busy-1-thread", 0.020),
        case("numba", "two-busy-2-threads", 0.030),
        case("numpy", "quiet", 0.020),
        case("numpy", "loaded", 0.080),  # an older run's name for one busy process
    ]
    text = report.render(_write(tmp_path, runs), tmp_path / "out")
    assert (
        "| quiet | 1 busy | 2 busy | 2 busy, 1 thread | 2 busy, 2 threads | 1 busy / quiet | "
        "2 busy / quiet | 2 busy / best fixed |" in text
    )
    # 24 / 10 = 2.40; against the best fixed count, 1 thread's 20 ms: 1.20
    row = "| numba | small batch | 32 | 10.0 ms | 15.0 ms | 24.0 ms | 20.0 ms | 30.0 ms | "
    assert row + "1.50x | 2.40x | 1.20x |" in text
    assert "| numpy | small batch | 32 | 20.0 ms | 80.0 ms | - | - | - | 4.00x | - | - |" in text


def test_adam_against_its_sgd_baseline(tmp_path):
    def run(network, median_s, **extra):
        bench = _train("numba", median_s, batch=64)
        bench["extra_info"].update(network=network, **extra)
        return bench

    sgd, adam = "784-256-128-10 SGD", "784-256-128-10 Adam"
    path = _write(tmp_path, [run(sgd, 0.02), run(adam, 0.025, optimizer="adam", baseline=sgd)])
    text = report.render(path, tmp_path / "out")
    # 4096 samples a round: 0.025 s -> 60,000 / 163,840 = 0.366 s/epoch; 0.02 s -> 0.293; 1.25x
    assert f"| {adam} | {sgd} | float32 | 64 | numba | 0.366 | 0.293 | 1.25 |" in text


def test_against_scikit_learn_by_median_epoch_and_score(tmp_path):
    def fit(contender, s_per_epoch, score, repeat):
        return _bench(
            s_per_epoch * 5,
            kind="sklearn",
            contender=contender,
            dataset="MNIST",
            repeat=repeat,
            epochs=5,
            s_per_epoch=s_per_epoch,
            score=score,
            metric="accuracy",
            train_samples=60000,
        )

    runs = [
        fit("sklearn", 2.0, 0.970, 0),
        fit("tinynet-numba", 0.5, 0.972, 0),
        fit("sklearn", 3.0, 0.971, 1),
        fit("tinynet-numba", 0.7, 0.974, 1),
    ]
    text = report.render(_write(tmp_path, runs), tmp_path / "out")
    # medians: sklearn 2.5 s, numba 0.6 s an epoch: 2.5 / 0.6 = 4.17x; scores 0.9705, 0.9730
    assert "| MNIST (60,000 train) | tinynet-numba | 5 | 0.600 | 0.9730 accuracy | 4.17x |" in text
    assert "| MNIST (60,000 train) | sklearn | 5 | 2.500 | 0.9705 accuracy | 1.00x |" in text


def test_scaling_by_layout_with_the_allreduce(tmp_path):
    def run(layout, seconds, repeat, allreduce=None):
        extra = dict(kind="scaling", layout=layout, repeat=repeat, backend="numba", batch=64,
                     samples=16384, ranks=1 if layout == "1x2" else 2, seconds=seconds)  # fmt: skip
        if allreduce is not None:
            extra.update(allreduce_s=allreduce, allreduce_bytes=940_000)
        return _bench(seconds, **extra)

    runs = [run("1x2", 0.08, 0), run("2x1", 0.10, 0, 50e-6), run("1x2", 0.09, 1),
            run("2x1", 0.12, 1, 70e-6)]  # fmt: skip
    text = report.render(_write(tmp_path, runs), tmp_path / "out")
    # s/epoch = median seconds * 60000 / 16384: 0.085 -> 0.311, 0.11 -> 0.403; 0.311 / 0.403
    # = 0.77x; allreduce 60 us, 938 steps an epoch -> 0.056 s
    assert "| numba | 64 | 0.311 | 0.403 | 0.77x | 60 µs (0.94 MB) | 0.056 |" in text


def test_scikit_learn_operations_by_median_call(tmp_path):
    def call(contender, seconds, loss, repeat):
        return _bench(
            seconds,
            kind="sklearn-op",
            op="lbfgs: loss and gradient",
            contender=contender,
            dataset="digits (1,437 rows)",
            repeat=repeat,
            seconds=seconds,
            loss=loss,
        )

    runs = [
        call("sklearn", 0.004, 0.10, 0),
        call("tinynet-numba", 0.001, 0.12, 0),
        call("sklearn", 0.006, 0.20, 1),
        call("tinynet-numba", 0.003, 0.14, 1),
    ]
    text = report.render(_write(tmp_path, runs), tmp_path / "out")
    # medians: sklearn 0.005 s, numba 0.002 s a call: 2.50x; losses 0.15 and 0.13
    op = "| lbfgs: loss and gradient | digits (1,437 rows) "
    assert op + "| tinynet-numba | 0.00200 | 0.13000 | 2.50x |" in text
    assert op + "| sklearn | 0.00500 | 0.15000 | 1.00x |" in text
