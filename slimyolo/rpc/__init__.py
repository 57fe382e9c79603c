"""The transport: generated gRPC stubs (``gen``), the one server bootstrap, jobs, and client helpers.

Nothing in ``slimyolo`` outside this package and the servicers (:mod:`slimyolo.services`) imports
gRPC; servicers only translate between protobuf messages and the core library. Both sides of the
stage services (the generic Start... servicer, and the client that ``stage --remote`` and
``pipeline run --remote`` use) are :mod:`slimyolo.rpc.stages`.
"""

MAX_MESSAGE_BYTES = 64 * 1024 * 1024
"""The largest gRPC message a server accepts or sends by default (``SLIMYOLO_GRPC_MAX_MESSAGE_BYTES``), and so
a client's channel."""
