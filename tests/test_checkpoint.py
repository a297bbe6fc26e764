import pytest
import torch

from degl.errors import UserError
from degl.run import checkpoint


def save(run, step, num_stages=2, value=1.0):
    name = checkpoint.checkpoint_name(step)
    for i in range(num_stages):
        checkpoint.save_stage(run, name, i, {"model": {"w": torch.full((2,), value + i)}})
    checkpoint.commit(run, name, {"format": 1, "config": {"method": "dgl"}, "step": step}, num_stages)


def test_latest_pointer_and_pruning(tmp_path):
    for step in (1, 2, 3):
        save(tmp_path, step, value=float(step))
    path, meta = checkpoint.load_meta(tmp_path)
    assert path.name == "step-00000003" and meta["step"] == 3
    assert torch.equal(checkpoint.load_stage(path, 1)["model"]["w"], torch.full((2,), 4.0))
    kept = sorted(p.name for p in (tmp_path / "checkpoints").glob("step-*"))
    assert kept == ["step-00000002", "step-00000003"]


def test_no_temporary_files_are_left(tmp_path):
    save(tmp_path, 7)
    leftovers = [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]
    assert not leftovers


def test_missing_and_corrupt_checkpoints(tmp_path):
    with pytest.raises(UserError, match="no checkpoint"):
        checkpoint.load_meta(tmp_path)
    with pytest.raises(UserError, match="does not exist"):
        checkpoint.load_meta(tmp_path / "absent")
    save(tmp_path, 5)
    path, _ = checkpoint.load_meta(tmp_path)
    (path / "stage-1.pt").write_bytes(b"garbage" * 10)
    with pytest.raises(UserError, match="corrupt"):
        checkpoint.load_stage(path, 1)
    (path / "meta.pt").write_bytes(b"")
    with pytest.raises(UserError, match="corrupt"):
        checkpoint.load_meta(tmp_path)


def test_arbitrary_pickles_are_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("owned",))

    save(tmp_path, 1)
    path, _ = checkpoint.load_meta(tmp_path)
    torch.save({"model": Evil()}, path / "stage-0.pt")
    with pytest.raises(UserError, match="corrupt or not a degl checkpoint"):
        checkpoint.load_stage(path, 0)
