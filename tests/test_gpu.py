"""The GPU lane (`pytest -m gpu`, or bench/gpu_check.sh): every test skips without CUDA.

None of these has been run: this project has had no GPU (docs/DISTRIBUTED.md). They check what a CPU cannot:
a PPO step under bf16 autocast and under fp16 with GradScaler, each against fp32 on the same rollout, an end-to-end
`--config test --device=cuda` run, and a 2-rank NCCL run of the same when two GPUs are present.
"""
import copy
import json
import subprocess
import sys

import pytest
import torch

import advantages
import ppo
from policy import make_reference, PolicyWithValueHead, rollout
from conftest import ROOT
from test_pipeline import ENV, torchrun

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")]


@pytest.fixture(scope="module")
def cuda_rollout():
    from data import generation_batch
    from plumbing.models import load_causal_lm
    from test_ppo import cfg_for

    cuda = torch.device("cuda")
    lm, tok = load_causal_lm("tiny:llama", seed=0)
    lm.to(cuda)
    intents = ["sort a list", "reverse the string s in place", "add x and y", "open the file f.txt and read it"] * 2
    batch = generation_batch(intents, tok, "chat", max_prompt_len=96)
    cfg = cfg_for(ppo_epochs=1)
    torch.manual_seed(4)
    ro = rollout(PolicyWithValueHead(copy.deepcopy(lm)), make_reference(lm), batch["input_ids"].to(cuda),
                     batch["attention_mask"].to(cuda), tok, cfg)
    return lm, advantages.compute_rewards(ro, torch.randn(len(intents)), 0.1, cfg), cfg


def amp_step(lm, ro, cfg, dtype):
    from plumbing.models import autocast_ctx, make_grad_scaler

    cuda = torch.device("cuda")
    policy = PolicyWithValueHead(copy.deepcopy(lm)).to(cuda)
    torch.manual_seed(5)
    return ppo.ppo_step(policy, torch.optim.AdamW(policy.parameters(), lr=1e-4), ro, cfg,
                        ctx=autocast_ctx(cuda, dtype), scaler=make_grad_scaler(cuda, dtype))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16-gradscaler"])
def test_amp_ppo_step_matches_fp32(cuda_rollout, dtype):
    """bf16 keeps ~3 significant digits, fp16 ~4 (with loss scaling): the same bounds as the CPU bf16 test."""
    lm, ro, cfg = cuda_rollout
    f32, amp = amp_step(lm, ro, cfg, torch.float32), amp_step(lm, ro, cfg, dtype)
    assert amp["loss/value"] == pytest.approx(f32["loss/value"], rel=5e-3)
    assert amp["loss/policy"] == pytest.approx(f32["loss/policy"], abs=5e-3)
    assert amp["policy/grad_norm"] == pytest.approx(f32["policy/grad_norm"], rel=1e-2)
    assert amp["policy/first_ratio_dev"] < 0.01


def test_config_test_end_to_end_on_cuda(tmp_path):
    out = tmp_path / "cuda"
    res = subprocess.run([sys.executable, str(ROOT / "rlhf.py"), "--config", "test", "--device=cuda",
                          "--output_dir", str(out)], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert json.loads((out / "report.json").read_text())["device"].startswith("cuda")


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")
def test_two_ranks_on_nccl(tmp_path):
    res = torchrun("--device=cuda", "--output_dir", str(tmp_path / "nccl"))
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert (tmp_path / "nccl" / "report.md").exists()
