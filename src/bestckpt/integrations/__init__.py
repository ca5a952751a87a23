"""Glue between bestckpt and training code: a plain-loop helper and DeepSpeed checkpoint helpers.

Import the submodule you need (``bestckpt.integrations.loop``, ``bestckpt.integrations.deepspeed``);
this package imports nothing heavy itself.
"""

__all__: list[str] = []  # import the submodules; the package itself exports nothing
