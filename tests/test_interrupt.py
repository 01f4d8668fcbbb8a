"""Stop signals (console.py) and the long loops that answer them.

Ctrl-C, SIGTERM and SIGHUP all mean "finish the current batch or step, save, exit"; a second one exits at once
with one line; every long loop (decoding, sandboxed labelling, RM epochs, rejection-sampling scoring) stops
within one batch; training.log holds lines, not progress-bar frames; the run ends with report.md's table.
The last test is the real thing: SIGINT in the reward stage of `rlhf.py --config test`, then --resume.
"""
import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest
import torch

from plumbing import console
import decoding
import feedback
import rejection
import report
import reward
from conftest import ROOT, default_signals
from plumbing.console import Interrupted


# ----------------------------------------------------------------------------- training.log
def test_training_log_keeps_lines_not_carriage_return_frames(tmp_path):
    """A tqdm bar redraws its line ~50 times here: the terminal gets every frame, the log only the last."""
    from tqdm import tqdm

    term = io.StringIO()
    tee = console.Tee(term, tmp_path / "training.log")
    for _ in tqdm(range(50), desc="annotating train", file=tee, mininterval=0, ascii=True):
        pass
    tee.write("[01:02:03] reward: 10 train pairs\n")
    tee.write("\rbar 10%\rbar 20%\r" + " " * 20 + "\r\x1b[A[01:02:04] a line written over a cleared bar\n")
    lines = (tmp_path / "training.log").read_text().split("\n")
    assert lines[-1] == "" and "\r" not in "".join(lines) and "\x1b" not in "".join(lines)
    assert len(lines) == 4, lines
    assert lines[0].startswith("annotating train: 100%|") and "50/50" in lines[0]
    assert lines[1:3] == ["[01:02:03] reward: 10 train pairs", "[01:02:04] a line written over a cleared bar"]
    assert term.getvalue().count("\r") >= 50  # the terminal still sees the bar move


# ----------------------------------------------------------------------------- signals, in a bare process
WORKER = """
import signal, sys, time
sys.path.insert(0, {root!r})
from plumbing import console

class Run:
    stop_requested, stop_signal = False, signal.SIGINT

run = Run()
console.install_sigint(run)
print("ready", flush=True)
t0 = time.time()
while not run.stop_requested and time.time() - t0 < 300:
    time.sleep(0.01)
print("finishing the step after", signal.Signals(run.stop_signal).name, flush=True)
if "--slow-step" in sys.argv:  # a step that outlasts the user's patience: the second signal must end it
    time.sleep(300)
sys.exit(128 + run.stop_signal)
"""


def worker(*args, preexec_fn=None):
    proc = subprocess.Popen([sys.executable, "-c", WORKER.format(root=str(ROOT)), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=default_signals(preexec_fn))
    assert proc.stdout.readline() == "ready\n"
    return proc


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_sigterm_and_sighup_are_handled_like_ctrl_c(sig):
    """The first signal of any of the three only asks the run to stop; it exits itself, with 128 + the signal."""
    proc = worker()
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig, err
    assert out.splitlines()[-1] == f"finishing the step after {sig.name}"
    assert f"interrupt ({sig.name}): finishing the current batch or step" in err and "Traceback" not in err


def test_a_second_ctrl_c_exits_at_once_with_one_line_and_130():
    proc = worker("--slow-step")
    proc.send_signal(signal.SIGINT)
    assert proc.stdout.readline() == "finishing the step after SIGINT\n"
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)  # the step sleeps 300 s: only an immediate exit returns in time
    assert proc.returncode == 130
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 2 and lines[0].startswith("interrupt (SIGINT)") and lines[1].startswith("aborted (SIGINT"), err


def test_an_ignored_sighup_stays_ignored():
    """nohup sets SIGHUP to SIG_IGN so a closed terminal does not stop the run; installing ours must not undo it."""
    proc = worker(preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN))
    proc.send_signal(signal.SIGHUP)
    time.sleep(1.0)
    assert proc.poll() is None
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM and out.splitlines()[-1].endswith("SIGTERM")


