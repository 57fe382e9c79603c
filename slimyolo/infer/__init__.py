"""Inference: YOLO decode + NMS, the IR metadata, and (with OpenVINO) the engine.

Nothing here imports PyTorch or TensorFlow: the inference image carries neither.
"""
