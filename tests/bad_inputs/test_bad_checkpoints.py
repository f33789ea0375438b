"""Checkpoint folders that are foreign, torn or linked: mawstron refuses to run their code, finishes or removes torn
saves, and never deletes through a link."""

import contextlib
import json
import os

import pytest
import torch

from mawstron.cli.main import main as mawstron
from mawstron.parallel.checkpoints import store as ckpt
from mawstron.parallel.checkpoints import universal
from mawstron.parallel.checkpoints.trust import TRUST_ENV, UntrustedCheckpoint


class _Payload:
    """What a hostile pickle does when loaded: call ``os.makedirs(path)`` (harmless, and visible)."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return os.makedirs, (self.path,)


def hostile_checkpoint(tmp_path, ran: str) -> str:
    """A ZeRO checkpoint folder as a foreign run would ship it (latest, COMPLETE, run config), whose optimizer and
    model files carry a pickle that calls ``os.makedirs(ran)`` when unpickled."""
    ckpt_dir = str(tmp_path / "foreign" / "checkpoints")
    tag = ckpt.tag_for_step(4)
    os.makedirs(os.path.join(ckpt_dir, tag))
    for name in ("bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt", "zero_pp_rank_0_mp_rank_00_model_states.pt"):
        torch.save({"optimizer_state_dict": {"zero_stage": 3, "x": _Payload(ran)}, "buffer_names": []},
                   os.path.join(ckpt_dir, tag, name))
    ckpt.finalize(ckpt_dir, tag, 4, {"model": {"preset": "vit_micro"}, "train": {"stage": "mae"}}, keep_last=2,
                  world_size=1)
    return ckpt_dir


@pytest.fixture
def untrusted(monkeypatch):
    monkeypatch.delenv(TRUST_ENV, raising=False)


def test_a_foreign_checkpoint_that_would_run_code_is_refused_naming_the_global_and_the_flag(tmp_path, untrusted):
    """A checkpoint folder whose pickle calls a function is refused (one line naming it and --trust-checkpoint)."""
    ran = str(tmp_path / "code_ran")
    ckpt_dir = hostile_checkpoint(tmp_path, ran)
    with pytest.raises(UntrustedCheckpoint) as err:
        ckpt.read_zero_checkpoint(ckpt_dir)
    message = str(err.value)
    assert not os.path.exists(ran)
    assert "\n" not in message and "os.makedirs" in message and "--trust-checkpoint" in message
    assert "step_00000004/" in message and "_states.pt:" in message  # the file is named


def test_consolidate_eval_and_features_refuse_it_with_exit_2(tmp_path, untrusted, capsys):
    """`mawstron consolidate|eval|features` on a hostile folder: exit 2, one line, nothing executed."""
    ran = str(tmp_path / "code_ran")
    ckpt_dir = hostile_checkpoint(tmp_path, ran)
    images = tmp_path / "images"
    images.mkdir()
    for argv in (["consolidate", ckpt_dir, "--out", str(tmp_path / "x.safetensors")],
                 ["features", "--checkpoint", ckpt_dir, "--images", str(images), "--out", str(tmp_path / "f.npy")]):
        assert mawstron(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert "os.makedirs" in err[-1] and "--trust-checkpoint" in err[-1], err
    assert not os.path.exists(ran)


def test_trust_checkpoint_accepts_it_knowingly(tmp_path, untrusted):
    """--trust-checkpoint (MAWSTRON_TRUST_CHECKPOINT=1) restores DeepSpeed's own loader."""
    ran = str(tmp_path / "code_ran")
    ckpt_dir = hostile_checkpoint(tmp_path, ran)
    with contextlib.suppress(Exception):  # DeepSpeed then fails on the fake contents, after unpickling them
        mawstron(["consolidate", ckpt_dir, "--out", str(tmp_path / "x.safetensors"), "--trust-checkpoint"])
    assert os.path.isdir(ran)