# ----------------------------------------------------------------------------- each long loop stops within one batch
def flips_after(calls: list, n: int):
    """A stop flag that turns on once `calls` has n entries (a signal landing during batch n)."""
    return lambda: len(calls) >= n


def test_sandboxed_labelling_stops_within_one_batch(monkeypatch):
    calls = []
    monkeypatch.setattr(feedback.sandbox, "execute_many", lambda codes, t, w: calls.append(codes) or
                        [f"ran {c}" for c in codes])
    codes = [f"x = {i}" for i in range(100)] + ["x = 0"]  # 100 distinct snippets
    with pytest.raises(Interrupted, match="annotating train: stopped after 64/100 snippets"):
        feedback.run_snippets(codes, 1.0, 2, stop=flips_after(calls, 2), desc="annotating train")
    assert [len(c) for c in calls] == [32, 32]
    calls.clear()
    assert feedback.run_snippets(codes, 1.0, 2, stop=lambda: False) == [f"ran {c}" for c in codes]
    assert sum(len(c) for c in calls) == 100  # identical code still runs once


class FakeLM:
    """generate() appends one token, the number of the call, so each answer says which batch made it."""
    device = "cpu"

    def __init__(self):
        self.calls = []

    def eval(self):
        pass

    def generate(self, input_ids, attention_mask, num_return_sequences, **kw):
        self.calls.append(len(input_ids))
        ids = input_ids.repeat_interleave(num_return_sequences, 0)
        return torch.cat([ids, torch.full((len(ids), 1), len(self.calls))], 1)


class FakeTok:
    pad_token_id = eos_token_id = 0

    def batch_decode(self, ids, skip_special_tokens):
        return [f"x = {int(row[-1])}" for row in ids]


def test_decoding_stops_within_one_batch(monkeypatch):
    monkeypatch.setattr(decoding.data, "generation_batch", lambda intents, tok, fmt, n: {
        "input_ids": torch.zeros(len(intents), 1, dtype=torch.long),
        "attention_mask": torch.ones(len(intents), 1, dtype=torch.long)})
    cfg = SimpleNamespace(eval_batch_size=2, max_prompt_len=8, max_new_tokens=1, temperature=1.0, top_p=1.0)
    intents = ["a", "bb", "ccc", "dddd", "eeeee", "ffffff", "g" * 7, "h" * 8]  # 4 batches of 2
    lm = FakeLM()
    with pytest.raises(Interrupted, match="policy samples: stopped after 1/4 batches"):
        decoding.decode_batches(lm, FakeTok(), "plain", intents, cfg, contextlib.nullcontext(), sample=True, n=2,
                                desc="policy samples", stop=flips_after(lm.calls, 1))
    assert lm.calls == [2]
    lm = FakeLM()
    out = decoding.decode_batches(lm, FakeTok(), "plain", intents, cfg, contextlib.nullcontext(), sample=False,
                                  desc="eval", stop=lambda: False)
    assert out == [[f"x = {1 + i // 2}"] for i in range(8)] and lm.calls == [2, 2, 2, 2]


def test_reward_model_training_stops_within_one_batch(monkeypatch):
    rm = torch.nn.Linear(1, 1)
    calls = []

    def pair_scores(model, tok, mb, device, ctx):
        calls.append(len(mb))
        r = rm(torch.ones(len(mb), 1)).squeeze(-1)
        return r, torch.zeros(len(mb))

    monkeypatch.setattr(reward, "pair_scores", pair_scores)
    pairs = [{"question_id": i, "intent": f"i{i}", "chosen": "a", "rejected": "b"} for i in range(8)]
    cfg = SimpleNamespace(reward_max_len=16, reward_learning_rate=1e-3, reward_epochs=2, reward_batch_size=2, seed=0,
                          max_grad_norm=1.0)
    with pytest.raises(Interrupted, match=r"stopped in epoch 1/2 after 1/4 batches"):
        reward.train_reward_model(rm, None, pairs, pairs, cfg, torch.device("cpu"), contextlib.nullcontext(),
                                  log=lambda m: None, stop=flips_after(calls, 1))
    assert calls == [2]


