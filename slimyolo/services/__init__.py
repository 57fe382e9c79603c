"""The four gRPC services: ``slimyolo/services/<service>.py`` for trainer, pruner, converter and inference.

Each module is a thin servicer over the core library (``slimyolo``) and offers the hooks
``slimyolo serve <service>`` calls (:mod:`slimyolo.rpc.cli`): an optional ``add_arguments(parser)``
for its own flags, and ``build(server, args)``, which registers its services on the shared
server bootstrap (:class:`slimyolo.rpc.server.Server`) and reports them ready. The images
import only their own service's module: this package imports nothing (the inference image has
neither PyTorch nor TensorFlow). ``services/<service>/`` at the repository root keeps what an
image needs: its Dockerfile and README.md.
"""
