"""Issue #26, inputs at the edges: boolean and empty script flags, stage order, Unicode the pipeline writes and must
read back, paths the filesystem cannot hold, a Latin-1/ASCII locale, absurd values inside the domains (bounds
written here by hand, not read from config_checks.domains), and deeply nested code. Each case is bounded in time."""
import ast
import json
import os
import subprocess
import sys

import pytest

import config
from plumbing import config_cli
import data
from plumbing import runfolder
from conftest import ROOT
from test_resume import ENV, make_run, snapshot


def rlhf(*args):
    """Bounded, with room for a starved machine: each case fails before a model loads (seconds of CPU)."""
    return subprocess.run([sys.executable, str(ROOT / "rlhf.py"), *args], cwd=ROOT, env=ENV, capture_output=True,
                          text=True, timeout=300)


def one_line_error(res, code=2):
    return res.returncode == code and res.stderr.startswith("error: ") and len(res.stderr.strip().splitlines()) == 1


# ----------------------------------------------------------------------------- 10, 11: script flags
def test_boolean_script_flags_are_parsed():
    extras = config_cli.parse_cli(["--config", "test", "--overwrite=false", "--diagnose=0"],
                                  extra_flags=("resume=", "overwrite", "diagnose"))[1]
    assert extras == {"overwrite": False, "diagnose": False}
    assert config_cli.parse_cli(["--overwrite"], extra_flags=("overwrite",))[1] == {"overwrite": True}
    with pytest.raises(config.ConfigError, match="expected a boolean"):
        config_cli.parse_cli(["--overwrite=maybe"], extra_flags=("overwrite",))


def test_overwrite_false_does_not_move_the_run(tmp_path):
    run = make_run(tmp_path / "run")
    before = snapshot(run)
    res = rlhf("--config", "test", f"--output_dir={run}", "--overwrite=false")
    assert one_line_error(res) and "folder is not empty" in res.stderr
    assert snapshot(run) == before and os.listdir(tmp_path) == ["run"]


@pytest.mark.parametrize("argv", [["--resume="], ["--resume=", "--config", "test"], ["--resume", " "]])
def test_an_empty_resume_is_refused(argv):
    res = rlhf(*argv)
    assert one_line_error(res) and "--resume" in res.stderr and "needs a value" in res.stderr


# ----------------------------------------------------------------------------- 12: stage order
@pytest.mark.parametrize("stages,fixed", [("sft,eval,reward,ppo", "sft,reward,ppo,eval"), ("eval,sft", "sft,eval")])
def test_stages_out_of_pipeline_order_are_refused(stages, fixed):
    with pytest.raises(config.ConfigError, match=f"write --stages={fixed}"):
        config.make_config("test", {"stages": stages})


# ----------------------------------------------------------------------------- 13: Unicode
@pytest.mark.parametrize("fname,key", [("conala-train.json", "snippet"), ("conala-train.json", "intent"),
                                       ("conala-test.json", "snippet")])
def test_a_lone_surrogate_is_a_data_error_at_load(tmp_path, fname, key):
    rec = {"intent": "sort a list", "rewritten_intent": None, "snippet": "sorted(l)", "question_id": 1}
    raw = json.dumps([rec]).replace(json.dumps(rec[key]), json.dumps(rec[key])[:-1] + '\\ud800"')
    (tmp_path / fname).write_text(raw)
    with pytest.raises(data.DataError, match=f"record 0: '{key}' holds a lone surrogate"):
        data.load_conala_file(tmp_path / fname)


def test_line_separators_inside_strings_survive_the_round_trip(tmp_path):
    import metrics

    rows = [{"reference": "s = 'a\u2028b'", "prediction": "t = 'c\u0085d\u2029'"}, {"reference": "x", "prediction": "y"}]
    path = runfolder.write_jsonl(rows, tmp_path / "predictions.jsonl")
    assert runfolder.read_jsonl(path) == rows
    assert metrics.load_predictions(str(path)) == (["s = 'a\u2028b'", "x"], ["t = 'c\u0085d\u2029'", "y"])


# ----------------------------------------------------------------------------- 14: paths and filesystems
@pytest.mark.parametrize("key", ["output_dir", "conala_path", "policy", "policy_model"])
def test_a_name_over_255_bytes_is_a_config_error(key):
    with pytest.raises(config.ConfigError, match="over the filesystem's limit of 255"):
        config.make_config("test", {key: "/tmp/" + "é" * 128})  # 256 bytes, 128 characters


def test_resume_paths_are_checked_like_config_paths():
    with pytest.raises(config.ConfigError, match="--resume=.*over the filesystem's limit"):
        config_cli.parse_cli(["--resume", "x" * 256], extra_flags=("resume=",))


