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

import os as _os

# OpenCV reads its decode limit once, as cv2 loads: give it the service's before anything imports cv2
# (the images' own header checks come first; this backs them up). A malformed value is left to the
# service's configuration check, which names it.
if _os.environ.get("SLIMYOLO_MAX_IMAGE_PIXELS", "").isdigit():
    _os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", _os.environ["SLIMYOLO_MAX_IMAGE_PIXELS"])
else:
    _os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", "50000000")  # ServingConfig.max_image_pixels
