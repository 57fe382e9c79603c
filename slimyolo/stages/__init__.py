"""The stages of the pipeline as units of work over the artifact store.

Each stage kind (``train``, ``eval``, ``prune``, ``sweep``, ``convert``) is one entry of the registry
(:mod:`slimyolo.stages.kinds`): a spec (:mod:`slimyolo.stages.specs`: store references to its
inputs and outputs, and its parameters), a runner (:mod:`slimyolo.stages.runners`: fetch the
inputs, run the core function, publish the outputs) and the service that runs it. The trainer,
pruner and converter services run them as jobs (:mod:`slimyolo.rpc.stage_service`), ``slimyolo
stage KIND --spec FILE.yaml`` runs one as a batch Job, and ``slimyolo pipeline run`` chains them,
in process or through the services; all of them share this one implementation, which knows
nothing of gRPC.
"""
