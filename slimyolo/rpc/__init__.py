"""The transport: generated gRPC stubs (``gen``), the one server bootstrap, jobs, and client helpers.

Nothing in ``slimyolo`` outside this package and the servicers (:mod:`slimyolo.services`) imports
gRPC; servicers only translate between protobuf messages and the core library. The client side
of the stage services, what ``pipeline run --remote`` uses, is :mod:`slimyolo.rpc.stages`.
"""
