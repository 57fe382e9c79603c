"""The stages of the pipeline as units of work over the artifact store.

Each stage (``train``, ``eval``, ``prune``, ``sweep``, ``convert``) is a spec
(:mod:`slimyolo.stages.specs`: store references to its inputs and outputs, and its parameters)
and a runner (:mod:`slimyolo.stages.runners`: fetch the inputs, run the core function, publish the
outputs). The trainer, pruner and converter services run them as jobs, ``slimyolo stage NAME
--spec FILE.yaml`` runs one as a batch Job, and ``slimyolo pipeline run`` chains them, in process
or through the services; all of them share this one implementation.
"""
