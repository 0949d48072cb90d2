"""Shared fixtures: tiny models, the reference data folder."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from editscope.models import tiny_model
from editscope.precision import OVERRIDE_ENV
from editscope.sweep.task import torch_threads

SHARED_DATA = Path(os.environ.get("EDITSCOPE_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def shared_data(relative: str) -> Path:
    """A file of ../shared/data; the test is skipped where the folder is absent."""
    path = SHARED_DATA / relative
    if not path.exists():
        pytest.skip(f"reference data not available: {path}")
    return path


@pytest.fixture(scope="session")
def tiny_llama():
    return tiny_model("llama")


@pytest.fixture(scope="session")
def tiny_gpt2():
    return tiny_model("gpt2")


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory) -> Path:
    """The tiny llama saved as a Hugging Face folder (what runs load by path)."""
    folder = tmp_path_factory.mktemp("tiny-llama")
    model, tokenizer, _ = tiny_model("llama")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture
def one_thread():
    """One torch thread for the test: multi-threaded CPU kernels (MKL, OpenMP reductions) are not
    reproducible run to run, so comparisons of two runs bit for bit are made single-threaded."""
    with torch_threads(1):
        yield


@pytest.fixture(scope="session")
def _throwaway_home(tmp_path_factory):
    return tmp_path_factory.mktemp("editscope-home")


@pytest.fixture(scope="session", autouse=True)
def _float32_everywhere():
    """Every ``auto`` precision resolves to float32 (``EDITSCOPE_PRECISION``) for the whole session, on
    every machine, so the suite gives the same results on a CPU with native bf16 as on one without.

    The tests compare against float32 computations by hand, against each other to 1e-5 and bit for
    bit across resumed runs; bf16 autocast (``auto`` on an AVX512-BF16 CPU) cannot meet that. Session
    scope, so module-scoped fixtures (reference runs) resolve it the same way as the tests that compare
    with them. ``test_precision.py`` sets or clears the variable itself to test the resolution.
    """
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(OVERRIDE_ENV, "fp32")
        yield


@pytest.fixture(autouse=True)
def _private_cache_home(request, monkeypatch, _throwaway_home):
    """Tiny models' statistics go to a throwaway cache; real-model tests use the user's cache."""
    if "integration" not in request.node.path.parts:
        monkeypatch.setenv("EDITSCOPE_HOME", str(_throwaway_home))


def train_tiny_mend(model, tokenizer, out: Path, *, steps: int = 30, seed: int = 0, **overrides) -> Path:
    """Train a small MEND hypernetwork on ``model`` with demo requests (a few seconds) into ``out``."""
    from editscope.data import load_requests
    from editscope.editors.mend import MENDTrainConfig, MENDTrainer, split_requests

    requests = load_requests("demo")[:60]
    settings = {"layers": (-2, -1), "rank": 16, "steps": steps, "batch_size": 4, "lr": 1e-2, "lr_final": 1.0, "edit_weight": 1.0,
                "checkpoint_every": steps, "autocast": None, "seed": seed, **overrides}
    config = MENDTrainConfig(**settings)
    train, held_out = split_requests(requests, config.held_out, config.seed)
    trainer = MENDTrainer(model, tokenizer, train, held_out, config, model_name="tiny", data_name="demo[:60]")
    trainer.train(out)
    return out


@pytest.fixture(scope="session")
def mend_checkpoint(tmp_path_factory):
    """``arch -> folder`` of a MEND hypernetwork trained for ``tiny_model(arch)`` (trained once per session)."""
    trained: dict[str, Path] = {}

    def get(arch: str) -> Path:
        if arch not in trained:
            model, tok, _ = tiny_model(arch)
            trained[arch] = train_tiny_mend(model, tok, tmp_path_factory.mktemp(f"mend-{arch}") / "ckpt")
        return trained[arch]

    return get


def kill_repeatedly(
    command: Callable[[int], Sequence[str]], progress: Callable[[], int], *, kills: int, seed: int,
    env: dict[str, str] | None = None, wait_for: int = 1, max_delay: float = 0.8,
) -> int:
    """Start ``command(i)`` and SIGKILL it at a random moment once ``progress()`` has grown by
    ``wait_for``; ``kills`` times. Returns how many kills happened (fewer if the run finished first)."""
    rng = random.Random(seed)
    done = 0
    while done < kills:
        before = progress()
        proc = subprocess.Popen(list(command(done)), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env or os.environ.copy())
        deadline = time.monotonic() + 120
        while progress() < before + wait_for and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, max_delay))
        if proc.poll() is not None:
            break
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        done += 1
    return done
