"""The offline demo: synthetic captioned shapes, a tiny text-to-image DiT and the evaluators built for them.

`bestckpt.demo.data` generates the captioned-shapes data on the fly (seeded, no download) and the
evaluation protocol's prompts and exact reference renders. The demo evaluators (an attribute
classifier, a small CLIP-style encoder pair and an LPIPS-style distance) live in
`bestckpt.demo.evaluators`; their weights ship in `bestckpt/demo/weights/` and were trained by
`scripts/train_demo_evaluators.py` on this data only -- they mean nothing on real images.
"""

__all__: list[str] = []  # import the submodules; the package itself exports nothing
