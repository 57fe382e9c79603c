"""The images a conversion runs on: INT8 calibration, parity checks, and mAP for accuracy control.

``--calib-data`` names one of three things:

- a folder of images (``.jpg``, ``.png``, …) — unlabelled, enough for calibration and parity;
- a darknet ``.data`` file, or a data set folder as ``slimyolo data synth`` writes it — read
  with :func:`slimyolo.data.dataset.read_data_file`, labelled, so INT8 accuracy control can
  measure mAP@0.5 (the validation split is used, the training split if there is none);
- nothing: a synthetic data set (:func:`slimyolo.data.synth.write_synthetic`) is generated in
  the conversion's scratch folder, so a conversion always checks itself on real images.

Images are read, letterboxed and normalised by the same functions training and evaluation
use, so calibration statistics and parity figures are those of the deployed input pipeline.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from slimyolo.data.dataset import IMAGE_SUFFIXES, load_image, read_data_file
from slimyolo.errors import NotFoundError, SlimYoloError
from slimyolo.train.evaluate import preprocess


@dataclass(frozen=True)
class ImageSource:
    """Where the images come from: calibration/parity images, and for a data set what mAP needs."""

    description: str
    paths: tuple[Path, ...]  # calibration and parity images
    data: Any = None  # the DataSpec of a labelled data set, else None
    eval_paths: tuple[Path, ...] = ()  # the labelled images mAP@0.5 is measured on
    names: tuple[str, ...] | None = None  # class names a user-given data set declares
    synthetic: bool = False

    @property
    def labelled(self) -> bool:
        return self.data is not None


def _image_folder(folder: Path) -> ImageSource:
    paths = tuple(sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES))
    if not paths:
        raise SlimYoloError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder, and no .data "
                            "file that would make it a data set folder")
    return ImageSource(f"image folder {folder}", paths)


def _data_set(path: Path, synthetic: bool = False) -> ImageSource:
    """Calibrate on the training split and measure mAP on the validation split (each falls back on the other)."""
    spec = read_data_file(path)
    calib_split = "train" if spec.train else "valid"
    eval_split = "valid" if spec.valid else "train"
    what = "synthetic data set" if synthetic else f"data set {spec.path}"
    return ImageSource(f"{what} ({calib_split} split)", tuple(spec.split(calib_split)), spec,
                       tuple(spec.split(eval_split)), None if synthetic else tuple(spec.names), synthetic)


def open_source(source: str | Path | None, work: Path, classes: int = 2, size: int = 416,
                images: int = 16) -> ImageSource:
    """Resolve ``--calib-data`` (see the module docstring).

    Without a source, ``images`` synthetic images of long side ``size`` with up to ``classes``
    shapes are written under ``work`` (scratch space the caller removes).
    """
    if source is None:
        from slimyolo.data.synth import SHAPES, write_synthetic

        data = write_synthetic(work / "synth", classes=min(classes, len(SHAPES)), train=images, val=0, size=size)
        return _data_set(data, synthetic=True)
    path = Path(source)
    if not path.exists():
        raise NotFoundError(f"{path}: no such calibration data (an image folder, a .data file or a data set folder)")
    if path.is_dir() and not any(p.suffix == ".data" for p in path.iterdir() if p.is_file()):
        return _image_folder(path)
    return _data_set(path)


def read_frames(paths: tuple[Path, ...] | list[Path]) -> list[np.ndarray]:
    """The images as OpenCV frames (BGR uint8); an unreadable file is an error naming it."""
    return [load_image(p) for p in paths]


def to_tensor(frames: list[np.ndarray], height: int, width: int) -> np.ndarray:
    """Letterboxed float32 NCHW RGB in [0, 1]: what the PyTorch model and the default IR take."""
    return np.stack([preprocess(f, height, width)[0] for f in frames])
