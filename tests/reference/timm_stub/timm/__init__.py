"""Stand-in for the `timm` package, with only what the vendored LiteMedSAM encoder imports.

The installed `timm` imports `torchvision` at import time, which is not part of the test
environment. `tests/reference/model.py` puts this folder on `sys.path` only while it imports
the vendored `tiny_vit_sam.py`, and removes it again, so npsam and other tests never see it.
"""
