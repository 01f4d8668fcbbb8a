"""What a resumed run may trust, checked before it does any work: the run's state, its metrics and
every checkpoint it may reload (complete files, whole headers, a SHA256SUMS that lists and matches
them), the command line's overrides of a run already under way, and which cached evaluations still
hold. Then how a stopped PPO continues: the trainer state it saved and restores, and the step and
curve point metrics.jsonl shows it reached.

Why a separate module: a resume reads files a kill, a disk or a hand may have damaged, long after
they were written; each check here is one line of error before any work, instead of a traceback
after it.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from plumbing import dist
from plumbing import models
from config import ConfigError, load_config, stage_list, to_dict
from plumbing.runfolder import need_config, ppo_checkpoints, read_jsonl


# ---------------------------------------------------------------------------- state and checkpoints
# What each checkpoint must hold for the stage that reloads it (file names from rlhf.py, policy.py
# and reward_model.py; tests/test_resume.py checks they agree). Checked, with the state files,
# before a resumed run does any work.
CHECKPOINT_FILES = {"checkpoint-sft": ("config.json",),
                    "checkpoint-reward": ("config.json", "reward_head.pt"),
                    "checkpoint-ppo-": ("config.json", "value_head.pt", "trainer_state.pt"),
                    "checkpoint-final": ("config.json", "value_head.pt")}
STATE_KEYS = {"completed": list, "stage_seconds": dict, "evaluated": dict}
# evaluate.BOOTSTRAP_METRICS: what the paired bootstrap reads
PER_EXAMPLE_KEYS = ("gold", "codebleu", "chrf")
SAMPLED_KEYS = ("sampled_gold",)  # what the report reads of a sampled-only system (sft-sharp)
FIX_STATE = ('fix it by hand ({"completed": [...], "stage_seconds": {}, "evaluated": {}} lists the '
             "finished stages), or start again in a new --output_dir")


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def load_state(path: Path) -> dict:
    """state.json, checked for the shape Run writes; a truncated or foreign file is a one-line
    error."""
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as e:
        raise ConfigError(f"{path}: cannot read the run state ({str(e)[:120]}); "
                          f"{FIX_STATE}") from None
    if not isinstance(state, dict):
        raise ConfigError(f"{path}: expected a JSON object, got {type(state).__name__}; "
                          f"{FIX_STATE}")
    for key, typ in STATE_KEYS.items():
        if not isinstance(state.get(key), typ):
            raise ConfigError(f"{path}: '{key}' must be a JSON "
                              f"{'list' if typ is list else 'object'}; {FIX_STATE}")
    if not all(isinstance(s, str) for s in state["completed"]):
        raise ConfigError(f"{path}: 'completed' must list stage names; {FIX_STATE}")
    if not all(_is_number(v) for v in state["stage_seconds"].values()):
        raise ConfigError(f"{path}: 'stage_seconds' must map stages to numbers; {FIX_STATE}")
    if not isinstance(state.get("eval_inputs", {}), dict):
        raise ConfigError(f"{path}: 'eval_inputs' must be a JSON object; delete it to evaluate "
                          "every system again")
    for name, entry in state["evaluated"].items():
        problem = evaluated_problem(entry)
        if problem:
            raise ConfigError(f"{path}: evaluated.{name} {problem}; delete that entry to evaluate "
                              f"{name} again")
    return state


def evaluated_problem(entry) -> str | None:
    """A cached evaluation is reused as is (evaluate.evaluate_system): it must hold what the report
    reads."""
    if not isinstance(entry, dict):
        return "must be an object"
    if "per_example" not in entry:
        return None  # not a cached result: evaluated again
    per = entry["per_example"]
    # sft-sharp is sampled only (evaluate.sharpened_sft): no greedy answers, so no 'gold'
    sampled_only = "gold" not in entry and "sampled_gold" in entry
    score, keys = ("sampled_gold", SAMPLED_KEYS) if sampled_only else ("gold", PER_EXAMPLE_KEYS)
    if not _is_number(entry.get(score)) or not isinstance(per, dict):
        return f"needs a number '{score}' and an object 'per_example'"
    lists = [per.get(k) for k in keys]
    if not all(isinstance(v, list) and all(_is_number(x) for x in v) for v in lists) \
            or len({len(v) for v in lists}) != 1:
        return f"per_example needs equal-length lists of numbers {', '.join(keys)}"
    return None


def check_resume(run_dir: str | Path, cfg=None) -> Path:
    """Everything a resumed run will read, checked before it writes anything: config.json,
    state.json, metrics.jsonl rows, the files of each checkpoint it may reload, and (given the
    resolved `cfg`) the command line's overrides (check_overrides). Returns the run folder."""
    out = need_config(run_dir).parent
    saved = load_config(out / "config.json")
    state = load_state(out / "state.json") if (out / "state.json").exists() else {"completed": []}
    if cfg is not None:
        check_overrides(out, saved, cfg, state)
    if (out / "metrics.jsonl").exists():
        for i, row in enumerate(read_jsonl(out / "metrics.jsonl"), 1):
            if not isinstance(row.get("stage"), str) or not isinstance(row.get("step"), int):
                raise ConfigError(f"{out / 'metrics.jsonl'}: record {i} has no string 'stage' and "
                                  "integer 'step' (the report reads them); fix or delete that "
                                  "line, then --resume again")
    ppo = ppo_checkpoints(out)
    folders = [out / n for n in ("checkpoint-sft", "checkpoint-reward", "checkpoint-final")] + \
        ([ppo[max(ppo)]] if ppo else [])
    for folder in folders:
        if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
            what = "symbolic link" if folder.is_symlink() else "file"
            raise ConfigError(f"{folder}: a {what}, not a checkpoint folder; move it out of the "
                              "run folder, then --resume again")
        if folder.is_dir():
            check_checkpoint(folder)
    return out


