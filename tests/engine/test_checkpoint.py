"""Checkpoints: atomic writes survive a killed writer, corrupt files fail clearly, RNG states."""

import random
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from cvkit.engine.checkpoint import (
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from cvkit.errors import CheckpointError


def minimal(value: float) -> dict:
    return {"model": {"w": torch.full((4,), value)}, "config": {}, "classes": ["a"]}


def test_a_write_killed_midway_leaves_the_previous_checkpoint_loadable(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint(minimal(1.0), path)
    # A child process starts overwriting `path` with a large checkpoint and is SIGKILLed after
    # half of the bytes reached the disk.
    script = textwrap.dedent(
        f"""
        import os, signal, torch
        from cvkit.engine import checkpoint as ckpt

        real_save = torch.save

        def save_then_die(obj, handle):
            import io
            buffer = io.BytesIO()
            real_save(obj, buffer)
            data = buffer.getvalue()
            handle.write(data[: len(data) // 2])
            handle.flush()
            os.kill(os.getpid(), signal.SIGKILL)

        ckpt.torch.save = save_then_die
        big = {{"model": {{"w": torch.zeros(1_000_000)}}, "config": {{}}, "classes": ["a"]}}
        ckpt.save_checkpoint(big, {str(path)!r})
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True)
    assert result.returncode == -9
    leftovers = [p for p in tmp_path.iterdir() if p.name != "last.pt"]
    assert leftovers, "the killed writer should have left its partial temp file"
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.full((4,), 1.0))
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(leftovers[0])


def test_save_replaces_and_failed_save_cleans_up(tmp_path, monkeypatch):
    path = tmp_path / "best.pt"
    save_checkpoint(minimal(1.0), path)
    save_checkpoint(minimal(2.0), path)
    loaded = load_checkpoint(path)
    assert loaded["model"]["w"][0] == 2.0 and loaded["cvkit_version"]

    def broken_save(obj, handle):
        handle.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(minimal(3.0), path)
    assert [p.name for p in tmp_path.iterdir()] == ["best.pt"]
    assert load_checkpoint(path)["model"]["w"][0] == 2.0


def test_truncated_missing_and_foreign_files_raise_checkpoint_error(tmp_path):
    path = save_checkpoint(minimal(1.0), tmp_path / "a.pt")
    truncated = tmp_path / "cut.pt"
    truncated.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError, match=r"cut\.pt: not a readable checkpoint"):
        load_checkpoint(truncated)
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nope.pt")
    torch.save({"state_dict": {}}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match=r"missing keys \['model', 'config', 'classes'\]"):
        load_checkpoint(tmp_path / "other.pt")


def test_rng_state_survives_a_weights_only_round_trip(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    path = save_checkpoint({**minimal(0.0), "rng": capture_rng_state()}, tmp_path / "r.pt")
    expected = (random.random(), np.random.rand(), torch.rand(2))
    random.seed(9)
    np.random.seed(9)
    torch.manual_seed(9)
    restore_rng_state(load_checkpoint(path)["rng"])
    got = (random.random(), np.random.rand(), torch.rand(2))
    assert got[:2] == expected[:2] and torch.equal(got[2], expected[2])
