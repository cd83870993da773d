"""The runtime layer: device specs and fingerprints, backends (one module each), the timing
harness and machine-speed calibration, and the ONNX / TensorRT / AOTInductor builders and runners.
Profiling and export both stand on it; it knows nothing of zoos, plans or tasks."""
