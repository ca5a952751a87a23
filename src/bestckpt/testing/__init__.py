"""Helpers for testing code that uses bestckpt: random-initialised networks of the real backbone
architectures (``*-random-test`` backbones) and weight files made from them.

Meaningless for real evaluation; they exist so that tests exercise the exact architectures and the
weight-loading code without downloading the real weights.
"""

__all__: list[str] = []  # import the submodules; the package itself exports nothing
