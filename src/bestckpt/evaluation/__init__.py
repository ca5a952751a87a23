"""Evaluation: the protocol, the sampler protocol, the scorer, sample files and distributed helpers.

Submodules are imported explicitly (``from bestckpt.evaluation.protocol import Protocol``) so that
importing one part never pulls in torch-heavy others.
"""

__all__: list[str] = []  # import the submodules; the package itself exports nothing