def test_a_non_utf8_output_dir_is_refused_before_anything_is_made(tmp_path):
    out = os.fsencode(tmp_path) + b"/caf\xe9"
    res = subprocess.run([sys.executable, str(ROOT / "rlhf.py"), "--config", "test", b"--output_dir=" + out],
                         cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert one_line_error(res) and "not valid UTF-8" in res.stderr and os.listdir(tmp_path) == []


def test_resume_on_a_read_only_folder_is_one_line(tmp_path, monkeypatch):
    run = make_run(tmp_path / "run")
    monkeypatch.setattr(os, "access", lambda path, mode: False)  # what a read-only filesystem answers (EROFS)
    with pytest.raises(config.ConfigError, match="--resume .*: cannot write there"):
        runfolder.prepare_output_dir(config.load_config(run / "config.json"), str(run), False)


def test_diagnose_does_not_hang_on_a_fifo_checksum_file(tmp_path):
    import shutil

    shutil.copytree(ROOT / "conala-corpus", tmp_path / "c")
    (tmp_path / "c" / "SHA256SUMS").unlink()
    os.mkfifo(tmp_path / "c" / "SHA256SUMS")
    code = f"import diagnose; r = diagnose.check_dataset({str(tmp_path / 'c')!r}); print(r[0][0])"
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and "not a regular file" in res.stdout


# ----------------------------------------------------------------------------- 15: locale
def test_files_are_utf8_and_printing_falls_back_under_an_ascii_locale(tmp_path):
    code = ("import config, report, pathlib\nfrom plumbing import config_cli, runfolder\n"
            "config_cli.console_fallback()\n"
            f"out = pathlib.Path({str(tmp_path)!r})\n"
            "cfg = config.make_config('test', {'output_dir': str(out / '\\u00e9')})\n"
            "config.save_config(cfg, out / 'config.json')\n"
            "run = report.Run(out, cfg)\n"
            "run.state['completed'].append('\\u2705'); run.save_state(); run.log('\\u2705 done')\n"
            "runfolder.write_text(out / 'report.md', '\\u2705')\n")  # escapes: the command line itself is ASCII
    env = dict(ENV, LC_ALL="C", LANG="C", PYTHONCOERCECLOCALE="0", PYTHONUTF8="0", PYTHONIOENCODING="")
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=300, errors="replace")
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "report.md").read_text(encoding="utf-8") == "✅"
    assert json.loads((tmp_path / "config.json").read_text(encoding="utf-8"))["output_dir"].endswith("é")
    assert "✅ done" in (tmp_path / "pipeline.log").read_text(encoding="utf-8") and "\\u2705 done" in res.stdout


def test_every_text_write_names_its_encoding():
    """The rule behind the locale fix, for every module: write_text(...) and open(..., "w"/"a") in text mode
    pass encoding= (a new call without it fails here, not after a whole run under another locale)."""
    missing = []
    for path in sorted([*ROOT.glob("*.py"), *ROOT.glob("plumbing/*.py")]):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Call) or any(k.arg == "encoding" for k in node.keywords):
                continue
            name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            owner = getattr(getattr(node.func, "value", None), "id", "")
            mode = node.args[1].value if len(node.args) > 1 and isinstance(node.args[1], ast.Constant) else "r"
            if (name == "write_text" and owner != "runfolder") or \
                    (name in ("open", "fdopen") and isinstance(mode, str) and set(mode) & set("wa") and "b" not in mode):
                missing.append(f"{path.name}:{node.lineno}")
    assert missing == []


# ----------------------------------------------------------------------------- 16: absurd values
@pytest.mark.parametrize("key,value", [("temperature", "1e-40"), ("cliprange_value", "1e39"),
                                       ("reward_policy_samples", "1000000000"), ("bon_n", "1000000000"),
                                       ("batch_size", str(2**30)), ("bon_n", "5000"), ("eval_batch_size", "100000")])
def test_absurd_values_are_refused_up_front(key, value):
    with pytest.raises(config.ConfigError, match=f"--{key}="):
        config.make_config("test", {key: value})


@pytest.mark.parametrize("key,value", [("temperature", "0.05"), ("cliprange_value", "100"), ("bon_n", "64"),
                                       ("reward_policy_samples", "16"), ("eval_batch_size", "512")])
def test_large_but_sane_values_still_pass(key, value):
    config.make_config("test", {key: value})


def test_a_val_fraction_that_leaves_no_training_question_is_refused():
    cfg = config.make_config("test", {"val_fraction": "0.9999999"})
    with pytest.raises(data.DataError, match="none is left to train on"):
        data.load_splits(cfg)


# ----------------------------------------------------------------------------- 17: deep nesting
def test_deeply_nested_code_is_scored_not_a_segfault(tmp_path):
    import codebleu_ts

    assert codebleu_ts.parse("(" * 20_000 + ")" * 20_000).has_error  # stands in as one syntax error
    assert not codebleu_ts.parse("x = " + "(" * 100 + "1" + ")" * 100).has_error  # moderate nesting: parsed
    pred = tmp_path / "pred.jsonl"
    pred.write_text(json.dumps({"reference": "x = 1", "prediction": "(" * 20_000 + ")" * 20_000}) + "\n")
    res = subprocess.run([sys.executable, str(ROOT / "metrics.py"), str(pred), "--no-bertscore"], cwd=ROOT, env=ENV,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and "syntax_valid_rate     0.0000" in res.stdout, res.stderr[-500:]


def test_an_unwritable_model_cache_is_skipped_not_a_traceback(tmp_path, monkeypatch):
    from plumbing import models

    (tmp_path / "file").write_text("x")  # what a read-only or full HOME gives: the cache folder cannot be made
    monkeypatch.setattr(models, "CACHE_DIR", tmp_path / "file" / "cache")
    cached = getattr(models._cached_gguf_tokenizer, "__wrapped__", models._cached_gguf_tokenizer)
    assert cached()("sorted(l)")["input_ids"] and os.listdir(tmp_path) == ["file"]
