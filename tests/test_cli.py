"""Issue #25, a user's first commands: --help on every script, a bare `python rlhf.py`, --resume that keeps its
promises (a finished stage is refused, more PPO steps run), and bad inputs caught before any stage runs.

Every subprocess here fails or exits before a model loads, except the one end-to-end PPO extension."""
import json
import re
import subprocess
import sys

import pytest

import config
from plumbing import config_cli
from plumbing import model_specs
import report
from plumbing import resume
from conftest import ROOT
from test_resume import ENV, make_run, snapshot

BENCH = sorted(p.name for p in (ROOT / "bench").glob("*.py"))
POSITIONAL = {"episodes_per_hour.py", "gpu_report.py", "ppo_variant.py", "reward_backbones.py",
              "sharpening_probe.py", "bad_inputs3.py"}  # need an argument (a run folder): none runs without it


def run_script(script, *args, env=ENV, timeout=600):
    """Bounded, with room for a starved machine (each case is imports and an argument check)."""
    return subprocess.run([sys.executable, str(ROOT / script), *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def one_line_error(res):
    lines = res.stderr.strip().splitlines()
    return res.returncode != 0 and len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in res.stderr


def config_comments() -> dict[str, str]:
    """field -> its trailing comment, read from config.py's text with a regex (independent of cli_help's tokenizer)."""
    text = (ROOT / "config.py").read_text(encoding="utf-8")
    body = text[text.index("class Config:"):text.index("\n\n\n", text.index("class Config:"))]
    return {m[1]: m[2].strip() for m in re.finditer(r"^    (\w+): \w+ = .*?  # (.*)$", body, re.M)}


# ----------------------------------------------------------------------------- 1: help
@pytest.mark.parametrize("flag", ["-h", "--help"])
def test_rlhf_help_lists_every_option_with_its_value_comment_and_stage(flag):
    res = run_script("rlhf.py", flag)
    assert res.returncode == 0 and res.stderr == "" and res.stdout.startswith("usage: python rlhf.py")
    out, quick = res.stdout, config.make_config("quick")
    comments = config_comments()
    assert len(comments) == len(config.field_types())  # the regex found every field, so the loop checks them all
    for key, comment in comments.items():
        if key == "config_name":  # not an option: --config sets it
            assert "--config_name" not in out
            continue
        value = getattr(quick, key)
        line = next((ln for ln in out.splitlines() if ln.strip().startswith(f"--{key}=")), None)
        assert line is not None, key
        assert line.split()[0] == f'--{key}={value if value != "" else chr(34) * 2}' and line.endswith(comment), line
    for name, (what, took) in config.PRESET_NOTES.items():
        assert f"  {name}" in out and what in out and took in out
    assert set(config.PRESET_NOTES) == set(config.PRESETS)
    for flag_name in ("--resume DIR", "--overwrite", "--diagnose", "--debug"):
        assert f"  {flag_name} " in out

    def group(key):  # the stage heading the option is listed under
        return [ln.strip() for ln in out[:out.index(f"--{key}=")].splitlines() if ln.startswith(" ") and
                ln.strip().endswith(":") and not ln.startswith("  ")][-1]

    expected = {"seed": "general", "policy_model": "general", "sft_learning_rate": "sft", "reward_epochs": "reward",
                "w_exec": "reward", "cliprange": "ppo", "kl_target": "ppo", "bootstrap_samples": "eval",
                "eval_batch_size": "eval", "bon_n": "eval"}
    assert {k: group(k) for k in expected} == {k: f"{g}:" for k, g in expected.items()}


def test_help_shows_the_values_of_the_preset_it_is_given():
    res = run_script("rlhf.py", "--config", "test", "--help")
    assert res.returncode == 0 and "--ppo_steps=3 " in res.stdout and "--policy_model=tiny:llama " in res.stdout


def test_diagnose_help_prints_help_and_runs_no_check():
    res = run_script("diagnose.py", "--help")
    assert res.returncode == 0 and res.stdout.startswith("usage: python diagnose.py")
    assert "--deep" in res.stdout and "--seed=42" in res.stdout
    assert "diagnose: " not in res.stdout and "❌ config" not in res.stdout  # no check ran (it showed a config failure)


@pytest.mark.parametrize("script", BENCH)
def test_every_bench_script_has_help_and_one_line_errors(script):
    res = run_script(f"bench/{script}", "--help")
    assert res.returncode == 0 and res.stdout.startswith("usage:") and "Traceback" not in res.stderr, res.stderr
    res = run_script(f"bench/{script}", "--no-such-option")
    assert one_line_error(res), res.stderr
    if script in POSITIONAL:
        res = run_script(f"bench/{script}")
        assert one_line_error(res), res.stderr


def test_a_bench_script_on_a_folder_that_is_not_a_run_is_one_line(tmp_path):
    res = run_script("bench/reward_backbones.py", str(tmp_path))  # crashed with FileNotFoundError before
    assert one_line_error(res) and "config.json" in res.stderr


# ----------------------------------------------------------------------------- 2: a bare python rlhf.py
def test_a_bare_run_says_which_preset_it_runs_and_how_long():
    res = run_script("rlhf.py", "--policy=/nope")  # stops at the path check, after the announcement
    what, took = config.PRESET_NOTES["quick"]
    assert res.stdout.startswith(f"no --config given: running the quick preset ({what}; {took})")
    assert "preset" not in run_script("rlhf.py", "--config", "quick", "--policy=/nope").stdout


# ----------------------------------------------------------------------------- 3: --resume keeps its promises
def parse(*argv):
    return config_cli.parse_cli(list(argv), extra_flags=("resume=",))


def test_config_name_is_not_an_override_and_config_is_not_a_resume_option(tmp_path):
    with pytest.raises(config.ConfigError, match="--config_name is not an option"):
        parse("--config", "test", "--config_name=research")  # relabelled the run "research"
    run = make_run(tmp_path / "run")
    for argv in (["--config", "quick"], ["--config=test"]):
        with pytest.raises(config.ConfigError, match="with --resume: a resumed run keeps"):
            parse("--resume", str(run), *argv)  # was silently ignored


def test_more_ppo_steps_on_a_finished_ppo_reopen_it_and_fewer_are_refused(tmp_path):
    run_dir = make_run(tmp_path / "run")  # PPO finished its 3 steps (completed, ppo_steps=3)
    for steps, message in ((2, "PPO already ran 3 steps"), (1, "PPO already ran 3 steps")):
        with pytest.raises(config.ConfigError, match=message):
            resume.check_resume(run_dir, parse("--resume", str(run_dir), f"--ppo_steps={steps}")[0])
    with pytest.raises(config.ConfigError, match="--stages=eval leaves it out"):
        resume.check_resume(run_dir, parse("--resume", str(run_dir), "--ppo_steps=5", "--stages=eval")[0])
    cfg = parse("--resume", str(run_dir), "--ppo_steps=5")[0]
    resume.check_resume(run_dir, cfg)  # accepted: it extends PPO
    run = report.Run(run_dir, cfg)
    resume.reopen_extended_ppo(run)
    assert "ppo" not in report.Run(run_dir, cfg).state["completed"]  # so the pipeline runs PPO's extra steps
    same = report.Run(run_dir, config.make_config("test", dict(config.to_dict(cfg), ppo_steps=2)))
    same.state["completed"].append("ppo")
    resume.reopen_extended_ppo(same)  # steps already run: nothing to extend
    assert "ppo" in same.state["completed"]


def ppo_rows(out):
    return [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if r["stage"] == "ppo"]


def test_resume_with_more_ppo_steps_runs_them_and_records_them(tmp_path):
    """End to end: before, `--resume DIR --ppo_steps=N` on a finished PPO ran nothing and rewrote config.json."""
    out = tmp_path / "run"
    args = ("--config", "test", f"--output_dir={out}", "--stages=sft,reward,ppo", "--ppo_steps=2", "--eval_every=0",
            "--save_every=0", "--sft_rs=false")
    res = run_script("rlhf.py", *args, timeout=3000)
    assert res.returncode == 0, res.stderr[-2000:]
    assert [r["step"] for r in ppo_rows(out)] == [1, 2]
    res = run_script("rlhf.py", "--resume", str(out), "--ppo_steps=3", timeout=3000)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "ppo: extending to 3 steps from checkpoint-ppo-2/" in res.stdout
    assert [r["step"] for r in ppo_rows(out)] == [1, 2, 3]
    assert json.loads((out / "config.json").read_text())["ppo_steps"] == 3 and (out / "checkpoint-ppo-3").is_dir()
    assert json.loads((out / "state.json").read_text())["completed"].count("ppo") == 1
    before = snapshot(out)
    res = run_script("rlhf.py", "--resume", str(out), "--ppo_steps=2")
    assert one_line_error(res) and "--ppo_steps=2: PPO already ran 3 steps" in res.stderr
    assert snapshot(out) == before  # refused: config.json still says 3


# ----------------------------------------------------------------------------- 4: bad input early
def test_a_missing_policy_folder_fails_before_any_stage(tmp_path):
    out = tmp_path / "run"
    res = run_script("rlhf.py", "--config", "test", "--policy=/nope", "--stages=eval", f"--output_dir={out}")
    assert one_line_error(res) and "--policy=/nope: folder not found" in res.stderr
    assert "eval" not in res.stdout and not out.exists()  # base was evaluated first, then it failed


@pytest.mark.parametrize("spec,message", [
    ("./nowhere", "folder not found"), ("a/b/c", "folder not found"), ("x.gguf", "folder not found"),
    ("embedded:gpt5", "unknown embedded model"), ("tiny:gpt", "unknown tiny model"),
])
def test_a_model_spec_that_cannot_load_is_one_line_at_once(spec, message):
    with pytest.raises(config.ConfigError, match=message):
        model_specs.check_model_spec(spec, "policy_model")


def test_a_folder_or_file_that_is_not_a_model_is_refused(tmp_path):
    with pytest.raises(config.ConfigError, match="no config.json"):
        model_specs.check_model_spec(str(tmp_path), "policy")
    (tmp_path / "config.json").write_text("{}")
    model_specs.check_model_spec(str(tmp_path), "policy")
    with pytest.raises(config.ConfigError, match="a file, not a model folder"):
        model_specs.check_model_spec(str(tmp_path / "config.json"), "policy")


def test_an_uncached_hub_id_offline_fails_at_once_without_retries(tmp_path):
    res = run_script("rlhf.py", "--config", "test", "--policy_model=nobody-xyz/no-such-model",
                     f"--output_dir={tmp_path / 'run'}", env=dict(ENV, HF_HUB_OFFLINE="1"))
    assert one_line_error(res) and "not in the local Hugging Face cache while HF_HUB_OFFLINE" in res.stderr
    assert "Retry" not in res.stdout + res.stderr and not (tmp_path / "run").exists()


def test_an_unreachable_hub_is_asked_once(monkeypatch):
    import huggingface_hub
    from huggingface_hub import constants
    from huggingface_hub.errors import RepositoryNotFoundError

    calls = []

    def no_network(repo, timeout):
        calls.append(repo)
        raise ConnectionError("Name or service not known")

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", lambda self, repo, timeout: no_network(repo, timeout))
    with pytest.raises(config.ConfigError, match="huggingface.co cannot be reached"):
        model_specs.check_model_spec("nobody-xyz/no-such-model", "policy_model")
    assert calls == ["nobody-xyz/no-such-model"]

    def not_found(self, repo, timeout):  # the hub's 404 (its __init__ wants a real HTTP response)
        err = RepositoryNotFoundError.__new__(RepositoryNotFoundError)
        Exception.__init__(err, "404 Repository Not Found")
        raise err

    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", not_found)
    with pytest.raises(config.ConfigError, match="no such model on the Hugging Face hub"):
        model_specs.check_model_spec("nobody-xyz/no-such-model", "policy_model")


@pytest.mark.parametrize("existing", [False, True])
def test_a_run_that_fails_before_its_first_stage_leaves_nothing_to_block_a_retry(tmp_path, existing):
    out = tmp_path / "run"
    if existing:
        out.mkdir()  # an empty folder the user made: it stays, empty
    for _ in range(2):  # the retry meets the same error, not "folder is not empty"
        res = run_script("rlhf.py", "--config", "test", f"--output_dir={out}", "--stages=ppo")
        assert one_line_error(res) and "checkpoint-reward is missing" in res.stderr, res.stderr
        assert out.exists() == existing and (not existing or list(out.iterdir()) == [])


def test_a_failure_after_a_finished_stage_keeps_the_folder(tmp_path):
    from plumbing import runfolder

    run = make_run(tmp_path / "run")
    before = snapshot(run)
    assert not runfolder.discard_if_unstarted(run, {"completed": ["sft"]}, remove=True)
    assert not runfolder.discard_if_unstarted(run, {"completed": []}, remove=True)  # it holds checkpoints
    assert snapshot(run) == before
