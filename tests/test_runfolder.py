"""Issue #26, run folders shared, clobbered or trusted too far: one lock per folder, unique default names, reward.py
guarded like rlhf.py, inputs inside a folder --overwrite would move, symbolic links, a full disk, and resume state
of the wrong shape or without complete checksums. Every case fails before a model loads (seconds at most)."""
import json
import os
import subprocess
import sys
import time

import pytest
import torch

import config
from plumbing import config_cli
from plumbing import models
from plumbing import resume
from plumbing import runfolder
from conftest import ROOT
from test_resume import ENV, make_run, snapshot


def run_script(script, *args, timeout=300):
    """Bounded, with room for a starved machine: each case fails before a model loads (seconds of CPU)."""
    return subprocess.run([sys.executable, str(ROOT / script), *args], cwd=ROOT, env=ENV, capture_output=True,
                          text=True, timeout=timeout)


def rlhf(*args):
    return run_script("rlhf.py", *args)


def one_line_error(res, code=2):
    return res.returncode == code and res.stderr.startswith("error: ") and len(res.stderr.strip().splitlines()) == 1


@pytest.fixture
def holder(tmp_path):
    """Another process that holds a run folder's lock, as a live run does."""
    procs = []

    def start(folder):
        code = f"import pathlib, time; from plumbing import runfolder; runfolder.lock(pathlib.Path({str(folder)!r})); print('held', " \
               "flush=True); time.sleep(60)"
        p = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=ENV, stdout=subprocess.PIPE, text=True)
        assert p.stdout.readline().strip() == "held"
        procs.append(p)
        return p

    yield start
    for p in procs:
        p.kill()
        p.wait()


# ----------------------------------------------------------------------------- 1: reward.py
def test_reward_py_refuses_a_finished_run_and_a_file(tmp_path):
    run = make_run(tmp_path / "run")
    before = snapshot(run)
    res = run_script("reward.py", "--config", "test", f"--output_dir={run}")
    assert one_line_error(res) and "folder is not empty" in res.stderr and snapshot(run) == before
    res = run_script("reward.py", "--config", "test", f"--output_dir={ROOT / 'README.md'}")
    assert one_line_error(res) and "exists and is not a folder" in res.stderr


# ----------------------------------------------------------------------------- 2: one writer per folder
def test_a_second_writer_is_refused_naming_the_holder(tmp_path, holder):
    run = make_run(tmp_path / "run")
    before = snapshot(run)
    p = holder(run)
    for args in (["--resume", str(run)], ["--config", "test", f"--output_dir={run}", "--overwrite"]):
        res = rlhf(*args)
        assert one_line_error(res) and f"in use by another run (pid {p.pid})" in res.stderr, res.stderr
    assert snapshot(run) == before and sorted(os.listdir(tmp_path)) == ["run"]  # not moved aside either
    res = run_script("reward.py", "--config", "test", f"--output_dir={run}")
    assert one_line_error(res) and f"pid {p.pid}" in res.stderr


def test_the_lock_goes_with_its_holder(tmp_path, holder):
    folder = tmp_path / "run"
    folder.mkdir()
    p = holder(folder)
    with pytest.raises(config.ConfigError, match="in use by another run"):
        runfolder.lock(folder)
    p.kill()
    p.wait()
    runfolder.lock(folder)  # the kernel dropped it with the process: no stale lock after a kill
    runfolder.lock(folder)  # and this process may ask again


