"""Serving: the inference service's logic, usable without gRPC.

- :mod:`~slimyolo.serving.repository`: model repositories (a local folder written by ``convert``,
  or trees in the artifact store) and what counts as a complete model version in each;
- :mod:`~slimyolo.serving.manager`: loading, unloading and hot-reloading model versions, with
  leases so that requests in flight finish on the version they started on;
- :mod:`~slimyolo.serving.model`: one loaded version (OpenVINO engines, mosaic, multiplexer);
- :mod:`~slimyolo.serving.streams`: the stream multiplexer (frames of many streams share one
  k×k mosaic inference) and the ordered, pipelined processing of one stream call;
- :mod:`~slimyolo.serving.kserve`: tensors of the Open Inference Protocol (KServe v2);
- :mod:`~slimyolo.serving.images`: image decoding with limits, per-request detection options;
- :mod:`~slimyolo.serving.metrics`: the ``slimyolo_inference_*`` Prometheus series;
- :mod:`~slimyolo.serving.dataplane`: the one entry point the servicers call.

Nothing here imports PyTorch, TensorFlow or gRPC: the inference image carries only OpenVINO,
OpenCV, NumPy and the transport.
"""
