"""``slimyolo pipeline run CONFIG.yaml [--remote]``: the whole method, from a data set to served IRs.

base training → sparsity training → sweep → prune (at the sweep's best point, or at the point
the config names) → fine-tuning → conversion (the baseline and the fine-tuned model in FP32, the
fine-tuned model in INT8) → evaluation, then the table: P, R, mAP@0.5, params, size, BFLOPs and
OpenVINO FPS of the baseline, sparse, pruned, fine-tuned and INT8 models, printed and saved as
``results.json`` and ``results.md`` in the run folder ``<out>/<name>-<time>/``.

Every step is a stage (:mod:`slimyolo.stages`) exchanging artifacts through the store: in this
process by default (the store of ``SLIMYOLO_STORE``, a local folder unless set), or with
``--remote`` as jobs of the trainer, pruner and converter services, which must share that store
(S3/MinIO). The remote run ends with the inference service detecting objects in a validation
image with the fine-tuned model it now serves. Service addresses come from the config's
``remote`` section or ``SLIMYOLO_<SERVICE>_ADDRESS`` (which wins).

The package:

- :mod:`~slimyolo.pipeline.config`: :class:`PipelineConfig` (the YAML config, its example, and
  each section checked as the stage spec it becomes) and the service addresses;
- :mod:`~slimyolo.pipeline.run`: :func:`run_pipeline`, the steps in order, and :class:`PipelineResult`;
- :mod:`~slimyolo.pipeline.report`: the final table, its notes and the story of the run;
- :mod:`~slimyolo.pipeline.runners`: :class:`StageRunner` and :class:`LocalRunner` (stages in this
  process); the services' runner is :class:`slimyolo.rpc.stages.RemoteRunner`, as nothing outside
  :mod:`slimyolo.rpc` imports gRPC;
- :mod:`~slimyolo.pipeline.cli`: the ``slimyolo pipeline`` command.
"""

from slimyolo.pipeline.cli import register
from slimyolo.pipeline.config import (
    RESERVED,
    SECTIONS,
    SERVICES,
    TRAININGS,
    PipelineConfig,
    address_variable,
    remote_addresses,
)
from slimyolo.pipeline.report import ROWS, story
from slimyolo.pipeline.run import PipelineResult, prepare_data, prune_point, run_pipeline
from slimyolo.pipeline.runners import LocalRunner, Progress, StageRunner

__all__ = ["RESERVED", "ROWS", "SECTIONS", "SERVICES", "TRAININGS", "LocalRunner", "PipelineConfig", "PipelineResult",
           "Progress", "StageRunner", "address_variable", "prepare_data", "prune_point", "register",
           "remote_addresses", "run_pipeline", "story"]
