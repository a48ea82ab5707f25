"""The CUDA sources of the cupy backend: the files in ``cuda/`` (read by nvcc and editors as
CUDA), and every elementwise kernel's one-line body, as data.

``cuda/tinynet.cuh`` defines each rule once (activations and their gradients, SGD's and Adam's
steps); the elementwise kernels take it as their preamble, and ``cuda/rows.cu``, the fused
epoch's per-row kernels, includes it. The activation codes come from
tinynet.backend.ACTIVATION_CODE, as ``#define``s put before the header (``defines``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

from tinynet.backend import ACTIVATION_CODE

ACT = ACTIVATION_CODE  # activation name -> the ``act`` argument of the kernels below
CUDA_DIR = Path(__file__).with_name("cuda")
HEADER_NAME = "tinynet.cuh"


def defines() -> str:
    """The activation codes as the CUDA files expect them: ``#define TINYNET_ACT_RELU 4``."""
    return "".join(f"#define TINYNET_ACT_{name.upper()} {code}\n" for name, code in ACT.items())


def source(name: str) -> str:
    """The file ``cuda/name`` as one compilable text: the activation codes, then its text with
    the header's ``#include`` replaced by the header itself. Not NVRTC's -I: CuPy caches a
    kernel by its code's text, which an included file's change would not alter."""
    header = (CUDA_DIR / HEADER_NAME).read_text()
    text = (CUDA_DIR / name).read_text() if name != HEADER_NAME else header
    return defines() + text.replace(f'#include "{HEADER_NAME}"', header)


HEADER = source(HEADER_NAME)  # the elementwise kernels' preamble
ROW_KERNELS = source("rows.cu")
# the kernels of rows.cu, as RawModule's name_expressions: each template once per float type
ROW_KERNEL_TEMPLATES = (
    "tinynet_softmax_ce",
    "tinynet_squared_error",
    "tinynet_sigmoid_ce",
    "tinynet_softmax_rows",
    "tinynet_adam_scalars",
)
ROW_KERNEL_PLAIN = ("tinynet_add_losses", "tinynet_next_step")


def row_kernel_names(ctype: str) -> dict[str, str]:
    """Each kernel of rows.cu -> its name expression for the C type ``ctype`` (float, double)."""
    names = {name: f"{name}<{ctype}>" for name in ROW_KERNEL_TEMPLATES}
    return {**names, **{name: name for name in ROW_KERNEL_PLAIN}}


BIAS_ACT = "y = act_value(z + b, act, alpha);"  # inputs z, b, act, alpha; output y
ACT_GRAD = "dz = act_grad(y, dy, act, alpha);"  # inputs y, dy, act, alpha; output dz
# The update rules (CuPy passes an output parameter of an elementwise kernel as a reference to
# the array element). inputs g, lr, wd; output w
SGD = "T v = 0; sgd_step(w, g, v, lr, (T)0, false, wd);"
# inputs g, lr, m, nesterov, wd; outputs w, v
MOMENTUM = "sgd_step(w, g, v, lr, m, nesterov, wd);"
# the fused epoch's (plan.py): lr and momentum read from device memory (raw lr_m), so a
# captured CUDA graph keeps serving when a schedule changes the learning rate; inputs g, lr_m,
# nesterov, wd; outputs w, v. Without momentum (weight decay only): inputs g, lr_m, wd; output w
SGD_FROM_DEVICE = "sgd_step(w, g, v, lr_m[0], lr_m[1], nesterov, wd);"
SGD_DECAY_FROM_DEVICE = "T v = 0; sgd_step(w, g, v, lr_m[0], (T)0, false, wd);"
# inputs g, b1, b2, step_size, bias_root, eps, wd, shrink; outputs w, m, v
ADAM = "adam_step(w, g, m, v, b1, b2, step_size, bias_root, eps, wd, shrink);"
# the fused epoch's: every scalar read from device memory (raw h, see rows.cu's
# tinynet_adam_scalars), so a captured CUDA graph serves every update count and learning rate;
# inputs g, h; outputs w, m, v
ADAM_FROM_DEVICE = "adam_step(w, g, m, v, h[1], h[2], h[6], h[7], h[3], h[4], h[5]);"


class Elementwise(NamedTuple):
    """The arguments of one ``cupy.ElementwiseKernel``, kept as data: the backend builds its
    kernels from these, and tests/test_cuda_sources.py builds the same parameters and bodies
    for the host (g++) and for PTX (nvcc) without a GPU."""

    in_params: str
    out_params: str
    operation: str
    name: str
    preamble: str = ""

    def build(self, cp: Any) -> Any:
        return cp.ElementwiseKernel(
            self.in_params, self.out_params, self.operation, self.name, preamble=self.preamble
        )


# Every elementwise kernel of the backend (backend.py) and of the fused epoch (plan.py, the
# "plan_" ones), by name; the order of the parameters is the order of the call's arguments.
ELEMENTWISE = {
    "bias_act": Elementwise(
        "T z, T b, int32 act, T alpha",
        "T y",
        BIAS_ACT,
        "tinynet_bias_act",
        HEADER,
    ),
    "act_grad": Elementwise(
        "T y, T dy, int32 act, T alpha",
        "T dz",
        ACT_GRAD,
        "tinynet_act_grad",
        HEADER,
    ),
    "sgd": Elementwise("T g, T lr, T wd", "T w", SGD, "tinynet_sgd", HEADER),
    "momentum": Elementwise(
        "T g, T lr, T m, bool nesterov, T wd", "T w, T v", MOMENTUM, "tinynet_momentum", HEADER
    ),
    "adam": Elementwise(
        "T g, T b1, T b2, T step_size, T bias_root, T eps, T wd, T shrink",
        "T w, T m, T v",
        ADAM,
        "tinynet_adam",
        HEADER,
    ),
    "rescale": Elementwise(
        "X x, T scale, T offset", "T y", "y = (T)x * scale + offset", "tinynet_rescale"
    ),
    "se_grad": Elementwise("T y, T t, T c", "T dy", "dy = c * (y - t)", "tinynet_se_grad"),
    # the fused epoch's input rows, scaled: y[r, c] = x[order[first + step * batch + r], c];
    # first: the row of the batch this rank's shard starts at (0 in one process)
    "plan_gather": Elementwise(
        "raw X x, raw int64 order, raw int64 step, int64 first, int64 batch, int64 width, "
        "T scale, T offset",
        "T y",
        "long long r = i / width;"
        "y = (T)x[order[first + step[0] * batch + r] * width + (i - r * width)] * scale + offset",
        "tinynet_gather",
    ),
    # every rule of the fused epoch but plain SGD's GEMM: the gradient by a GEMM, then the rule
    "plan_sgd": Elementwise(
        "T g, raw T lr_m, bool nesterov, T wd",
        "T w, T v",
        SGD_FROM_DEVICE,
        "tinynet_plan_sgd",
        HEADER,
    ),
    "plan_sgd_decay": Elementwise(
        "T g, raw T lr_m, T wd", "T w", SGD_DECAY_FROM_DEVICE, "tinynet_plan_sgd_decay", HEADER
    ),
    "plan_adam": Elementwise(
        "T g, raw T h", "T w, T m, T v", ADAM_FROM_DEVICE, "tinynet_plan_adam", HEADER
    ),
}