def check_checkpoint(folder: Path) -> None:
    """The files a checkpoint needs are there and whole: a truncated safetensors or torch zip is
    caught from its header, without loading a tensor, and damaged bytes in a file of the right size
    from the checkpoint's SHA256SUMS (models.save_atomic writes it; one sha256 pass over the bytes,
    timed in README.md, Outputs)."""
    kind = "checkpoint-ppo-" if folder.name.startswith("checkpoint-ppo-") else folder.name
    advice = (f"move {folder.name}/ out of the run folder to resume from the previous checkpoint"
              if kind == "checkpoint-ppo-" else
              f"move {folder.name}/ out of the run folder and --resume with its stage in --stages "
              "to redo it")
    for name in CHECKPOINT_FILES.get(kind, ()):
        if not (folder / name).is_file():
            raise ConfigError(f"{folder / name}: missing, the checkpoint is incomplete; {advice}")
    weights = sorted(folder.glob("*.safetensors"))
    if not weights and not (folder / "pytorch_model.bin").is_file():
        raise ConfigError(f"{folder}: no model weights (*.safetensors); the checkpoint is "
                          f"incomplete; {advice}")
    for path in weights + sorted(folder.glob("*.pt")) + sorted(folder.glob("*.bin")):
        problem = (_safetensors_problem(path) if path.suffix == ".safetensors"
                   else _torch_zip_problem(path))
        if problem:
            raise ConfigError(f"{path}: {problem}, the checkpoint is damaged; {advice}")
    # a whole-size file with damaged bytes passes the header checks
    problem = models.checksum_problem(folder)
    if problem:
        raise ConfigError(f"{folder}: {problem}; {advice}")


def _safetensors_problem(path: Path) -> str | None:
    """safetensors layout: u64 little-endian header size, a JSON header, then the tensor bytes it
    indexes."""
    try:
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            size = path.stat().st_size
            if size < 8 or n > size - 8:
                return "truncated (header runs past the end of the file)"
            header = json.loads(f.read(n))
        end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"),
                  default=0)
    except (OSError, ValueError, KeyError, TypeError, IndexError) as e:
        return f"unreadable safetensors header ({str(e)[:80]})"
    if 8 + n + end <= size:
        return None
    return f"truncated ({size} bytes, the header needs {8 + n + end})"


