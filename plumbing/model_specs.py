"""Model specs checked before any stage runs: each spec the requested stages will load must name an
embedded or tiny model, a model folder, a .gguf file, or a hub id that is cached or on the hub.

A bad model spec used to surface inside the stage that first loads it: `--policy=/nope
--stages=eval` evaluated `base` for minutes and then failed with transformers' "Repo id must use
alphanumeric chars", and an unknown hub id offline retried 5 times with backoff (minutes) before
failing. rlhf.py calls check_model_specs first. Loading the models is models.py's.
"""
from __future__ import annotations

import re
from pathlib import Path

import config
from config import ConfigError
from plumbing.models import EMBEDDED, embedded_path

# `name` or `org/name`, as the hub spells them
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")
TINY = ("tiny:llama", "tiny:bert")


def model_fields(cfg) -> list[str]:
    """The model specs the requested stages will load (a spec no stage reads is not checked)."""
    stages = config.stage_list(cfg)
    wanted = ["policy"] if cfg.policy else []
    wanted.append("policy_model")  # SFT's start, and `base` in the evaluation
    if "reward" in stages and cfg.reward_backbone == "encoder":
        wanted.append("reward_encoder")
    if "eval" in stages and cfg.eval_bertscore:
        wanted.append("bertscore_model")
    return wanted


def check_model_specs(cfg) -> None:
    for key in model_fields(cfg):
        check_model_spec(getattr(cfg, key), key)


def check_model_spec(spec: str, key: str) -> None:
    """One line of error now for a spec that cannot load: an unknown embedded:/tiny: name, a missing
    local folder or file, a folder that is not a model, or a hub id that is neither cached nor on
    the hub (one request)."""
    if spec.startswith("embedded:"):
        if spec not in EMBEDDED:
            raise ConfigError(f"--{key}={spec}: unknown embedded model; "
                              f"valid: {', '.join(EMBEDDED)}")
        embedded_path(spec)  # the PyPI package is installed and holds the file
        return
    if spec.startswith("tiny:"):
        if spec not in TINY:
            raise ConfigError(f"--{key}={spec}: unknown tiny model; valid: {', '.join(TINY)}")
        return
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ConfigError(f"--{key}={spec}: the folder has no config.json, "
                              "so it is not a model checkpoint")
        return
    if path.is_file():
        if path.suffix != ".gguf":
            raise ConfigError(f"--{key}={spec}: a file, not a model folder or a .gguf file")
        return
    local = spec.startswith(("/", ".", "~")) or spec.endswith(".gguf") or spec.count("/") > 1
    if local or not HUB_ID.fullmatch(spec):
        raise ConfigError(f"--{key}={spec}: folder not found "
                          "(nor a file, an embedded:/tiny: model or a hub id)")
    check_hub_id(spec, key)


def check_hub_id(spec: str, key: str) -> None:
    """A hub id loads if it is in the local HF cache, or if the hub answers for it. One request with
    a timeout decides, instead of from_pretrained's 5 retries with backoff per file when the hub
    cannot be reached."""
    import huggingface_hub
    from huggingface_hub import constants
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    if isinstance(huggingface_hub.try_to_load_from_cache(spec, "config.json"), str):
        return  # cached: from_pretrained reads it (offline too)
    if constants.HF_HUB_OFFLINE:
        raise ConfigError(f"--{key}={spec}: no such folder, and the hub id is not in the local "
                          "Hugging Face cache while HF_HUB_OFFLINE is set; download it first, "
                          "or point to a local copy")
    try:
        huggingface_hub.HfApi().model_info(spec, timeout=HUB_TIMEOUT_S)
    except GatedRepoError:
        return  # it exists; from_pretrained uses the login token, or says it needs one
    except RepositoryNotFoundError:
        raise ConfigError(f"--{key}={spec}: no such folder, and no such model on the Hugging Face "
                          "hub (a private one needs `huggingface-cli login`)") from None
    except Exception as e:  # DNS, connection, timeout: the network, not the id
        raise ConfigError(f"--{key}={spec}: no such folder, and huggingface.co cannot be reached "
                          f"to fetch it ({type(e).__name__}: {str(e)[:100]}); use a local copy, "
                          "or the embedded default that works offline") from None


# for the one request (a failing DNS lookup is the resolver's: ~20 s here, not 5 x backoff)
HUB_TIMEOUT_S = 10.0
