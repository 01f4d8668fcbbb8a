import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach for the hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
SHARED = ROOT.parent / "shared"


@pytest.fixture(autouse=True)
def one_thread():
    """Tests use tiny models, which gain nothing from threads; on a shared 2-core machine OpenMP's spinning
    barriers made 2-thread runs 20-40x slower whenever another process was busy."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs CUDA; skipped without it (the GPU lane: pytest -m gpu)")


def default_signals(then=None):
    """preexec_fn for a child that tests signals: SIGINT, SIGTERM and SIGHUP at their defaults, then `then()`. Under
    nohup, or started with `&` by a non-interactive shell (as CI may be), pytest inherits SIGHUP or SIGINT ignored,
    the child would too, and the run rightly keeps an ignored signal ignored."""
    import signal

    def pre():
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)
        if then is not None:
            then()
    return pre