def test_default_names_are_unique_within_one_second(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(time, "strftime", lambda fmt, *a: "20261206-120000")
    cfg = config.make_config("test")
    outs = [runfolder.prepare_output_dir(cfg, None, False) for _ in range(3)]
    assert [o.name for o in outs] == ["test-20261206-120000", "test-20261206-120000-2", "test-20261206-120000-3"]


# ----------------------------------------------------------------------------- 3, 4: links
def test_overwrite_refuses_a_run_holding_a_linked_input(tmp_path):
    run = make_run(tmp_path / "run")
    (run / "data").symlink_to(ROOT / "conala-corpus")
    before = snapshot(run)
    res = rlhf("--config", "test", f"--output_dir={run}", "--overwrite", f"--conala_path={run / 'data'}")
    assert one_line_error(res) and "holds --conala_path" in res.stderr
    assert snapshot(run) == before and sorted(os.listdir(tmp_path)) == ["run"]


def test_save_atomic_replaces_a_link_never_its_target(tmp_path):
    shared = models.save_atomic(tmp_path / "other-run" / "checkpoint-sft", lambda d: (d / "a.json").write_text("1"))
    before = snapshot(shared)
    link = tmp_path / "run" / "checkpoint-sft"
    link.parent.mkdir()
    link.symlink_to(shared)
    models.save_atomic(link, lambda d: (d / "a.json").write_text("2"))
    assert not link.is_symlink() and (link / "a.json").read_text() == "2" and snapshot(shared) == before
    assert sorted(os.listdir(link.parent)) == ["checkpoint-sft"]  # no .old<pid> or .link<pid> left


def test_a_full_disk_is_one_line_and_leaves_no_temp_folder(tmp_path):
    def write(d):
        (d / "part").write_text("x")
        raise OSError(28, "No space left on device")

    with pytest.raises(config.ConfigError, match="the disk is full"):
        models.save_atomic(tmp_path / "checkpoint-sft", write)
    assert os.listdir(tmp_path) == []


# ----------------------------------------------------------------------------- 5, 6: resume state
def drop_line(path, name):
    path.write_text("".join(ln for ln in path.read_text().splitlines(True) if not ln.endswith(f"  {name}\n")))


def flip(path):
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0xFF  # in the tensor bytes: the header still parses
    path.write_bytes(bytes(raw))


STATE = {
    "SHA256SUMS deleted, weights damaged": (lambda r: ((r / "checkpoint-sft" / "SHA256SUMS").unlink(),
                                                       flip(r / "checkpoint-sft" / "model.safetensors")),
                                            "checkpoint-sft: no SHA256SUMS, the weights cannot be verified"),
    "weights line removed, weights damaged": (lambda r: (drop_line(r / "checkpoint-sft" / "SHA256SUMS",
                                                                   "model.safetensors"),
                                                         flip(r / "checkpoint-sft" / "model.safetensors")),
                                              "model.safetensors is not listed in SHA256SUMS"),
    "metrics.jsonl {} row": (lambda r: open(r / "metrics.jsonl", "a").write("{}\n"),
                             "metrics.jsonl: record 2 has no string 'stage'"),
    "evaluated without gold": (lambda r: (r / "state.json").write_text(json.dumps(
        {"completed": [], "stage_seconds": {}, "evaluated": {"base": {"per_example": {}}}})), "evaluated.base needs"),
    "evaluated lists of unequal length": (lambda r: (r / "state.json").write_text(json.dumps(
        {"completed": [], "stage_seconds": {}, "evaluated": {"sft": {"gold": 0.5, "per_example": {
            "gold": [1], "codebleu": [1, 2], "chrf": [1]}}}})), "equal-length lists"),
    "checkpoint-ppo-9 a file": (lambda r: (r / "checkpoint-ppo-9").write_text("x"), "a file, not a checkpoint folder"),
    "checkpoint-final a link": (lambda r: ((r / "checkpoint-final").rename(r / "elsewhere"),
                                           (r / "checkpoint-final").symlink_to(r / "elsewhere")), "a symbolic link"),
}


@pytest.mark.parametrize("name", STATE)
def test_resume_state_is_checked_before_any_work(tmp_path, name):
    run = make_run(tmp_path / "run")
    damage, message = STATE[name]
    damage(run)
    before = snapshot(run)
    with pytest.raises(config.ConfigError) as err:
        resume.check_resume(run)
    assert message in str(err.value) and "\n" not in str(err.value)
    assert snapshot(run) == before


def test_a_superscript_ppo_folder_is_not_a_step(tmp_path):
    run = make_run(tmp_path / "run")
    (run / "checkpoint-ppo-²").mkdir()  # '²'.isdigit() is True and int('²') raises
    (run / "checkpoint-ppo-nonfinite").mkdir()
    resume.check_resume(run)
    assert runfolder.ppo_checkpoints(run) == {2: run / "checkpoint-ppo-2"}


def test_resume_of_a_checkpoint_without_checksums_from_the_command_line(tmp_path):
    run = make_run(tmp_path / "run")
    (run / "checkpoint-reward" / "SHA256SUMS").unlink()
    res = rlhf("--resume", str(run))
    assert one_line_error(res) and "cannot be verified" in res.stderr and "models.write_checksums" in res.stderr


# ----------------------------------------------------------------------------- 9: the recovery advice works
def test_moving_a_damaged_checkpoint_out_redoes_its_stage(tmp_path):
    run = make_run(tmp_path / "run")
    (run / "checkpoint-sft" / "SHA256SUMS").unlink()
    res = rlhf("--resume", str(run), "--stages=sft")
    assert one_line_error(res) and "move checkpoint-sft/ out of the run folder" in res.stderr
    (run / "checkpoint-sft").rename(tmp_path / "checkpoint-sft.damaged")  # exactly what the advice says
    res = rlhf("--resume", str(run), "--stages=sft")
    assert res.returncode == 0, res.stderr[-800:]
    assert "checkpoint-sft/ is gone: redoing it" in res.stdout and "already completed" not in res.stdout
    resume.check_checkpoint(run / "checkpoint-sft")
    assert json.loads((run / "state.json").read_text())["completed"].count("sft") == 1


# ----------------------------------------------------------------------------- 8: overrides of a run under way
def resumed(run, *overrides):
    return config_cli.parse_cli(["--resume", str(run), *overrides], extra_flags=("resume=",))[0]


@pytest.mark.parametrize("overrides,message", [
    (["--learning_rate=0.001"], "ppo already ran with learning_rate=1e-05"),
    (["--ppo_steps=1"], "PPO already ran 3 steps"),
    (["--sft_learning_rate=0.1"], "sft already ran"),
    (["--reward_epochs=3"], "reward already ran"),
    (["--conala_path=/tmp"], "sft already ran"),
])
def test_an_override_a_finished_stage_would_ignore_is_refused(tmp_path, overrides, message):
    run = make_run(tmp_path / "run")
    with pytest.raises(config.ConfigError, match=message.replace("(", r"\(")):
        resume.check_resume(run, resumed(run, *overrides))


def test_overrides_that_take_effect_are_applied(tmp_path):
    run = make_run(tmp_path / "run")
    resume.check_resume(run, resumed(run, "--bon_n=4", "--test_limit=4", "--device=cpu", "--stages=eval"))
    state = json.loads((run / "state.json").read_text())
    (run / "state.json").write_text(json.dumps(dict(state, completed=["sft", "reward"])))  # PPO under way, step 2
    with pytest.raises(config.ConfigError, match="PPO already ran 2 steps"):
        resume.check_resume(run, resumed(run, "--ppo_steps=1"))
    resume.check_resume(run, resumed(run, "--ppo_steps=5"))  # more steps: applied, and config.json records it


# ----------------------------------------------------------------------------- 7: the evaluation cache
def test_a_cached_evaluation_is_dropped_when_what_it_depends_on_changes(tmp_path):
    import data
    import report

    run_dir = make_run(tmp_path / "run")
    cfg = config.load_config(run_dir / "config.json")
    test = data.load_splits(cfg)[2]
    entry = {"gold": 0.5, "per_example": {k: [0.5] * len(test) for k in ("gold", "codebleu", "chrf")}}

    def cached_after(cfg, test, sft=str(run_dir / "checkpoint-sft")):
        run = report.Run(run_dir, cfg)
        run.state["evaluated"] = {"base": dict(entry), "sft": dict(entry), "ppo": dict(entry)}
        resume.drop_stale_evaluations(run, test, sft)
        return sorted(report.Run(run_dir, cfg).state["evaluated"])

    assert cached_after(cfg, test) == []  # no keys yet (a kill before this change): every system again
    assert cached_after(cfg, test) == ["base", "ppo", "sft"]  # nothing changed: all kept
    assert cached_after(cfg, test[:4]) == []  # --test_limit=4: other items
    assert cached_after(cfg, test[:4]) == ["base", "ppo", "sft"]
    flip(run_dir / "checkpoint-final" / "model.safetensors")
    models.write_checksums(run_dir / "checkpoint-final")  # PPO went on: new weights, new SHA256SUMS
    assert cached_after(cfg, test[:4]) == ["base", "sft"]
    other = config.make_config("test", dict(config.to_dict(cfg), codebleu_tokenizer="whitespace"))
    assert cached_after(other, test[:4]) == []  # another metric setting
    assert cached_after(other, test[:4], sft="tiny:llama") == ["base", "ppo"]  # --policy=X: another SFT model


def test_a_sampled_only_evaluation_is_a_valid_cached_result():
    """sft-sharp's entry has sampled gold and no greedy gold (evaluate.sharpened_sft writes it so): a
    resume must reuse it, not refuse the state.json the pipeline wrote itself. Its shape is checked
    all the same."""
    from plumbing.resume import evaluated_problem

    sharp = {"sampled_gold": 0.5, "n": 2, "per_example": {"sampled_gold": [0.4, 0.6], "sampled_exec": [0, 1]}}
    greedy = {"gold": 0.5, "per_example": {"gold": [0.4, 0.6], "codebleu": [0.1, 0.2], "chrf": [0.3, 0.4]}}
    assert evaluated_problem(sharp) is None and evaluated_problem(greedy) is None
    assert "equal-length lists of numbers sampled_gold" in evaluated_problem(
        {"sampled_gold": 0.5, "per_example": {"sampled_gold": ["x"]}})
    assert "needs a number 'sampled_gold'" in evaluated_problem({"sampled_gold": "0.5", "per_example": {}})
    assert "needs a number 'gold'" in evaluated_problem({"per_example": {"sampled_gold": [0.4]}})
