"""Read a PyTorch zip checkpoint into NumPy arrays without importing torch.

`torch.save` (PyTorch >= 1.6) writes a zip archive with one folder, here called the prefix:

    <prefix>/data.pkl     the pickled object. Each tensor is a call of
                          torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)
                          whose storage is a persistent id ('storage', <dtype>Storage, key, location, numel)
    <prefix>/data/<key>   the raw bytes of that storage
    <prefix>/byteorder    "little" or "big", absent in files from older PyTorch versions

The unpickler below resolves only the few globals a state dict needs and raises CheckpointError on any
other, so reading a checkpoint never runs code from the file.
"""

from __future__ import annotations

import collections
import logging
import os
import pickle
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["CheckpointError", "read_checkpoint"]

logger = logging.getLogger(__name__)

_RESAVE_WITH_ZIP = "_use_new_zipfile_serialization=True"
_SAVE_STATE_DICT_HINT = "save only the state dict: torch.save(model.state_dict(), path)"


class CheckpointError(ValueError):
    """A file that cannot be read as a PyTorch state dict checkpoint."""


@dataclass(frozen=True)
class _StorageType:
    """A torch storage class from the pickle, such as torch.FloatStorage, and its NumPy dtype."""

    name: str
    dtype: np.dtype  # little-endian


@dataclass(frozen=True)
class _Storage:
    """The flat elements of one storage record, in native byte order."""

    elements: np.ndarray  # (numel,)


_STORAGE_TYPES = {
    name: _StorageType(name, np.dtype(code))
    for name, code in {
        "FloatStorage": "<f4",
        "DoubleStorage": "<f8",
        "HalfStorage": "<f2",
        "LongStorage": "<i8",
        "IntStorage": "<i4",
    }.items()
}


# ---------------------------------------------------------------------------------------------------------
# Replacements for the torch functions the pickle calls


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _rebuild_tensor(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                    metadata=None) -> np.ndarray:
    """Build a C-contiguous copy of a tensor view into `storage`, replacing `_rebuild_tensor_v2`.

    `requires_grad`, `backward_hooks` and `metadata` only matter for autograd and are ignored.
    """
    if not isinstance(storage, _Storage):
        raise CheckpointError(f"a tensor's storage is {type(storage).__name__}, not a storage record; "
                              f"the checkpoint is damaged")
    elements = storage.elements
    size = tuple(size)
    stride = tuple(stride)
    valid = (
        _is_int(storage_offset) and storage_offset >= 0
        and len(size) == len(stride)
        and all(_is_int(n) and n >= 0 for n in size)
        and all(_is_int(s) and s >= 0 for s in stride)
    )
    if not valid:
        raise CheckpointError(f"invalid tensor layout: offset {storage_offset!r}, size {size!r}, "
                              f"stride {stride!r}; the checkpoint is damaged")
    if 0 in size:
        return np.empty(size, dtype=elements.dtype)

    # Bounds check before as_strided, which would otherwise read memory outside the storage.
    last_element = storage_offset + sum((n - 1) * s for n, s in zip(size, stride))
    if last_element >= elements.size:
        raise CheckpointError(
            f"tensor with offset {storage_offset}, size {size} and stride {stride} needs element "
            f"{last_element} of a storage with {elements.size} elements; the checkpoint is damaged"
        )
    itemsize = elements.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(
        elements[storage_offset:], shape=size, strides=tuple(s * itemsize for s in stride), writeable=False
    )
    return view.copy(order="C")


def _rebuild_parameter(data, requires_grad, backward_hooks) -> np.ndarray:
    return data


def _rebuild_parameter_with_state(data, requires_grad, backward_hooks, state) -> np.ndarray:
    return data


_ALLOWED_GLOBALS = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter_with_state,
}


# ---------------------------------------------------------------------------------------------------------
# The restricted unpickler


