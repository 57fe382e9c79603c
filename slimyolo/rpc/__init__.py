"""The transport: generated gRPC stubs (``gen``), the one server bootstrap, jobs, and client helpers.

Nothing in ``slimyolo`` outside this package imports gRPC; servicers only translate between
protobuf messages and the core library.
"""