def test_rejection_sampling_scoring_stops_within_one_batch():
    rows = [{"question_id": i, "intent": f"i{i}", "reference": "r", "samples": [f"s{i}_{j}" for j in range(10)]}
            for i in range(20)]  # 200 samples: 4 batches of 64
    calls = []

    def score_fn(intents, references, codes):
        calls.append(len(codes))
        return torch.zeros(len(codes))

    with pytest.raises(Interrupted, match="policy-sample scoring: stopped after 64/200 samples"):
        rejection.select_examples(rows, score_fn, stop=flips_after(calls, 1))
    assert calls == [64]


# ----------------------------------------------------------------------------- resume and the end of the run
def test_resume_redraws_a_curve_point_the_stop_skipped(tmp_path):
    from plumbing import resume

    def run_with(rows):
        (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        return SimpleNamespace(out=tmp_path, cfg=SimpleNamespace(eval_every=2, ppo_steps=5))

    ppo = [{"stage": "ppo", "step": s, "objective/kl": s / 10} for s in range(1, 6)]
    curve = [{"stage": "ppo_eval", "step": 0}]
    run = run_with(ppo[:4] + curve)
    assert resume.missing_curve_kl(run, 4) == 0.4  # due at step 4, stopped before it was drawn
    assert resume.missing_curve_kl(run, 3) is None  # not an eval step
    assert resume.missing_curve_kl(run_with(ppo[:4] + curve + [{"stage": "ppo_eval", "step": 4}]), 4) is None
    assert resume.missing_curve_kl(run_with(ppo + curve), 5) == 0.5  # the last step always gets one


@pytest.mark.parametrize("stop_in, raises", [("reward", True), ("eval", False)])
def test_a_stop_during_the_last_stage_ends_the_run_as_complete(tmp_path, monkeypatch, stop_in, raises):
    """A stop seen after a stage that is not the last: Interrupted (rlhf.py prints "continue with --resume").
    After the last stage there is nothing to continue: the run ends normally (no such line)."""
    import config
    import rlhf

    ran = []

    def stage(name):
        def run_it(*args):
            ran.append(name)
            run.stop_requested = run.stop_requested or name == stop_in  # the signal lands during this stage
        return run_it

    for name in ("reward", "eval"):
        monkeypatch.setattr(rlhf, f"stage_{name}", stage(name))
    monkeypatch.setattr(rlhf.data, "load_splits", lambda cfg: ([], [], []))
    monkeypatch.setattr(rlhf.resume, "drop_stale_evaluations", lambda *a: None)
    run = report.Run(tmp_path, config.make_config("test", {"stages": "reward,eval"}))
    if raises:
        with pytest.raises(Interrupted, match="stopped after the reward stage"):
            rlhf.run_pipeline(run, torch.device("cpu"))
        assert ran == ["reward"] and run.state["completed"] == ["reward"]
    else:
        rlhf.run_pipeline(run, torch.device("cpu"))
        assert ran == ["reward", "eval"] and run.state["completed"] == ["reward", "eval"]


def test_console_ends_with_report_mds_table_and_verdicts(tmp_path):
    import config

    systems = {"sft": {"gold": 0.5, "proxy": 0.25, "codebleu": 0.125, "chrf": 0.3, "syntax_valid_rate": 1.0, "n": 8},
               "ppo": {"gold": 0.625, "proxy": 0.75, "codebleu": 0.25, "chrf": 0.35, "syntax_valid_rate": 0.875,
                       "n": 8}}
    boot = [{"comparison": "ppo − sft", "metric": "gold", "mean_diff": 0.125, "ci95_low": 0.0625, "ci95_high": 0.1875,
             "n_items": 8, "n_resamples": 100, "verdict": "ppo better"},
            {"comparison": "ppo − sft", "metric": "chrf", "mean_diff": 0.05, "ci95_low": -0.01, "ci95_high": 0.1,
             "n_items": 8, "n_resamples": 100, "verdict": "no significant difference"}]
    cfg = config.to_dict(config.Config())
    written = report.write_report(tmp_path, systems, boot, [], {}, "cpu", "fp32", cfg, [])
    lines = report.console_summary(written)
    assert lines[0] == "gold and proxy on 8 test items (report.md has every metric):"
    assert lines[1].split() == ["system", "gold", "proxy", "codebleu", f"({cfg['codebleu_tokenizer']})", "chrf",
                                "syntax_valid_rate"]
    assert lines[2].split() == ["sft", "0.5000", "0.2500", "0.1250", "0.3000", "1.0000"]
    assert lines[3].split() == ["ppo", "0.6250", "0.7500", "0.2500", "0.3500", "0.8750"]
    assert lines[4] == "paired bootstrap 95% CIs (8 items, 100 resamples):"
    assert lines[5].split() == ["ppo", "−", "sft", "gold", "+0.1250", "[+0.0625,", "+0.1875]", "ppo", "better"]
    assert lines[6].endswith("[-0.0100, +0.1000]  no significant difference") and len(lines) == 7
    md = (tmp_path / "report.md").read_text()  # the same numbers as report.md's rows
    assert "| ppo − sft | gold | +0.1250 | [+0.0625, +0.1875] | ppo better |" in md
    assert "| ppo | 0.6250 | 0.7500 | 0.2500 | 0.3500 | 0.8750 |" in md


# ----------------------------------------------------------------------------- the real run
ENV = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHONHASHSEED="0", OMP_NUM_THREADS="1")


