"""SlimYOLO: train, slim and serve darknet YOLO detectors on OpenVINO."""

import sys

__version__ = "0.1.0"


def _no_openvino_telemetry() -> None:
    """Keep OpenVINO's telemetry out of every SlimYOLO process: no network calls, no stray processes.

    OpenVINO's converter (``openvino.tools.ovc``) and NNCF report usage to Google Analytics unless
    the consent file ``~/intel/openvino_telemetry`` says "0" (what ``opt_in_out --opt_out`` writes);
    its GA4 backend forks a child from a thread during a conversion, which dies with "Fatal Python
    error" in a multi-threaded process (a service, a test run). Both fall back to their own stubs
    when the ``openvino_telemetry`` package cannot be imported, so hiding it here, before anything
    imports OpenVINO, turns it off without writing into the user's home (read-only in the images).
    """
    sys.modules.setdefault("openvino_telemetry", None)  # type: ignore[arg-type]  # None: "import fails"


_no_openvino_telemetry()
