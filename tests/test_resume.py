"""The run folder loses nothing: --overwrite validates first and moves a run aside (never a dataset or a non-run
folder), and every damaged resume file is a one-line error that names it and changes nothing.

The run folders here are made by hand (real config.json, argv.txt, tiny safetensors and torch files), so each
case costs milliseconds; the subprocess cases fail before any model loads.
"""
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file

import config
from plumbing import models
from plumbing import resume
from plumbing import runfolder
from conftest import ROOT
from policy import VALUE_HEAD_FILE

ENV = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")


def rlhf(*args):
    return subprocess.run([sys.executable, str(ROOT / "rlhf.py"), *args], cwd=ROOT, env=ENV, capture_output=True,
                          text=True, timeout=120)


def make_run(out):
    """A finished-looking run folder: the files main() writes first, state, metrics and four checkpoints."""
    out.mkdir(parents=True)
    config.save_config(config.make_config("test", {"output_dir": str(out)}), out / "config.json")
    (out / "argv.txt").write_text(f"rlhf.py --config test --output_dir={out}\n")
    (out / "state.json").write_text(json.dumps({"completed": ["sft", "reward", "ppo"], "stage_seconds": {"sft": 1.0},
                                                "evaluated": {}}))
    (out / "metrics.jsonl").write_text('{"stage": "sft", "step": 1, "loss": 2.0}\n')
    files = {"checkpoint-sft": (), "checkpoint-reward": ("reward_head.pt",),
             "checkpoint-ppo-2": ("value_head.pt", "trainer_state.pt"), "checkpoint-final": ("value_head.pt",)}
    for name, extra in files.items():
        (out / name).mkdir()
        (out / name / "config.json").write_text("{}")
        save_file({"w": torch.zeros(4, 4)}, str(out / name / "model.safetensors"))
        for f in extra:
            torch.save({"x": torch.ones(3)}, out / name / f)
        models.write_checksums(out / name)  # as models.save_atomic does
    return out


def snapshot(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ----------------------------------------------------------------------------- --overwrite
def test_overwrite_with_bad_data_leaves_the_old_run_untouched(tmp_path):
    run = make_run(tmp_path / "run")
    before = snapshot(run)
    res = rlhf("--config", "test", f"--output_dir={run}", "--overwrite", f"--conala_path={tmp_path / 'missing'}")
    assert res.returncode == 1 and res.stderr.startswith("error: ") and "file not found" in res.stderr
    assert "Traceback" not in res.stderr and snapshot(run) == before
    assert [p.name for p in tmp_path.iterdir()] == ["run"]


def test_overwrite_with_a_missing_model_fails_before_moving_anything(tmp_path):
    run = make_run(tmp_path / "run")
    before = snapshot(run)
    res = rlhf("--config", "test", f"--output_dir={run}", "--overwrite", "--stages=sft,eval",
               f"--policy_model={tmp_path / 'no-such-model'}")
    assert res.returncode != 0 and "Traceback" not in res.stderr and "not found" in res.stderr
    assert snapshot(run) == before and [p.name for p in tmp_path.iterdir()] == ["run"]


def test_overwrite_that_fails_later_keeps_the_old_run_whole_beside_it(tmp_path):
    run = make_run(tmp_path / "run")
    before = snapshot(run)
    bad = tmp_path / "broken-model"  # passes the early check (a folder with config.json), fails when loaded
    bad.mkdir()
    (bad / "config.json").write_text('{"model_type": "no-such-architecture"}')
    res = rlhf("--config", "test", f"--output_dir={run}", "--overwrite", "--stages=sft,eval", f"--policy_model={bad}")
    assert res.returncode == 2 and "Traceback" not in res.stderr
    moved = [p for p in tmp_path.iterdir() if p.name.startswith("run.old-")]
    assert len(moved) == 1 and snapshot(moved[0]) == before
    assert f"moved to {moved[0]}" in res.stderr


def test_overwrite_refuses_a_folder_that_is_not_a_run(tmp_path):
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "todo.txt").write_text("keep me")
    res = rlhf("--config", "test", f"--output_dir={folder}", "--overwrite")
    assert res.returncode == 2 and "not a run folder of rlhf.py" in res.stderr and len(res.stderr.splitlines()) == 1
    assert (folder / "todo.txt").read_text() == "keep me" and len(list(tmp_path.iterdir())) == 1


def test_overwrite_refuses_the_dataset_folder(tmp_path):
    data = tmp_path / "conala-corpus"
    shutil.copytree(ROOT / "conala-corpus", data)
    before = snapshot(data)
    res = rlhf("--config", "test", f"--output_dir={data}", f"--conala_path={data}", "--overwrite")
    assert res.returncode == 2 and "refusing --overwrite" in res.stderr and "--conala_path" in res.stderr
    assert snapshot(data) == before and len(list(tmp_path.iterdir())) == 1


@pytest.mark.parametrize("target", ["/", "~", "."])
def test_overwrite_refuses_root_home_and_the_working_directory(target, monkeypatch, tmp_path):
    cfg = config.make_config("test", {"output_dir": os.path.expanduser(target)})
    monkeypatch.chdir(ROOT)
    with pytest.raises(config.ConfigError, match="refusing --overwrite"):
        runfolder.prepare_output_dir(cfg, None, overwrite=True)


def test_overwrite_refuses_a_run_that_holds_the_policy_it_starts_from(tmp_path):
    run = make_run(tmp_path / "run")
    cfg = config.make_config("test", {"output_dir": str(run), "policy": str(run / "checkpoint-sft")})
    with pytest.raises(config.ConfigError, match="holds --policy"):
        runfolder.prepare_output_dir(cfg, None, overwrite=True)
    assert runfolder.is_run_folder(run) and not runfolder.is_run_folder(run / "checkpoint-sft")