class _StateDictUnpickler(pickle.Unpickler):
    """Unpickler that admits only what a state dict needs and reads storages from the zip archive."""

    def __init__(self, pickle_file, archive: zipfile.ZipFile, prefix: str, big_endian: bool, path: Path):
        super().__init__(pickle_file)
        self._archive = archive
        self._prefix = prefix
        self._big_endian = big_endian
        self._path = path
        self._storages: dict[str, _Storage] = {}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED_GLOBALS:
            return _ALLOWED_GLOBALS[(module, name)]
        if module == "torch" and name in _STORAGE_TYPES:
            return _STORAGE_TYPES[name]
        if module == "torch" and name == "BFloat16Storage":
            raise CheckpointError(
                f"checkpoint {self._path} stores bfloat16 tensors, which NumPy has no dtype for; convert "
                f"them to float32 and save again: torch.save({{k: v.float() for k, v in sd.items()}}, path)"
            )
        raise CheckpointError(
            f"checkpoint {self._path} refers to {module}.{name}, which a state dict never needs, so it "
            f"was not loaded; {_SAVE_STATE_DICT_HINT}"
        )

    def persistent_load(self, pid: Any) -> _Storage:
        valid = (
            isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
            and isinstance(pid[1], _StorageType) and isinstance(pid[2], str) and _is_int(pid[4]) and pid[4] >= 0
        )
        if not valid:
            raise CheckpointError(f"checkpoint {self._path} has an invalid storage reference {pid!r}; "
                                  f"the checkpoint is damaged")
        _, storage_type, key, _location, numel = pid
        if key not in self._storages:
            self._storages[key] = self._read_storage(storage_type, key, numel)
        return self._storages[key]

    def _read_storage(self, storage_type: _StorageType, key: str, numel: int) -> _Storage:
        record = f"{self._prefix}data/{key}"
        try:
            payload = self._archive.read(record)
        except KeyError:
            raise CheckpointError(
                f"checkpoint {self._path} has no storage record {record!r}, so the file is incomplete; "
                f"copy or download it again"
            ) from None
        except (zipfile.BadZipFile, zlib.error) as error:
            raise CheckpointError(f"checkpoint {self._path}: storage record {record!r} is damaged ({error}); "
                                  f"copy or download it again") from error

        dtype = storage_type.dtype
        if len(payload) < numel * dtype.itemsize:
            raise CheckpointError(
                f"checkpoint {self._path}: storage record {record!r} has {len(payload)} bytes, but "
                f"{numel} {storage_type.name} elements need {numel * dtype.itemsize}; the file is damaged"
            )
        if self._big_endian:
            # astype to the little-endian dtype swaps the bytes of every element.
            return _Storage(np.frombuffer(payload, dtype=dtype.newbyteorder(">"), count=numel).astype(dtype))
        return _Storage(np.frombuffer(payload, dtype=dtype, count=numel))


# ---------------------------------------------------------------------------------------------------------
# Archive layout


def _open_archive(path: Path) -> zipfile.ZipFile:
    with open(path, "rb") as file:
        head = file.read(4)

    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        try:
            return zipfile.ZipFile(path)
        except zipfile.BadZipFile as error:
            raise CheckpointError(
                f"{path} starts like a zip archive but its central directory cannot be read ({error}), "
                f"so the file is truncated or damaged; copy or download it again"
            ) from error
    if not head:
        raise CheckpointError(f"{path} is empty, not a PyTorch checkpoint")
    if head[:1] == b"\x80":
        raise CheckpointError(
            f"{path} is a bare pickle, as written by the legacy torch.save format (PyTorch < 1.6 or "
            f"_use_new_zipfile_serialization=False), which this converter does not read; re-save it with "
            f"torch.save(torch.load(old_path), new_path, {_RESAVE_WITH_ZIP})"
        )
    raise CheckpointError(
        f"{path} is not a PyTorch checkpoint: torch.save writes a zip archive, but this file starts with "
        f"{head!r}"
    )


def _find_prefix(archive: zipfile.ZipFile, path: Path) -> str:
    """Return the archive folder that contains data.pkl, with its trailing slash."""
    names = archive.namelist()
    candidates = sorted(name for name in names if name.endswith("/data.pkl") and name.count("/") == 1)
    if not candidates:
        raise CheckpointError(
            f"{path} is a zip archive without a <folder>/data.pkl record, so torch.save did not write it; "
            f"save the state dict with torch.save(model.state_dict(), path, {_RESAVE_WITH_ZIP})"
        )
    if len(candidates) > 1:
        raise CheckpointError(f"{path} has several data.pkl records {candidates}; a torch.save archive has one")

    prefix = candidates[0][: -len("data.pkl")]
    if f"{prefix}constants.pkl" in names or any(name.startswith(f"{prefix}code/") for name in names):
        raise CheckpointError(
            f"{path} is a TorchScript archive (torch.jit.save), not a state dict checkpoint; "
            f"{_SAVE_STATE_DICT_HINT}"
        )
    return prefix


