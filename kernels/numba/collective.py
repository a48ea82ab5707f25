"""MPI_Allreduce called from compiled code, so a distributed epoch stays one compiled call.

As with gemm (blas.py), the function's address is passed to the kernels as an integer at run
time, never baked into the kernel cache: it comes from the run's Collective
(``compiled_allreduce``: the MPI library mpi4py loaded, or a test's fake). Handles
(communicator, datatype, operation) are passed as integers of the MPI library's handle width
(MPICH: 32-bit integers; Open MPI: pointers).
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from tinynet.kernels.numba.compile import inner_jit


@intrinsic
def _call_allreduce(typingctx, address, send, recv, count, datatype, op, comm):
    """MPI_Allreduce(send, recv, count, datatype, op, comm) at ``address``; its return code."""
    signature = types.int32(address, send, recv, count, datatype, op, comm)

    def codegen(context, builder, signature, args):
        address, send, recv, count, datatype, op, comm = args
        data = [
            context.make_array(signature.args[i])(context, builder, value).data
            for i, value in ((1, send), (2, recv))
        ]
        void_p = ir.IntType(8).as_pointer()
        handle = context.get_value_type(signature.args[4])
        arguments = [builder.bitcast(data[0], void_p), builder.bitcast(data[1], void_p)]
        arguments.append(context.cast(builder, count, signature.args[3], types.int32))
        arguments += [datatype, op, comm]
        fn_type = ir.FunctionType(ir.IntType(32), [void_p, void_p, ir.IntType(32), handle,
                                                   handle, handle])  # fmt: skip
        fn = builder.inttoptr(address, fn_type.as_pointer())
        return builder.call(fn, arguments)

    return signature, codegen


@inner_jit
def allreduce_sum(handles, send, recv):
    """recv <- the sum over the ranks of send (contiguous 1-D arrays of one size); the MPI
    return code (0: success)."""
    address, comm, datatype, op = handles
    return _call_allreduce(address, send, recv, send.shape[0], datatype, op, comm)
