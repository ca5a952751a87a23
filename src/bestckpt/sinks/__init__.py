"""Sinks: where tracker and evaluation results go (console/log lines, results JSON, TensorBoard, HTML report)."""

__all__: list[str] = []  # import the submodules; the package itself exports nothing
