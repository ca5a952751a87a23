"""Sinks: where tracker and evaluation results go (console/log lines, results JSON, TensorBoard, HTML report)."""