def test_ctrl_c_in_the_reward_stage_stops_there_and_resume_completes_the_run(tmp_path):
    """SIGINT as the reward stage starts: it stops inside that stage (within a batch of policy sampling,
    labelling or RM training, not after the stage), exits 130 with the one-line message, leaves no
    checkpoint-reward/ for resume to trust, and --resume redoes the reward stage and finishes the run."""
    out = tmp_path / "run"
    small = ["--ppo_steps", "1", "--eval_every", "0", "--bon_n", "0", "--eval_batch_size", "1"]  # 10 sampling batches
    proc = subprocess.Popen([sys.executable, str(ROOT / "rlhf.py"), "--config", "test", "--output_dir", str(out),
                             *small], cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=default_signals())
    log = out / "pipeline.log"
    while not (log.exists() and "=== stage reward ===" in log.read_text()):
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    stdout, _ = proc.communicate(timeout=1800)
    assert proc.returncode == 130, stdout[-3000:]
    assert "Traceback" not in stdout
    line = next(ln for ln in stdout.splitlines() if "interrupted: " in ln)
    assert "stopped after" in line and "the reward stage starts over on --resume" in line, line
    assert f"--resume {out}" in line
    assert json.loads((out / "state.json").read_text())["completed"] == ["sft"]
    assert not (out / "checkpoint-reward").exists()
    res = subprocess.run([sys.executable, str(ROOT / "rlhf.py"), "--resume", str(out)], cwd=ROOT, env=ENV,
                         capture_output=True, text=True, timeout=1800)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    state = json.loads((out / "state.json").read_text())
    assert state["completed"] == ["sft", "reward", "ppo", "eval"]
    text = log.read_text()
    assert text.count("=== stage sft ===") == 1 and text.count("=== stage reward ===") == 2
    assert "gold and proxy on 8 test items" in text and "paired bootstrap 95% CIs" in text  # the console's end
    assert "\r" not in (out / "training.log").read_text()
