"""SlimYOLO: train, slim and serve darknet YOLO detectors on OpenVINO."""

__version__ = "0.1.0"
