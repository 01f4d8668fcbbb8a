"""diagnose.py runs in a subprocess, prints one line per check, and exits 0 on this machine."""
import os
import subprocess
import sys

from conftest import ROOT


def test_diagnose_exits_zero_with_one_line_per_check():
    res = subprocess.run([sys.executable, str(ROOT / "diagnose.py")], cwd=ROOT, capture_output=True, text=True,
                         timeout=120, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    assert res.returncode == 0, res.stdout + res.stderr
    checks = [ln for ln in res.stdout.splitlines() if ln[:1] in ("✅", "⚠", "❌")]
    names = [ln.split()[1] for ln in checks]
    for expected in ("python", "config", "gpu", "conala", "module", "dep", "sandbox", "disk", "ram"):
        assert any(n.startswith(expected) for n in names), expected
    assert not any(ln.startswith("❌") for ln in checks)
    assert "0 failed" in res.stdout.splitlines()[-1]


def test_diagnose_fails_on_a_bad_config_and_on_research_without_gpu():
    res = subprocess.run([sys.executable, str(ROOT / "diagnose.py"), "--config", "nope"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 1 and "❌ config" in res.stdout and "unknown config 'nope'" in res.stdout
    import torch

    if not torch.cuda.is_available():
        res = subprocess.run([sys.executable, str(ROOT / "diagnose.py"), "--config", "research"], cwd=ROOT,
                             capture_output=True, text=True, timeout=120)
        assert res.returncode == 1 and "❌ gpu" in res.stdout