def _torch_zip_problem(path: Path) -> str | None:
    """torch.save writes a zip whose directory sits at the end, so a truncated file has none."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as z:
            z.infolist()
    except (OSError, zipfile.BadZipFile) as e:
        return f"truncated or not a torch file ({str(e)[:80]})"
    return None


# --------------------------------------------------------------------- overrides of a run under way
# `--resume DIR --key=value` writes the new value to config.json. Where a stage that reads the key
# has already run (or PPO's saved optimizer holds it), the new value would change nothing and the
# record would lie, so it is refused; where only stages still to come read it, it is applied and
# recorded. Per field:
#   free        read only by evaluation (whose cache is keyed on it: eval_cache_keys) or by nothing
#               numeric
#   ppo_steps   may grow while PPO is under way; below the steps done, or after PPO finished, it is
#               refused
#   by stage    a field is read first by the stage in FIRST_READER (sft_* by sft, reward_* by
#               reward), and any field not named here is assumed read by SFT: refused once any stage
#               has started
FREE = {"device", "dtype", "dist_timeout_s", "output_dir", "stages", "tensorboard", "save_every",
        "eval_every", "test_limit", "eval_batch_size", "eval_bertscore", "bertscore_model",
        "bertscore_layers", "bootstrap_samples", "codebleu_tokenizer", "eval_slice", "eval_systems",
        "bon_n", "eval_samples", "sharpen_temperatures"}
PPO_FIRST = {"batch_size", "mini_batch_size", "micro_batch_size", "ppo_epochs", "learning_rate",
             "vf_learning_rate", "lr_decay", "lr_warmup_steps", "samples_per_prompt", "advantage",
             "gamma", "lam", "cliprange", "cliprange_value", "vf_coef", "max_grad_norm",
             "adaptive_kl", "init_kl_coef", "kl_target", "kl_horizon", "kl_estimator",
             "missing_eos_penalty", "missing_eos", "advantage_norm", "prompt_selection",
             "kl_budget", "sft_rs", "target_kl", "whiten_rewards", "do_sample", "w_rm", "w_syntax",
             "w_exec", "w_similarity", "w_quality", "reward_scale", "reward_clip_min",
             "reward_clip_max"}
REWARD_FIRST = {"reward_encoder", "exec_timeout_s", "temperature", "top_p", "max_new_tokens"}


def first_reader(key: str) -> str:
    if key in PPO_FIRST:
        return "ppo"
    return "reward" if key in REWARD_FIRST or key.startswith("reward_") else "sft"


def check_overrides(out: Path, saved, cfg, state: dict) -> None:
    """Refuse an override of a value that a stage already run (or PPO's saved optimizer) keeps."""
    ppo_done = max(ppo_checkpoints(out), default=0)
    started = set(state["completed"]) | ({"ppo"} if ppo_done else set())
    order = ("sft", "reward", "ppo")
    for key, value in to_dict(cfg).items():
        old = getattr(saved, key)
        if value == old or key in FREE:
            continue
        # fewer steps than ran cannot be undone; more extend PPO (reopen_extended_ppo)
        if key == "ppo_steps":
            done = max(ppo_done, old if "ppo" in state["completed"] else 0)
            if value < done:
                raise ConfigError(f"--ppo_steps={value}: PPO already ran {done} steps in {out}; "
                                  "ask for at least that many (more steps continue it)")
            if done and "ppo" not in stage_list(cfg):
                raise ConfigError(f"--ppo_steps={value}: more PPO steps need the ppo stage, but "
                                  f"--stages={cfg.stages} leaves it out; add ppo to --stages")
            continue
        stage = first_reader(key)
        ran = [s for s in order[order.index(stage):] if s in started]
        if ran:
            why = " (PPO resumes its saved optimizer)" if ran[0] == "ppo" else ""
            raise ConfigError(f"--{key}={value}: {ran[0]} already ran with {key}={old} in {out}, "
                              f"so the change would be recorded but not applied{why}; use a new "
                              "--output_dir to change it")


def reopen_extended_ppo(run) -> None:
    """`--resume DIR --ppo_steps=M` on a PPO that finished N < M steps (check_overrides allowed it):
    PPO is no longer complete, so the pipeline runs it again, and stage_ppo continues from
    checkpoint-ppo-N/ (the last step is always saved) with its optimizer, KL coefficient and RNG
    state. The eval cache is keyed on the weights of checkpoint-final/, so the extended PPO is
    evaluated again."""
    done = max(ppo_checkpoints(run.out), default=0)
    if "ppo" not in run.state["completed"] or run.cfg.ppo_steps <= done:
        return
    run.state["completed"].remove("ppo")
    run.save_state()
    start = (f"checkpoint-ppo-{done}/" if done
             else "the SFT policy (no checkpoint-ppo-<step>/ is left)")
    decay = (f"; lr_decay now spans {run.cfg.ppo_steps} steps, so the lrs differ from a fresh run's"
             if run.cfg.lr_decay and done else "")
    run.log(f"ppo: extending to {run.cfg.ppo_steps} steps from {start}{decay}")


# ----------------------------------------------------------------------------- continuing PPO
def latest_ppo_checkpoint(run) -> tuple[int, Path | None]:
    """(the last saved PPO step, its checkpoint-ppo-<step>/), or (0, None) before the first."""
    steps = ppo_checkpoints(run.out)
    return (max(steps), steps[max(steps)]) if steps else (0, None)


def trainer_state(opt, kl_ctl, step: int) -> dict:
    """What trainer_state.pt holds beside the weights: the optimizer, the KL coefficient, the step
    and every rank's torch RNG state, so a resume continues each rank's sampling stream. Every rank
    calls it (a gather)."""
    rngs = dist.gather_objects(torch.get_rng_state())
    return ({"optimizer": opt.state_dict(), "kl_coef": kl_ctl.value, "step": step,
             "torch_rng": rngs[0]} | ({"torch_rng_by_rank": rngs} if len(rngs) > 1 else {}))


def restore_ppo(folder: Path, opt, kl_ctl) -> None:
    """Continue PPO where checkpoint-ppo-<step>/ left it (its weights are loaded with the policy):
    the optimizer, the KL coefficient and this rank's torch RNG state. One stream per rank, as
    saved; on another number of ranks every rank takes rank 0's."""
    saved = torch.load(folder / "trainer_state.pt", weights_only=False)
    opt.load_state_dict(saved["optimizer"])
    kl_ctl.value = saved["kl_coef"]
    by_rank = saved.get("torch_rng_by_rank", [saved["torch_rng"]])
    mine = by_rank[dist.rank()] if len(by_rank) == dist.world_size() else saved["torch_rng"]
    torch.set_rng_state(mine)


def logged_step(run, step: int) -> tuple[float | None, bool]:
    """PPO step `step` as metrics.jsonl logged it, on every rank: (its rollout KL, None when absent;
    whether its curve point is there). A resume reads it to tell whether that step passed
    --kl_budget or a stop skipped its curve point. Rank 0 reads the file."""
    logged = (None, False)
    if dist.is_main() and (run.out / "metrics.jsonl").exists():
        rows = read_jsonl(run.out / "metrics.jsonl")
        kls = [r["objective/kl"] for r in rows if r.get("stage") == "ppo" and r.get("step") == step]
        drawn = any(r.get("stage") == "ppo_eval" and r.get("step") == step for r in rows)
        logged = (kls[-1] if kls else None, drawn)
    return dist.broadcast_object(logged)


def ended_by_kl_budget(run, start: int) -> bool:
    """Resuming PPO at step `start`: did that step's rollout KL pass --kl_budget, so PPO ended
    there?"""
    kl_at_start = logged_step(run, start)[0] if run.cfg.kl_budget and start else None
    return kl_at_start is not None and kl_at_start > run.cfg.kl_budget


def missing_curve_kl(run, start: int, final: bool = False) -> float | None:
    """Resuming PPO at step `start`: that step's objective/kl when its curve point is due but not in
    metrics.jsonl (a stop came before or during it), else None. final: `start` ended PPO (its KL
    budget), so its point is due."""
    cfg = run.cfg
    if not (cfg.eval_every and start):
        return None
    if not (start % cfg.eval_every == 0 or start == cfg.ppo_steps or final):
        return None
    kl, drawn = logged_step(run, start)
    return None if drawn else kl


# ----------------------------------------------------------------------------- the evaluation cache
# state.json's `evaluated` lets a resumed eval skip systems already scored. A cached result holds
# only for what it was computed from; state.json keeps a key per system (eval_inputs), and a changed
# key means evaluating again: other test items (--test_limit, --conala_path), other decoding or
# metric settings, or other weights (a redone SFT, a longer PPO, another --policy). Without this,
# the paired CIs paired unrelated items.
EVAL_FIELDS = ("test_limit", "prompt_format", "max_prompt_len", "max_new_tokens", "exec_timeout_s",
               "codebleu_tokenizer", "eval_bertscore", "bertscore_model", "bertscore_layers",
               "reward_scale", "reward_clip_min", "reward_clip_max")
BON_FIELDS = ("bon_n", "temperature", "top_p", "seed")  # best-of-n samples
SAMPLE_FIELDS = ("eval_samples", "temperature", "seed")  # sampled gold (evaluate.sample_and_judge)
# the sharpening control
SHARPEN_FIELDS = ("eval_samples", "sharpen_temperatures", "eval_slice", "seed")


def model_digest(spec: str) -> str:
    """A checkpoint folder is its SHA256SUMS; any other spec (tiny:llama, embedded:..., a hub id)
    names itself."""
    sums = Path(spec) / models.CHECKSUMS
    return hashlib.sha256(sums.read_bytes()).hexdigest() if sums.is_file() else spec


def eval_cache_keys(cfg, out: Path, test, sft: str) -> dict[str, str]:
    common = [{k: getattr(cfg, k) for k in EVAL_FIELDS},
              [(e.question_id, e.intent, e.snippet) for e in test],
              model_digest(str(out / "checkpoint-reward"))]  # the proxy score of every system

    def key(*parts) -> str:
        return hashlib.sha256(json.dumps([common, *parts]).encode()).hexdigest()[:16]

    sampled = {k: getattr(cfg, k) for k in SAMPLE_FIELDS}
    return {"base": key(model_digest(cfg.policy_model)), "sft": key(model_digest(sft), sampled),
            "sft-bon": key(model_digest(sft), {k: getattr(cfg, k) for k in BON_FIELDS}),
            "sft-sharp": key(model_digest(sft), {k: getattr(cfg, k) for k in SHARPEN_FIELDS}),
            "sft-rs": key(model_digest(str(out / "checkpoint-sft-rs")), sampled),
            "ppo": key(model_digest(str(out / "checkpoint-final")), sampled)}


def drop_stale_evaluations(run, test, sft: str) -> None:
    """Before the eval stage: forget each cached result whose key changed (or that has none), record
    the keys."""
    keys = eval_cache_keys(run.cfg, run.out, test, sft)
    stored = run.state.get("eval_inputs", {})
    for name in list(run.state["evaluated"]):
        if name not in stored or stored[name] != keys.get(name):
            del run.state["evaluated"][name]
            run.log(f"eval {name}: the cached result was made from other test items, settings or "
                    "weights (or before the cache was keyed): evaluating it again")
    run.state["eval_inputs"] = keys
    run.save_state()
