"""The ``tinynet`` command: ``train`` on MNIST, ``evaluate`` a saved model, ``info``.

Every deliberate error ends with one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
import warnings
from typing import Any

import numpy as np

import tinynet as tn
from tinynet.datasets import mnist_loader
from tinynet.errors import InvalidInputError, TinynetError, checked_seed
from tinynet.layers import activation_alpha, check_weights_fit
from tinynet.system import DISTRIBUTION, install_hint

# Recipes: the settings each flag falls back to. `default` is tuned for accuracy (>= 98% on
# MNIST); `seed` is the tutorials' classic network, trained one sample at a time, with their
# update -(t - o) o (1 - o) x, which is the gradient of 0.5 * sum (t - o)^2 (loss_scale 0.5).
RECIPES: dict[str, dict[str, Any]] = {
    "default": dict(
        hidden=[256, 128],
        activation="relu",
        loss="cross_entropy",
        epochs=12,
        batch_size=64,
        optimizer="sgd",
        lr=0.05,
        lr_decay=0.8,  # lr *= 0.8 after each epoch (the exponential schedule)
        schedule="exponential",
        momentum=0.9,
        init="auto",
        bias=True,
        targets=(0.0, 1.0),
        inputs=(1 / 255, 0.0),
        loss_scale=1.0,
    ),
    "seed": dict(
        hidden=[200],
        activation="sigmoid",
        loss="squared_error",
        epochs=5,
        batch_size=1,
        optimizer="sgd",
        lr=0.1,
        lr_decay=1.0,
        schedule="none",
        momentum=0.0,
        init="normal",
        bias=False,
        targets=(0.01, 0.99),
        inputs=(0.99 / 255, 0.01),
        loss_scale=0.5,
    ),
}


OPTIMIZERS = {"sgd": tn.SGD, "adam": tn.Adam, "adamw": tn.AdamW}
ADAM_LR = 1e-3  # adam's and adamw's --lr when none is given (torch.optim's default)
ADAMW_DECAY = 1e-2  # adamw's --weight-decay when none is given (torch.optim's default)
SCHEDULES = ["none", "exponential", "step", "cosine", "plateau"]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, not usage + message
        self.exit(2, f"tinynet: error: {message} (see '{self.prog} -h')\n")


def _shown(value: Any) -> str:
    if isinstance(value, list):
        return " ".join(map(str, value))
    return f"{value:g}" if isinstance(value, float) else str(value)


def _recipe_default(key: str) -> str:
    """'(default: 12; seed recipe: 5)': what each recipe gives a flag left out."""
    others = "; ".join(
        f"{name} recipe: {_shown(recipe[key])}"
        for name, recipe in RECIPES.items()
        if name != "default"
    )
    return f"(default: {_shown(RECIPES['default'][key])}; {others})"


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="tinynet", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--version", action="version", version=f"tinynet {tn.__version__} ({DISTRIBUTION})"
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    train = sub.add_parser("train", help="train an MLP on MNIST and report test accuracy")
    _train_flags(train)

    evaluate = sub.add_parser("evaluate", help="test accuracy of a saved model on MNIST")
    evaluate.add_argument("model", help="a file written by 'tinynet train --save'")
    evaluate.add_argument("--backend", help="numpy, auto, ... (default: $TINYNET_BACKEND or auto)")
    _data_flags(evaluate)

    export = sub.add_parser("export", help="write a saved model as ONNX (needs [onnx])")
    export.add_argument("model", help="a file written by 'tinynet train --save' or net.save")
    export.add_argument("onnx", help="the ONNX file to write")
    export.add_argument("--opset", type=int, default=17, help="ONNX opset (default: 17)")
    export.add_argument(
        "--input-type",
        choices=["float32", "uint8"],
        default="float32",
        help="the input's type; uint8 for models with a Rescaling layer (default: float32)",
    )

    sub.add_parser("info", help="backends, versions, threads and GPU")
    return parser


def _train_flags(train: argparse.ArgumentParser) -> None:
    """``tinynet train``'s flags; each recipe's default shows in its help."""
    train.add_argument(
        "--recipe",
        choices=sorted(RECIPES),
        default="default",
        help="settings the other flags override (default: %(default)s)",
    )
    train.add_argument("--backend", help="numpy, auto, ... (default: $TINYNET_BACKEND or auto)")
    train.add_argument(
        "--hidden", type=int, nargs="+", help="hidden layer sizes " + _recipe_default("hidden")
    )
    train.add_argument(
        "--activation",
        help=f"hidden activation, one of {', '.join(tn.ACTIVATIONS)} "
        + _recipe_default("activation"),
    )
    train.add_argument(
        "--alpha",
        type=float,
        help="leaky_relu's slope for negative inputs (default: 0.01)",
    )
    train.add_argument(
        "--loss",
        help="cross_entropy or squared_error (binary_cross_entropy needs sigmoid outputs) "
        + _recipe_default("loss"),
    )
    train.add_argument("--epochs", type=int, help=_recipe_default("epochs"))
    train.add_argument("--batch-size", type=int, help=_recipe_default("batch_size"))
    train.add_argument(
        "--optimizer",
        choices=sorted(OPTIMIZERS),
        help="sgd (with --momentum), adam, or adamw (decoupled weight decay) "
        + _recipe_default("optimizer"),
    )
    train.add_argument(
        "--lr",
        type=float,
        help=f"learning rate {_recipe_default('lr')[:-1]}; adam, adamw: {ADAM_LR:g})",
    )
    train.add_argument("--momentum", type=float, help="sgd's " + _recipe_default("momentum"))
    train.add_argument(
        "--weight-decay",
        type=float,
        help=f"L2 for sgd and adam, decoupled for adamw (default: 0; adamw: {ADAMW_DECAY:g})",
    )
    train.add_argument(
        "--schedule",
        choices=SCHEDULES,
        help="the learning rate per epoch: exponential (x --lr-decay), step (x0.1 every third "
        "of the epochs), cosine (down to 0 over the epochs), plateau (x0.5 after an epoch "
        "without a better validation loss; needs --validation-split), none "
        + _recipe_default("schedule"),
    )
    train.add_argument(
        "--lr-decay",
        type=float,
        help="the exponential schedule's factor per epoch " + _recipe_default("lr_decay"),
    )
    train.add_argument(
        "--validation-split",
        type=float,
        default=0.0,
        metavar="F",
        help="hold out this fraction of the training set to validate on each epoch; without "
        "it the test set is scored each epoch (default: 0)",
    )
    train.add_argument(
        "--early-stopping",
        type=int,
        metavar="N",
        help="stop after N epochs without a better validation loss and keep the best epoch's "
        "weights; needs --validation-split (default: off)",
    )
    train.add_argument(
        "--checkpoint", metavar="PATH", help="write a checkpoint after every epoch (default: none)"
    )
    train.add_argument(
        "--resume", metavar="PATH", help="continue the run a checkpoint holds (default: none)"
    )
    train.add_argument(
        "--seed", type=int, default=0, help="initialisation and shuffling seed (default: 0)"
    )
    train.add_argument(
        "--dtype", default="float32", choices=["float32", "float64"], help="(default: float32)"
    )
    _data_flags(train)
    train.add_argument(
        "--plot", metavar="PNG", help="save the training curve, matplotlib (default: none)"
    )
    train.add_argument("--save", metavar="NPZ", help="save the trained model (default: none)")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.add_argument(
        "--threads",
        type=int,
        metavar="N",
        help="train on N threads, at most the cores (default: chosen from the machine's load, "
        "one while other processes keep every core busy)",
    )
    train.add_argument(
        "--average-every",
        type=int,
        metavar="K",
        help="under mpiexec: local SGD, the ranks average their weights every K steps "
        "(default: none, the gradients averaged every step)",
    )


def _data_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir",
        help="folder with the MNIST IDX files, raw or .gz (default: $TINYNET_DATA_DIR, then "
        "~/.cache/tinynet/mnist)",
    )
    parser.add_argument("--no-download", action="store_true", help="never download MNIST")
    parser.add_argument(
        "--download-deadline",
        type=float,
        default=mnist_loader.DEADLINE,
        metavar="SECONDS",
        help="give up on a mirror after this long per file (default: %(default)g)",
    )
    parser.add_argument(
        "--sample", action="store_true", help="use the small MNIST sample shipped in the package"
    )


def _data(args: argparse.Namespace, train: bool = True):
    """(train, test, source); train is None when not asked for."""
    if args.data_dir and not os.path.isdir(args.data_dir):  # never a silent fallback
        raise InvalidInputError(f"--data-dir {args.data_dir}: no such folder")
    if args.sample:
        return (
            tn.datasets.mnist_sample("train") if train else None,
            tn.datasets.mnist_sample("test"),
            mnist_loader.SAMPLE_NAME,
        )
    mnist_loader.check_deadline(args.download_deadline)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train, test, source = tn.datasets.load_mnist(
            args.data_dir,
            not args.no_download,
            progress=True,
            train=train,
            deadline=args.download_deadline,
        )
    for w in caught:
        print(f"\n*** WARNING: {w.message} ***\n", file=sys.stderr)
    return train, test, source


def _check_output_path(path: str | None, what: str) -> None:
    """Fail before training, not after, when a result could not be written: a missing or
    unwritable folder (tried with a real file), or a directory where the file should be."""
    if not path:
        return
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise InvalidInputError(f"cannot write {what} {path}: its folder does not exist")
    if os.path.isdir(path):
        raise InvalidInputError(f"cannot write {what} {path}: it is a directory")
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise InvalidInputError(
            f"cannot write {what} {path}: {exc.strerror or exc} in {folder}"
        ) from None


def _save_model(net: tn.MLP, path: str, say: Any) -> None:
    """net.save(path); if that fails after training, the model is saved in the temp folder
    instead and the error says where (hours of training are not lost to a full disk)."""
    try:
        net.save(path)
    except TinynetError as exc:
        fallback = os.path.join(tempfile.gettempdir(), f"tinynet-model-{os.getpid()}.npz")
        net.save(fallback)
        raise TinynetError(f"{exc}; the trained model is saved in {fallback} instead") from None
    say(f"model saved to {path}")


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    """The recipe's settings overridden by the flags given, each checked (with the output
    paths, the seed and the sizes) before any data loads: seconds, or a download."""
    recipe = RECIPES[args.recipe]
    opt = {k: getattr(args, k, None) for k in recipe}
    opt = {k: recipe[k] if v is None else v for k, v in opt.items()}
    if not 0 < opt["lr_decay"] <= 1:
        raise InvalidInputError(f"--lr-decay must be in (0, 1], got {opt['lr_decay']}")
    adam = opt["optimizer"] in ("adam", "adamw")
    if args.lr is None and adam:
        opt["lr"] = ADAM_LR
    if args.weight_decay is None:
        opt["weight_decay"] = ADAMW_DECAY if opt["optimizer"] == "adamw" else 0.0
    else:
        opt["weight_decay"] = args.weight_decay
    if adam and args.momentum is not None:
        raise InvalidInputError(f"--momentum is sgd's; {opt['optimizer']} has none")
    if not 0 <= args.validation_split < 1:
        raise InvalidInputError(
            f"--validation-split must be in [0, 1), got {args.validation_split}"
        )
    watches = args.early_stopping is not None or opt["schedule"] == "plateau"
    if watches and not args.validation_split:
        raise InvalidInputError(
            "--early-stopping and --schedule plateau watch the validation loss: give "
            "--validation-split (the test set must not steer training)"
        )
    if args.early_stopping is not None and args.early_stopping < 1:
        raise InvalidInputError(f"--early-stopping must be >= 1, got {args.early_stopping}")
    _check_output_path(args.checkpoint, "the checkpoint to")
    if args.resume and not os.path.isfile(args.resume):
        raise InvalidInputError(f"--resume: no checkpoint at {args.resume}")
    if args.resume and args.lr is not None:
        warnings.warn(
            f"--lr {args.lr:g} is not used: a resumed run goes on with the learning rate its "
            "checkpoint holds (and its schedule)",
            RuntimeWarning,
            stacklevel=2,
        )
    checked_seed(args.seed, "--seed")
    if args.threads is not None and args.threads < 1:
        raise InvalidInputError(f"--threads must be >= 1, got {args.threads}")
    # every setting is checked before the data loads (seconds, or a download)
    for flag in ("epochs", "batch_size"):
        if opt[flag] < 1:
            raise InvalidInputError(f"--{flag.replace('_', '-')} must be >= 1, got {opt[flag]}")
    if any(size < 1 for size in opt["hidden"]):
        raise InvalidInputError(f"--hidden sizes must be >= 1, got {opt['hidden']}")
    sizes = [mnist_loader.PIXELS, *opt["hidden"], 10]
    check_weights_fit(list(zip(sizes[1:], sizes[:-1], strict=True)), np.dtype(args.dtype))
    if opt["activation"] not in tn.ACTIVATIONS:
        raise InvalidInputError(
            f"unknown activation {opt['activation']!r}; valid: {', '.join(tn.ACTIVATIONS)}"
        )
    activation_alpha(opt["activation"], args.alpha)  # an --alpha it cannot take: an error
    _check_output_path(args.save, "the model to")
    _check_output_path(args.plot, "the plot to")
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError as exc:
            raise InvalidInputError(f"--plot needs matplotlib: {install_hint('plot')}") from exc
    return opt


def _training_parts(args: argparse.Namespace, opt: dict[str, Any]) -> tuple:
    """(loss, optimizer, schedule, early stopping) for these settings."""
    loss = tn.losses.get_loss(opt["loss"])
    if isinstance(loss, tn.SquaredError):
        loss = tn.SquaredError(scale=opt["loss_scale"])
    if opt["optimizer"] in ("adam", "adamw"):
        optimizer = OPTIMIZERS[opt["optimizer"]](opt["lr"], weight_decay=opt["weight_decay"])
    else:
        optimizer = tn.SGD(opt["lr"], opt["momentum"], weight_decay=opt["weight_decay"])
    schedule = {
        "none": None,
        "exponential": tn.ExponentialLR(opt["lr_decay"]),
        "step": tn.StepLR(max(1, opt["epochs"] // 3)),
        "cosine": tn.CosineLR(opt["epochs"]),
        "plateau": tn.ReduceLROnPlateau(factor=0.5, patience=0),
    }[opt["schedule"]]
    stopper = None
    if args.early_stopping is not None:
        stopper = tn.EarlyStopping(patience=args.early_stopping)
    return loss, optimizer, schedule, stopper


def cmd_train(args: argparse.Namespace) -> int:
    opt = _settings(args)
    if args.backend:
        tn.set_backend(args.backend)
    backend = tn.get_backend()
    loss, optimizer, schedule, stopper = _training_parts(args, opt)

    (x_train, y_train), (x_test, y_test), source = _data(args)
    out_act = "softmax" if isinstance(loss, tn.CrossEntropy) else "sigmoid"
    net = tn.MLP.from_sizes(
        [x_train.shape[1], *opt["hidden"], 10],
        opt["activation"],
        out_act,
        bias=opt["bias"],
        init=opt["init"],
        dtype=args.dtype,
        seed=args.seed,
        rescale=opt["inputs"],
        alpha=args.alpha,
    )
    off, on = opt["targets"]
    t_train = tn.one_hot(y_train, 10, on=on, off=off, dtype=args.dtype)
    t_test = tn.one_hot(y_test, 10, on=on, off=off, dtype=args.dtype)

    # under mpiexec: data-parallel over the ranks; rank 0 alone prints, plots and saves
    distributed = None
    if tn.distributed.launched_size() > 1:
        distributed = tn.distributed.MPI(average_every=args.average_every)
    elif args.average_every is not None:
        raise InvalidInputError("--average-every is for runs under mpiexec with 2 or more ranks")
    root = distributed is None or distributed.is_root
    say = print if root else _silent
    ranks = f"  ranks: {distributed.size}" if distributed is not None else ""
    if distributed is not None and distributed.average_every is not None:
        ranks += f" (local SGD, averaging every {distributed.average_every} steps)"
    say(
        f"tinynet {tn.__version__}  backend: {backend.name}{ranks}  data: {source} "
        f"({len(x_train):,} train / {len(x_test):,} test)"
    )
    say(
        f"recipe {args.recipe}: {net.in_features}-{'-'.join(map(str, opt['hidden']))}-10 "
        f"{opt['activation']}, {loss!r}, {optimizer!r} ({opt['schedule']} schedule), "
        f"batch {opt['batch_size']}, {_count(opt['epochs'], 'epoch')}, {args.dtype}"
    )

    scored = "val" if args.validation_split else "test"

    def end_of_epoch(epoch: int, r: dict[str, float]) -> None:
        say(
            f"epoch {epoch:2d}/{opt['epochs']}  loss {r['loss']:.4f}  "
            f"{scored} acc {100 * r['val_accuracy']:.2f}%  lr {r['lr']:.3g}  {r['time']:.2f} s  "
            f"{r['samples_per_s']:,.0f} samples/s",
            flush=True,
        )

    started = time.perf_counter()
    history = net.fit(
        x_train,
        t_train,
        loss,
        optimizer,
        opt["epochs"],
        opt["batch_size"],
        shuffle=True,
        seed=args.seed,
        validation_data=None if args.validation_split else (x_test, t_test),
        progress=not args.quiet,
        on_epoch_end=end_of_epoch,
        validation_split=args.validation_split,
        schedule=schedule,
        early_stopping=stopper,
        checkpoint=args.checkpoint,
        resume=args.resume,
        distributed=distributed,
        threads=args.threads,
    )
    wall = time.perf_counter() - started
    accuracy = net.evaluate(x_test, t_test)["accuracy"]
    epochs_run = max(1, len(history["time"]))
    train_time = sum(history["time"]) or float("nan")
    trained = epochs_run * len(x_train) * (1 - args.validation_split)
    if stopper is not None and stopper.stopped_epoch is not None:
        say(f"stopped after epoch {stopper.stopped_epoch}; kept epoch {stopper.best_epoch}")
    say(
        f"test accuracy {100 * accuracy:.2f}% on {source}; training {train_time:.1f} s "
        f"({train_time / epochs_run:.2f} s/epoch, "
        f"{trained / train_time:,.0f} samples/s), wall {wall:.1f} s"
    )
    if args.save and root:
        _save_model(net, args.save, say)
    if args.plot and root:
        _plot(history, args.plot, f"{source}, recipe {args.recipe}, {backend.name}")
        say(f"training curve saved to {args.plot}")
    return 0


def _silent(*args: object, **kwargs: object) -> None:
    """print's stand-in on the ranks other than 0."""


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _plot(history: tn.History, path: str, title: str) -> None:
    """Training (and validation) loss with the validation accuracy, and the learning rate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = np.arange(1, len(history["loss"]) + 1)
    fig, (ax_loss, ax_lr) = plt.subplots(
        2, 1, figsize=(6, 5.5), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    ax_loss.plot(epochs, history["loss"], "o-", color="tab:blue", label="training loss")
    if "val_loss" in history.history:
        ax_loss.plot(epochs, history["val_loss"], "o--", color="tab:cyan", label="validation loss")
    ax_loss.set_ylabel("loss", color="tab:blue")
    ax_loss.legend(loc="upper center", fontsize=8)
    if "val_accuracy" in history.history:
        ax_acc = ax_loss.twinx()
        accuracy = 100 * np.array(history["val_accuracy"])
        ax_acc.plot(epochs, accuracy, "s-", color="tab:red", label="validation accuracy")
        ax_acc.set_ylabel("validation accuracy (%)", color="tab:red")
    ax_lr.plot(epochs, history["lr"], ".-", color="tab:gray")
    ax_lr.set_ylabel("learning rate")
    ax_lr.set_xlabel("epoch")
    ax_loss.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def cmd_evaluate(args: argparse.Namespace) -> int:
    if args.backend:
        tn.set_backend(args.backend)
    net = tn.load(args.model)
    _, (x_test, y_test), source = _data(args, train=False)
    scores = net.evaluate(x_test, y_test)
    print(f"test accuracy {100 * scores['accuracy']:.2f}% on {source} ({len(x_test):,} images)")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    tn.set_backend("numpy")  # the weights only: no kernels to compile
    if os.path.exists(args.onnx) and os.path.realpath(args.onnx) == os.path.realpath(args.model):
        raise InvalidInputError(
            f"the ONNX file {args.onnx} is the model file itself: name another file"
        )
    net = tn.load(args.model)
    try:
        net.to_onnx(args.onnx, opset=args.opset, input_type=args.input_type)
    except ImportError as exc:  # the onnx package missing: the error says what to install
        print(f"tinynet: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.onnx} (ONNX opset {args.opset}, {args.input_type} input)")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    # what `train` would use: an invalid TINYNET_BACKEND fails here as it would there
    active = tn.get_backend()
    print(f"tinynet {tn.__version__}")
    for key, value in tn.system.machine_info().items():
        print(f"  {key:12s} {value}")
    print("backends:")
    for name, why in tn.backend.backend_status().items():
        if why:
            print(f"  {name:8s} unavailable: {why}")
            continue
        info = tn.backend._resolve(name).info()
        details = ", ".join(f"{k} {v}" for k, v in info.items() if k != "backend")
        print(f"  {name:8s} ok      {details}")
    try:
        print(f"  auto  -> {tn.backend._resolve('auto').name}")
    except TinynetError as exc:
        print(f"  auto  -> none: {exc}")
    from_env = os.environ.get(tn.backend.ENV_VAR, "").strip()
    chosen = f"{tn.backend.ENV_VAR}={from_env}" if from_env else "default: auto"
    print(f"active backend: {active.name} ({chosen})")
    return 0


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """A warning as the command's other notes are: one framed line, not Python's two."""
    print(f"tinynet: warning: {message}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    commands = {"train": cmd_train, "evaluate": cmd_evaluate, "export": cmd_export}
    command = {**commands, "info": cmd_info}[args.command]
    # tinynet's own notes (which backend auto chose, a first compilation) go to stderr
    log, handler = logging.getLogger("tinynet"), logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("tinynet: %(message)s"))
    log.addHandler(handler)
    level, log.level = log.level, logging.INFO
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            return command(args)
    except TinynetError as exc:
        print(f"tinynet: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("tinynet: interrupted", file=sys.stderr)
        return 130
    finally:
        log.removeHandler(handler)
        log.setLevel(level)


if __name__ == "__main__":
    sys.exit(main())
