"""The four gRPC services: ``services/<stage>/server.py`` for trainer, pruner, converter and inference.

Each ``server.py`` is a thin servicer over the core library (``slimyolo``) and offers the hooks
``slimyolo serve <stage>`` calls (:mod:`slimyolo.rpc.cli`): an optional ``add_arguments(parser)``
for its own flags, and ``build(server, args)``, which registers its services on the shared
server bootstrap (:class:`slimyolo.rpc.server.Server`) and reports them ready.
"""