def _is_big_endian(archive: zipfile.ZipFile, prefix: str, path: Path) -> bool:
    record = f"{prefix}byteorder"
    if record not in archive.namelist():
        # NOTE: such a file is in the byte order of the machine that wrote it. Little-endian is assumed,
        # as torch.load does by default (PyTorch 2.13), which is right for x86-64 and ARM writers.
        return False
    byteorder = archive.read(record).decode("ascii", "replace").strip()
    if byteorder not in ("little", "big"):
        raise CheckpointError(f"{path}: byteorder record is {byteorder!r}, expected 'little' or 'big'")
    return byteorder == "big"


# ---------------------------------------------------------------------------------------------------------
# From the unpickled object to a flat state dict


def _is_state_dict(value: Any) -> bool:
    return isinstance(value, dict) and all(
        isinstance(key, str) and isinstance(tensor, np.ndarray) for key, tensor in value.items()
    )


def _find_state_dict(top: Any, path: Path) -> dict[str, np.ndarray]:
    """Return the state dict itself, or the one wrapped under 'model' or 'state_dict'."""
    if not isinstance(top, dict):
        raise CheckpointError(f"{path} contains a {type(top).__name__}, not a state dict; {_SAVE_STATE_DICT_HINT}")
    if _is_state_dict(top):
        return top

    wrapped = [key for key in ("model", "state_dict") if isinstance(top.get(key), dict)]
    if not wrapped:
        first_keys = sorted(map(repr, top))[:10]
        raise CheckpointError(
            f"{path} is a dict with entries that are not tensors and no 'model' or 'state_dict' entry "
            f"(keys: {', '.join(first_keys)}); {_SAVE_STATE_DICT_HINT}"
        )
    if len(wrapped) > 1:
        raise CheckpointError(f"{path} has both a 'model' and a 'state_dict' entry, so it is unclear which "
                              f"one to convert; {_SAVE_STATE_DICT_HINT}")

    state_dict = top[wrapped[0]]
    if not _is_state_dict(state_dict):
        bad = sorted(repr(key) for key, value in state_dict.items()
                     if not (isinstance(key, str) and isinstance(value, np.ndarray)))
        raise CheckpointError(
            f"{path}: entry {wrapped[0]!r} is not a state dict, because these entries are not tensors: "
            f"{', '.join(bad[:10])}; {_SAVE_STATE_DICT_HINT}"
        )
    logger.debug("%s: using the state dict under %r", path, wrapped[0])
    return state_dict


def _strip_module_prefix(state_dict: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Remove the "module." prefix that torch.nn.DataParallel adds to every key."""
    prefix = "module."
    if state_dict and all(key.startswith(prefix) for key in state_dict):
        return {key[len(prefix):]: value for key, value in state_dict.items()}
    return dict(state_dict)


def read_checkpoint(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read the state dict of a PyTorch zip checkpoint as NumPy arrays, in checkpoint order.

    Accepts a bare state dict or one wrapped under 'model' or 'state_dict' (other entries of the wrapper
    are read and ignored), and strips a "module." prefix shared by all keys. Each array is a C-contiguous
    copy in the tensor's own dtype (float32, float64, float16, int64 or int32), in native byte order.
    Raises FileNotFoundError for a missing file and CheckpointError (a ValueError) for anything else
    that is not such a checkpoint. The file is only read.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found")

    with _open_archive(path) as archive:
        prefix = _find_prefix(archive, path)
        big_endian = _is_big_endian(archive, prefix, path)
        try:
            with archive.open(f"{prefix}data.pkl") as pickle_file:
                top = _StateDictUnpickler(pickle_file, archive, prefix, big_endian, path).load()
        except CheckpointError:
            raise
        except (pickle.UnpicklingError, EOFError, TypeError, ValueError, AttributeError, IndexError,
                KeyError, zipfile.BadZipFile, zlib.error) as error:
            # TypeError and friends come from a pickle that calls an admitted function with wrong arguments.
            raise CheckpointError(f"{path}: data.pkl is damaged or not a state dict pickle ({error!r}); "
                                  f"copy or download the file again") from error

    return _strip_module_prefix(_find_state_dict(top, path))
