"""dist.py and the multi-rank paths on CPU (gloo): 2 ranks x batch 2 take the PPO update of 1 process x batch 4,
sharded decoding gives the single process's answers, and the helpers are identities at world size 1.

The 2-rank checks run in two processes started by torch.multiprocessing (from a short-lived python running this
file, see start_ranks), joined through dist.setup() with the environment torchrun would give them; the
single-process reference runs here. The end-to-end `torchrun` run of
`rlhf.py --config test` is in test_pipeline.py (it reuses that file's single-process run).
"""
import contextlib
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from plumbing import dist
import advantages
import ppo
from policy import make_reference, PolicyWithValueHead, rollout
from config import make_config
from test_ppo import small_vocab_lm

ROOT = Path(__file__).resolve().parent.parent

INTENTS = ["sort a list", "reverse the string s in place", "add x and y", "open the file f.txt and read it",
           "join the words with commas", "max of a list", "read json from a file", "square every number"]
PPO_KW = dict(batch_size=4, mini_batch_size=2, micro_batch_size=1, ppo_epochs=2, max_new_tokens=8, top_p=1.0,
              max_grad_norm=1e3)  # no clipping: the update is the gradient itself


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def decode_cfg():
    return make_config("test", dict(eval_batch_size=3, max_new_tokens=6))  # 8 intents: 3 batches over 2 ranks


def make_rollout(tok):
    """A 4-row rollout of a small-vocab Llama with a fresh value head (fixed seeds), and its scores."""
    from data import generation_batch

    policy = PolicyWithValueHead(small_vocab_lm(seed=0))
    batch = generation_batch(INTENTS[:4], tok, "chat", max_prompt_len=96)
    ids = batch["input_ids"].clamp(max=511)  # the small vocabulary; the prompts only need to be fixed token rows
    torch.manual_seed(11)
    ro = rollout(policy, make_reference(policy), ids, batch["attention_mask"], tok, make_config("test", PPO_KW))
    return ro, torch.tensor([0.9, 0.1, 0.6, 0.3])


def ppo_update(ro, scores, reduce=None):
    """init_value_bias -> compute_rewards -> one ppo_step with SGD (the update is the clipped gradient itself)
    from the same starting weights; -> (flat parameters after, stats)."""
    cfg = make_config("test", PPO_KW)
    policy = PolicyWithValueHead(small_vocab_lm(seed=0))
    ro = ppo.init_value_bias(policy, ro, scores - cfg.missing_eos_penalty * (~ro.eos).float(), reduce=reduce)
    ro = advantages.compute_rewards(ro, scores, kl_coef=0.1, cfg=cfg, reduce=reduce)
    model = dist.wrap_ddp(policy, torch.device("cpu"))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    torch.manual_seed(7)  # rank 0's permutation of the global batch is the single process's permutation
    stats = ppo.ppo_step(model, opt, ro, cfg)
    return torch.cat([p.detach().flatten() for p in policy.parameters()]), stats, ro.advantages


def worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from decoding import decode_batches
    from plumbing.models import load_causal_lm, load_tokenizer

    assert dist.setup(torch.device("cpu"), timeout_s=120) == torch.device("cpu") and dist.world_size() == world
    tok = load_tokenizer("tiny:llama")
    ro, scores = make_rollout(tok)  # the same 4 rows on every rank; each keeps its own 2
    rows = slice(rank * 2, rank * 2 + 2)
    params, stats, adv = ppo_update(ro.index(rows), scores[rows], reduce=dist.all_reduce_sum)
    answers = decode_batches(load_causal_lm("tiny:llama", seed=0)[0], tok, "chat", INTENTS, decode_cfg(),
                             contextlib.nullcontext(), sample=False)
    torch.save(dict(params=params, stats=stats, adv=adv, answers=answers, shard=dist.shard(list(range(5))),
                    any=dist.any_flag(rank == 1), gathered=dist.gather_objects(rank)), f"{out}/rank{rank}.pt")
    dist.teardown()