def test_the_universal_converter_refuses_it_too(tmp_path, untrusted):
    """DeepSpeed's universal converter (resume on another world size) loads under the same allow-list."""
    ran = str(tmp_path / "code_ran")
    ckpt_dir = hostile_checkpoint(tmp_path, ran)
    with pytest.raises(RuntimeError, match=r"os\.makedirs.*--trust-checkpoint"):
        universal.convert(ckpt_dir, ckpt.tag_for_step(4), timeout_s=300)
    assert not os.path.exists(ran)
    assert not os.path.exists(universal.universal_dir(ckpt_dir, ckpt.tag_for_step(4)))


# ------------------------------------------------------------------------------------------- torn and linked
def fake_save(ckpt_dir, step, complete=True):
    tag = ckpt.tag_for_step(step)
    os.makedirs(os.path.join(ckpt_dir, tag))
    with open(os.path.join(ckpt_dir, tag, "zero_pp_rank_0_mp_rank_00_model_states.pt"), "wb") as f:
        f.write(b"x" * 100)
    if complete:
        ckpt.finalize(ckpt_dir, tag, step, {}, keep_last=2, world_size=1,
                      digests=ckpt.rank_file_digests(ckpt_dir, tag, 0))
    return tag


def test_torn_step_folders_of_failed_saves_are_pruned(tmp_path):
    """A step folder a failed save left (full disk: no COMPLETE) is removed by the next complete save."""
    ckpt_dir = str(tmp_path / "checkpoints")
    fake_save(ckpt_dir, 2)
    torn = fake_save(ckpt_dir, 4, complete=False)
    fake_save(ckpt_dir, 6)
    assert not os.path.exists(os.path.join(ckpt_dir, torn))
    assert ckpt.complete_tags(ckpt_dir) == ["step_00000002", "step_00000006"]


def test_a_symlinked_step_folder_is_refused_not_deleted_through(tmp_path):
    """A step_* symlink (to someone else's folder) is never loaded, counted, pruned through or discarded."""
    ckpt_dir = str(tmp_path / "checkpoints")
    victim = str(tmp_path / "elsewhere" / "step_00000001")
    fake_save(str(tmp_path / "elsewhere"), 1)
    os.makedirs(ckpt_dir)
    os.symlink(victim, os.path.join(ckpt_dir, "step_00000001"))
    for step in (2, 4, 6):  # keep_last=2: pruning runs after every save
        fake_save(ckpt_dir, step)
    assert sorted(os.listdir(victim)) == ["COMPLETE", "MANIFEST.json", "run_config.json",
                                          "zero_pp_rank_0_mp_rank_00_model_states.pt"]
    assert ckpt.complete_tags(ckpt_dir) == ["step_00000004", "step_00000006"]
    with pytest.raises(ValueError, match="symbolic link"):
        ckpt.discard(ckpt_dir, "step_00000001")
    with open(os.path.join(ckpt_dir, "latest"), "w") as f:
        f.write("step_00000001")
    with pytest.raises(FileNotFoundError, match="symbolic link"):
        ckpt.resolve_tag(ckpt_dir)
    assert os.path.isfile(os.path.join(victim, "COMPLETE"))


def test_shards_and_folders_are_fsynced_before_latest_moves(tmp_path, monkeypatch):
    """Shard files and the step folder reach the disk before `latest` names them (power loss after a save)."""
    synced = []
    real_fsync = os.fsync

    def spy(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        return real_fsync(fd)

    ckpt_dir = str(tmp_path / "checkpoints")
    monkeypatch.setattr(os, "fsync", spy)
    tag = fake_save(ckpt_dir, 2)
    folder = os.path.join(ckpt_dir, tag)
    shard = os.path.join(folder, "zero_pp_rank_0_mp_rank_00_model_states.pt")
    latest_tmp = [i for i, p in enumerate(synced) if os.path.basename(p).startswith("latest.tmp")]
    assert latest_tmp, synced
    before = synced[:latest_tmp[0]]
    assert shard in before and folder in before, synced
    assert synced.index(folder) > synced.index(shard)
    assert ckpt_dir in synced[latest_tmp[0]:]  # the rename of `latest` itself
