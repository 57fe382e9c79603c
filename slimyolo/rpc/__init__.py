"""The transport: generated gRPC stubs (``gen``), the one server bootstrap, jobs, and client helpers.

Nothing in ``slimyolo`` outside this package and the servicers (:mod:`slimyolo.services`) imports
gRPC; servicers only translate between protobuf messages and the core library. Both sides of the
stage services are :mod:`slimyolo.rpc.stage_service` (the one Start... servicer, built from the registry
of stage kinds) and :mod:`slimyolo.rpc.stages` (the client that ``stage --remote`` and ``pipeline run
--remote`` use).
"""

MAX_MESSAGE_BYTES = 64 * 1024 * 1024
"""The largest gRPC message a server accepts or sends by default (``SLIMYOLO_GRPC_MAX_MESSAGE_BYTES``), and so
a client's channel."""