def start_ranks(kind: str, out) -> None:
    """Run `python tests/test_dist.py KIND OUT`, which starts the ranks. Not from pytest itself: multiprocessing
    leaves its resource-tracker process running for the life of the parent, and test_sandbox.py inspects every
    descendant of the pytest process."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "tests")]))
    res = subprocess.run([sys.executable, __file__, kind, str(out)], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    start_ranks("ppo", out)
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(2)]


def test_two_ranks_take_the_single_process_update(two_ranks):
    """2 ranks x batch 2 against 1 process x batch 4: the same rollout rows, whitening, value bias, minibatches
    (2 epochs x 2 minibatches of 2, micro-batch 1, so a rank sometimes has no row of a minibatch) and update."""
    from plumbing.models import load_tokenizer

    ro, scores = make_rollout(load_tokenizer("tiny:llama"))
    params, stats, adv = ppo_update(ro, scores)
    torch.testing.assert_close(torch.cat([two_ranks[0]["adv"], two_ranks[1]["adv"]]), adv, atol=1e-6, rtol=1e-5)
    for r in range(2):
        assert (two_ranks[r]["params"] - params).abs().max() < 1e-6  # both replicas hold the single-process weights
        for key in ("loss/policy", "loss/value", "policy/grad_norm", "objective/kl", "objective/score",
                    "value/explained_variance", "response/length_mean", "policy/clipfrac"):
            assert two_ranks[r]["stats"][key] == pytest.approx(stats[key], rel=1e-5, abs=1e-6), key
    assert (params - torch.cat([p.detach().flatten() for p in PolicyWithValueHead(small_vocab_lm()).parameters()])
            ).abs().max() > 1e-3  # the step did move the weights


def test_sharded_decoding_equals_one_process(two_ranks):
    from decoding import decode_batches
    from plumbing.models import load_causal_lm, load_tokenizer

    single = decode_batches(load_causal_lm("tiny:llama", seed=0)[0], load_tokenizer("tiny:llama"), "chat", INTENTS,
                            decode_cfg(), contextlib.nullcontext(), sample=False)
    assert two_ranks[0]["answers"] == two_ranks[1]["answers"] == single


def test_collective_helpers_on_two_ranks_and_identities_on_one(two_ranks):
    assert two_ranks[0]["shard"] + two_ranks[1]["shard"] == [0, 1, 2, 3, 4]
    assert two_ranks[0]["any"] and two_ranks[1]["any"] and two_ranks[0]["gathered"] == [0, 1]
    x = torch.tensor([1.0, 2.0])
    assert dist.world_size() == 1 and dist.is_main() and dist.all_reduce_sum(x) is x and not dist.any_flag(False)
    assert dist.shard([1, 2, 3]) == [1, 2, 3] and dist.gather_objects("a") == ["a"] and dist.unwrap(x) is x
    assert dist.shard_or_dummy([]) == ([], 1.0) and dist.wrap_ddp(torch.nn.Linear(1, 1), torch.device("cpu"))


def test_fewer_gpus_than_ranks_is_one_line():
    msg = dist.device_problem("cuda", 1, 2)
    assert "2 ranks" in msg and "1 GPU" in msg and "\n" not in msg
    assert dist.device_problem("cuda", 2, 2) is None and dist.device_problem("cpu", 0, 8) is None


def dying_worker(rank: int, port: int, out: str) -> None:
    """Rank 1 dies right after joining; rank 0 then waits at a barrier and must get an error, not a hang."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2",
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.setup(torch.device("cpu"), timeout_s=20)
    if rank == 1:
        os._exit(3)
    t0 = time.monotonic()
    try:
        dist.barrier()
        outcome = "no error"
    except Exception as e:  # gloo: the peer's connection closed, or the process-group timeout
        outcome = type(e).__name__
    with open(f"{out}/rank0.txt", "w") as f:
        f.write(f"{outcome} {time.monotonic() - t0:.1f}")


def test_a_dead_rank_ends_the_others_wait_within_the_timeout(tmp_path):
    start_ranks("dying", tmp_path)
    outcome, seconds = (tmp_path / "rank0.txt").read_text().split()
    assert outcome != "no error" and float(seconds) < 30, (outcome, seconds)


if __name__ == "__main__":  # start_ranks: the 2 ranks of one check, each in its own process
    import multiprocessing

    kind, out = sys.argv[1], sys.argv[2]
    if kind == "ppo":
        import torch.multiprocessing as mp

        mp.spawn(worker, args=(2, free_port(), out), nprocs=2, join=True)
    else:
        ctx, port = multiprocessing.get_context("spawn"), free_port()
        procs = [ctx.Process(target=dying_worker, args=(r, port, out)) for r in range(2)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(timeout=90)
        sys.exit(0 if all(p.exitcode is not None for p in procs) else "a rank still hangs")
