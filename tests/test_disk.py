"""A full disk told apart from other errors, as each library that writes artifacts reports it."""

from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path

import pytest

from pipeline.core import disk


def test_the_errno_or_a_wrapped_os_message_is_a_full_disk(tmp_path):
    assert disk.out_of_space(OSError(errno.ENOSPC, "No space left on device"), tmp_path)
    assert disk.out_of_space(OSError(errno.EDQUOT, "Disk quota exceeded"), tmp_path)
    wrapped = RuntimeError("Error while serializing: IoError(Os { code: 28, kind: StorageFull })")
    assert disk.out_of_space(wrapped, tmp_path)
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as exc:
            raise ValueError("could not write the shard") from exc
    except ValueError as chained:
        assert disk.out_of_space(chained, tmp_path)


def test_other_errors_are_not_a_full_disk(tmp_path):
    assert not disk.out_of_space(ValueError("record 3: field 'label' is missing"), tmp_path)
    assert not disk.out_of_space(OSError(errno.EACCES, "Permission denied"), tmp_path)
    assert disk.free_bytes(tmp_path / "not" / "yet") == disk.free_bytes(tmp_path)


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MB tmpfs (root only)."""
    mount = tmp_path / "small"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)])
    if done.returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=True)


def _writers():
    import polars as pl
    import torch
    from safetensors.torch import save_file

    big = torch.zeros(1_000_000)  # 4 MB
    # Incompressible, and from a generator of its own: the global one is left as it was.
    noise = torch.rand(1_000_000, generator=torch.Generator().manual_seed(0))
    return {
        "safetensors": lambda path: save_file({"x": big}, str(path)),
        "torch": lambda path: torch.save(big, path),
        "parquet": lambda path: pl.DataFrame({"x": noise.numpy()}).write_parquet(path),
        "text": lambda path: Path(path).write_text("x" * 4_000_000),
    }


@pytest.mark.parametrize("writer", ["safetensors", "torch", "parquet", "text"])
def test_each_writer_on_a_full_disk_is_told_apart(small_disk, writer):
    with pytest.raises(BaseException) as raised:
        _writers()[writer](small_disk / "file")
    assert disk.out_of_space(raised.value, small_disk), repr(raised.value)
    assert "MB free" in disk.describe(small_disk)
