"""Compute kernels, one module per backend; installed as ``tinynet.kernels``.

``numpy_backend`` is the reference: its kernels are the specification the other backends are
tested against.
"""
