"""The command line: train on the sample, evaluate the saved model, info, one-line errors."""

from __future__ import annotations

import gzip
import re
import subprocess
import sys

import numpy as np

from tests.faults import one_line_cli_error as _one_line_error
from tinynet.cli import main


def test_train_save_plot_evaluate_on_the_sample(tmp_path, capsys):
    model, plot = tmp_path / "m.npz", tmp_path / "curve.png"
    code = main(
        [
            "train",
            "--sample",
            "--hidden",
            "32",
            "--epochs",
            "2",
            "--batch-size",
            "32",
            "--lr",
            "0.1",
            "--quiet",
            "--save",
            str(model),
            "--plot",
            str(plot),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "NOT the full MNIST" in out  # never passed off as MNIST
    assert re.search(r"epoch  2/2 .*samples/s", out)
    accuracy = float(re.search(r"test accuracy (\d+\.\d+)%", out).group(1))
    assert accuracy > 80
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["evaluate", str(model), "--sample"]) == 0
    out = capsys.readouterr().out
    assert float(re.search(r"test accuracy (\d+\.\d+)%", out).group(1)) == accuracy


def test_seed_recipe_runs(capsys):
    assert main(["train", "--recipe", "seed", "--sample", "--epochs", "1", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "784-200-10 sigmoid" in out and "SquaredError(scale=0.5" in out and "batch 1," in out


def test_info_lists_backends(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"numpy\s+ok", out) and "auto  ->" in out and "cores" in out


def test_errors_are_one_line(capsys, tmp_path):
    _one_line_error(
        capsys, ["train", "--sample", "--backend", "nope"], "unknown backend 'nope'", "valid names"
    )
    _one_line_error(capsys, ["train", "--sample", "--lr", "-1"], "learning rate")
    _one_line_error(
        capsys, ["train", "--sample", "--batch-size", "0", "--epochs", "1"], "--batch-size"
    )
    _one_line_error(capsys, ["train", "--sample", "--activation", "swish"], "activation")
    _one_line_error(capsys, ["train", "--sample", "--lr-decay", "1.5"], "lr-decay")
    _one_line_error(capsys, ["train", "--sample", "--loss", "hinge"], "unknown loss 'hinge'")
    _one_line_error(
        capsys,
        ["train", "--sample", "--save", str(tmp_path / "no" / "m.npz")],
        "folder does not exist",
    )
    _one_line_error(capsys, ["evaluate", str(tmp_path / "missing.npz")], "not found")
    (tmp_path / "junk.npz").write_bytes(b"junk")
    _one_line_error(capsys, ["evaluate", str(tmp_path / "junk.npz")], "not a tinynet model")
    _one_line_error(capsys, ["train", "--epochs", "x"], "invalid int value")


def test_plot_without_matplotlib_fails_before_training(capsys, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if it were not installed
    _one_line_error(
        capsys,
        ["train", "--sample", "--plot", str(tmp_path / "c.png")],
        r"--plot needs matplotlib: pip install 'tinynet-mlp\[plot\]'",
    )
    assert not (tmp_path / "c.png").exists()


def test_corrupt_data_dir_is_a_one_line_error(capsys, tmp_path):
    payload = gzip.compress(b"\x00\x00\x08\x01" + np.array([60_000], ">u4").tobytes())
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(payload[:-4])
    (tmp_path / "train-images-idx3-ubyte").write_bytes(b"\x01\x02\x03\x04")
    _one_line_error(
        capsys,
        ["train", "--data-dir", str(tmp_path), "--no-download"],
        "train-images-idx3-ubyte",
        "bad magic",
    )


def test_console_entry_point_exits_non_zero_without_traceback():
    result = subprocess.run(
        [sys.executable, "-m", "tinynet.cli", "train", "--sample", "--backend", "nope"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and "unknown backend" in result.stderr


def test_no_command_points_at_the_real_help(capsys):
    _one_line_error(capsys, [], r"\(see 'tinynet -h'\)$")


def test_version(capsys):
    import tinynet as tn

    try:
        main(["--version"])
    except SystemExit as exc:
        assert exc.code == 0
    assert capsys.readouterr().out.strip() == f"tinynet {tn.__version__} (tinynet-mlp)"


def test_train_help_shows_every_recipe_default(capsys):
    from tinynet.cli import RECIPES

    try:
        main(["train", "--help"])
    except SystemExit as exc:
        assert exc.code == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    for flag, key in [("--epochs", "epochs"), ("--batch-size", "batch_size")]:
        expected = f"(default: {RECIPES['default'][key]}; seed recipe: {RECIPES['seed'][key]})"
        assert re.search(re.escape(flag) + r" \S+ " + re.escape(expected), text), flag
    assert "default: 600" in text  # --download-deadline


def test_info_fails_on_an_invalid_backend_variable_as_train_does(capsys, monkeypatch):
    monkeypatch.setenv("TINYNET_BACKEND", "numbaa")
    _one_line_error(capsys, ["info"], "unknown backend 'numbaa'")
    _one_line_error(capsys, ["train", "--sample"], "unknown backend 'numbaa'")
    monkeypatch.setenv("TINYNET_BACKEND", "numpy")
    assert main(["info"]) == 0
    assert "active backend: numpy (TINYNET_BACKEND=numpy)" in capsys.readouterr().out


def test_bad_settings_fail_before_any_data_loads(capsys, monkeypatch):
    def no_data(*args, **kwargs):
        raise AssertionError("the data was loaded before the settings were checked")

    monkeypatch.setattr("tinynet.datasets.load_mnist", no_data)
    monkeypatch.setattr("tinynet.datasets.mnist_sample", no_data)
    _one_line_error(capsys, ["train", "--epochs", "0"], "--epochs must be >= 1, got 0")
    _one_line_error(capsys, ["train", "--batch-size", "-3"], "--batch-size must be >= 1")
    _one_line_error(capsys, ["train", "--hidden", "64", "0"], "--hidden sizes must be >= 1")
    _one_line_error(capsys, ["train", "--activation", "swish"], "unknown activation 'swish'")
    _one_line_error(capsys, ["train", "--alpha", "0.2"], "activation 'relu' takes none")
    _one_line_error(
        capsys, ["train", "--activation", "leaky_relu", "--alpha", "-1"], "finite alpha >= 0"
    )
    _one_line_error(
        capsys, ["train", "--download-deadline", "0"], "download deadline must be a positive number"
    )


def test_evaluate_reads_only_the_test_split(tmp_path, capsys, monkeypatch):
    import tinynet as tn

    net = tn.MLP.from_sizes([784, 10], output_activation="softmax", seed=0, rescale=(1 / 255, 0))
    net.save(tmp_path / "m.npz")
    asked = []
    real = tn.datasets.mnist_sample

    def spy(split="train", **kwargs):
        asked.append(split)
        return real(split, **kwargs)

    monkeypatch.setattr("tinynet.datasets.mnist_sample", spy)
    assert main(["evaluate", str(tmp_path / "m.npz"), "--sample"]) == 0
    assert asked == ["test"]
    assert "(1,000 images)" in capsys.readouterr().out


def test_train_with_leaky_relu_saves_its_alpha(tmp_path, capsys):
    import tinynet as tn

    args = ["train", "--sample", "--epochs", "1", "--hidden", "8", "--quiet"]
    path = tmp_path / "leaky.npz"
    assert main([*args, "--activation", "leaky_relu", "--alpha", "0.2", "--save", str(path)]) == 0
    assert "leaky_relu" in capsys.readouterr().out
    assert [getattr(layer, "alpha", None) for layer in tn.load(path).layers] == [None, 0.2, 0.0]


def test_one_epoch_is_singular(capsys):
    args = ["train", "--sample", "--epochs", "1", "--hidden", "8", "--quiet"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "1 epoch," in out and "1 epochs" not in out


def test_every_train_flag_shows_its_default(capsys):
    try:
        main(["train", "--help"])
    except SystemExit as exc:
        assert exc.code == 0
    text = capsys.readouterr().out
    # one entry per option: from a line starting with "  -" to the next
    entries = re.split(r"\n  (?=-)", text.split("options:")[1])
    for entry in filter(str.strip, entries):
        flag = entry.split()[0]
        if flag in ("-h,", "--quiet", "--sample", "--no-download"):  # switches
            continue
        assert "default" in " ".join(entry.split()), flag


def test_the_training_flags_are_checked_before_any_data_loads(capsys, monkeypatch):
    def no_data(*args, **kwargs):
        raise AssertionError("the data was loaded before the settings were checked")

    monkeypatch.setattr("tinynet.datasets.load_mnist", no_data)
    monkeypatch.setattr("tinynet.datasets.mnist_sample", no_data)
    _one_line_error(capsys, ["train", "--optimizer", "lion"], "invalid choice: 'lion'")
    _one_line_error(capsys, ["train", "--optimizer", "adam", "--momentum", "0.9"], "has none")
    _one_line_error(capsys, ["train", "--early-stopping", "3"], "give --validation-split")
    _one_line_error(capsys, ["train", "--schedule", "plateau"], "give --validation-split")
    _one_line_error(capsys, ["train", "--validation-split", "1"], r"must be in \[0, 1\)")
    _one_line_error(capsys, ["train", "--resume", "/no/such.ckpt"], "no checkpoint at")
    _one_line_error(
        capsys, ["train", "--checkpoint", "/no/such/dir/x.ckpt"], "its folder does not exist"
    )
    _one_line_error(capsys, ["train", "--weight-decay", "-1"], "weight_decay must be in")


def test_train_with_adam_a_split_early_stopping_and_a_checkpoint_then_resume(tmp_path, capsys):
    ckpt, plot = tmp_path / "run.ckpt", tmp_path / "curve.png"
    common = ["train", "--sample", "--hidden", "32", "--quiet", "--optimizer", "adamw"]
    common += ["--validation-split", "0.2", "--schedule", "cosine", "--batch-size", "32"]
    assert main([*common, "--epochs", "2", "--checkpoint", str(ckpt)]) == 0
    first = capsys.readouterr().out
    assert "AdamW(lr=0.001" in first and "weight_decay=0.01" in first and "val acc" in first
    assert ckpt.is_file()
    argv = [*common, "--epochs", "4", "--resume", str(ckpt), "--early-stopping", "5"]
    assert main([*argv, "--plot", str(plot)]) == 0
    out = capsys.readouterr().out
    assert "epoch  3/4" in out and "epoch  1/4" not in out  # it went on from epoch 3
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_adam_at_its_defaults_reaches_98_percent_on_mnist(capsys, mnist_dir, monkeypatch):
    monkeypatch.setenv("TINYNET_DATA_DIR", str(mnist_dir))
    assert main(["train", "--optimizer", "adam", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert float(re.search(r"test accuracy (\d+\.\d+)% on MNIST", out).group(1)) >= 98.0