# ----------------------------------------------------------------------------- damaged resume files
def truncate(path, size=20):
    path.write_bytes(path.read_bytes()[:size])


def flip_last_byte(path):
    """Damage without a size change: the headers still parse, so only the checksum can tell."""
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0xFF
    path.write_bytes(bytes(raw))


CORRUPTIONS = {
    "state.json truncated": (lambda r: truncate(r / "state.json"), "state.json: cannot read the run state"),
    "state.json empty": (lambda r: (r / "state.json").write_text(""), "state.json: cannot read the run state"),
    "state.json a list": (lambda r: (r / "state.json").write_text("[]"), "state.json: expected a JSON object"),
    "state.json wrong shape": (lambda r: (r / "state.json").write_text('{"completed": "sft"}'),
                               "'completed' must be a JSON list"),
    "state.json not UTF-8": (lambda r: (r / "state.json").write_bytes(b"\xff\xfe{}"), "cannot read the run state"),
    "config.json a list": (lambda r: (r / "config.json").write_text("[1, 2]"), "config.json: expected a JSON object"),
    "config.json truncated": (lambda r: truncate(r / "config.json"), "config.json: cannot read config"),
    "weights truncated": (lambda r: truncate(r / "checkpoint-final" / "model.safetensors", 100),
                          "model.safetensors: truncated"),
    "weights header garbage": (lambda r: (r / "checkpoint-sft" / "model.safetensors").write_bytes(b"\xff" * 64),
                               "model.safetensors: truncated"),
    "weights missing": (lambda r: (r / "checkpoint-reward" / "model.safetensors").unlink(), "no model weights"),
    "trainer_state.pt missing": (lambda r: (r / "checkpoint-ppo-2" / "trainer_state.pt").unlink(),
                                 "trainer_state.pt: missing"),
    "trainer_state.pt truncated": (lambda r: truncate(r / "checkpoint-ppo-2" / "trainer_state.pt"),
                                   "trainer_state.pt: truncated or not a torch file"),
    "value_head.pt missing": (lambda r: (r / "checkpoint-final" / "value_head.pt").unlink(), "value_head.pt: missing"),
    "reward_head.pt missing": (lambda r: (r / "checkpoint-reward" / "reward_head.pt").unlink(),
                               "reward_head.pt: missing"),
    "weights bytes damaged, same size": (lambda r: flip_last_byte(r / "checkpoint-final" / "model.safetensors"),
                                         "model.safetensors differs from its sha256 in SHA256SUMS"),
    "reward head bytes damaged": (lambda r: flip_last_byte(r / "checkpoint-reward" / "reward_head.pt"),
                                  "reward_head.pt differs from its sha256"),
    "SHA256SUMS malformed": (lambda r: (r / "checkpoint-sft" / "SHA256SUMS").write_text("abc  model.safetensors\n"),
                             "SHA256SUMS has a malformed line"),
    "metrics.jsonl bad line": (lambda r: open(r / "metrics.jsonl", "a").write('{"stage": "sft", "st\n'),
                               "metrics.jsonl: line 2 is not valid JSON"),
    "metrics.jsonl not an object": (lambda r: open(r / "metrics.jsonl", "a").write("[1]\n"),
                                    "metrics.jsonl: line 2 is a JSON list"),
}


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_a_damaged_resume_file_is_one_line_naming_it_and_nothing_changes(tmp_path, name):
    run = make_run(tmp_path / "run")
    resume.check_resume(run)  # the intact folder passes
    damage, message = CORRUPTIONS[name]
    damage(run)
    before = snapshot(run)
    with pytest.raises(config.ConfigError) as err:
        resume.check_resume(run)
    assert message in str(err.value) and str(run) in str(err.value) and "\n" not in str(err.value)
    assert snapshot(run) == before


def test_resume_of_a_damaged_run_from_the_command_line(tmp_path):
    run = make_run(tmp_path / "run")
    (run / "checkpoint-ppo-2" / "value_head.pt").unlink()
    before = snapshot(run)
    res = rlhf("--resume", str(run))
    assert res.returncode == 2 and res.stderr.splitlines() == [res.stderr.strip()] and "Traceback" not in res.stderr
    assert "checkpoint-ppo-2/value_head.pt: missing" in res.stderr and "previous checkpoint" in res.stderr
    assert snapshot(run) == before


def test_save_atomic_writes_checksums_that_a_resume_check_verifies(tmp_path):
    import hashlib

    folder = models.save_atomic(tmp_path / "checkpoint-sft", lambda d: (
        (d / "config.json").write_text("{}"), save_file({"w": torch.arange(6.0)}, str(d / "model.safetensors"))))
    want = hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()
    assert f"{want}  model.safetensors" in (folder / "SHA256SUMS").read_text().splitlines()
    resume.check_checkpoint(folder)
    (folder / "config.json").write_text("{ }")  # same folder, one byte more: caught
    with pytest.raises(config.ConfigError, match="config.json differs from its sha256"):
        resume.check_checkpoint(folder)


def test_checkpoint_file_names_agree_with_the_code_that_writes_them():
    import reward_model

    assert VALUE_HEAD_FILE in resume.CHECKPOINT_FILES["checkpoint-ppo-"]
    assert VALUE_HEAD_FILE in resume.CHECKPOINT_FILES["checkpoint-final"]
    assert reward_model.HEAD_FILE in resume.CHECKPOINT_FILES["checkpoint-reward"]
    assert '"trainer_state.pt"' in (ROOT / "ppo_stage.py").read_text()
