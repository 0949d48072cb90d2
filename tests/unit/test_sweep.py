"""Sweeps (grid, skip, retry; Ray against in-process; a killed worker), sharded statistics, device maps.

The Ray tests run on a local cluster of two one-CPU nodes; every run and shard uses one torch
thread, in the workers and in this process alike, so their numbers can be compared bit for bit.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from editscope.config import ConfigError
from editscope.sweep import SweepConfig, expand, load_sweep_config, run_sweep
from editscope.sweep.task import torch_threads

TINY_EDITOR = {"layers": [1, 2], "context_lengths": [], "stats_samples": 200, "stats_seq_len": 32, "z": {"steps": 20}, "mom2_update_weight": 10.0}
INSTRUMENTS = ["weights", "activations", "edit_quality"]
INSTRUMENT_CONFIG = {
    "activations": {"n_texts": 4, "seq_len": 32},
    "edit_quality": {"retention_sample": 5, "generation_prompts": 2, "generation_tokens": 8},
}
GRID = {"editor": ["memit", "encore"], "seed": [0, 1]}


def tiny_sweep(folder: Path, root: Path, **overrides) -> SweepConfig:
    data = {
        "base": {"model": str(folder), "editor_config": TINY_EDITOR, "edits": 20, "batch_size": 5, "every": 5,
                 "instruments": INSTRUMENTS, "instrument_config": INSTRUMENT_CONFIG},
        "grid": GRID, "root": str(root), "resources": {"num_cpus": 1}, "max_retries": 2,
    }
    data.update(overrides)
    path = root.parent / f"{root.name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return load_sweep_config(path)


def comparable(folder: Path) -> tuple[list, dict]:
    """metrics.jsonl without timings, and the final cumulative deltas."""
    records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    values = [(r["edits"], {k: v for k, v in r["metrics"].items() if not k.startswith(("time/", "mem/"))}) for r in records]
    return values, load_file(str(folder / "state" / "deltas.safetensors"))


def assert_same_runs(a: Path, b: Path, names: list[str]) -> None:
    for name in names:
        (values_a, deltas_a), (values_b, deltas_b) = comparable(a / name), comparable(b / name)
        assert [e for e, _ in values_a] == [e for e, _ in values_b] == [0, 5, 10, 15, 20], name
        assert values_a == values_b, name
        assert sorted(deltas_a) == sorted(deltas_b)
        for key in deltas_a:
            assert torch.equal(deltas_a[key], deltas_b[key]), (name, key)


# -- the grid ------------------------------------------------------------------------------------
def test_grid_expands_into_named_validated_runs(tiny_folder, tmp_path):
    sweep = tiny_sweep(tiny_folder, tmp_path / "sweep", grid={"editor": ["memit", "encore"], "seed": [0, 1], "hparams.z.steps": [5]})
    runs = expand(sweep)
    assert [r.name for r in runs] == [
        "editor=memit,seed=0,hparams.z.steps=5", "editor=memit,seed=1,hparams.z.steps=5",
        "editor=encore,seed=0,hparams.z.steps=5", "editor=encore,seed=1,hparams.z.steps=5",
    ]
    first = runs[0].config
    assert first.out == str(tmp_path / "sweep" / runs[0].name)
    assert first.editor_config["z"] == {"steps": 5} and first.editor_config["mom2_update_weight"] == 10.0  # merged into the base
    assert runs[3].config.editor == "encore" and runs[3].config.seed == 1
    paths = expand(tiny_sweep(tiny_folder, tmp_path / "m", grid={"model": [str(tiny_folder)]}))
    assert paths[0].name.startswith("model=") and "/" not in paths[0].name and "~" in paths[0].name  # a path gets a hashed slug


@pytest.mark.parametrize(
    ("grid", "message"),
    [
        ({"edtor": ["memit"]}, "unknown key 'edtor'.*did you mean 'editor'"),
        ({"hparms.z.steps": [1]}, "did you mean 'hparams'"),
        ({"out": ["x"]}, "set sweep.root"),
        ({"seed": 3}, "sweep.grid.seed: expected a non-empty list"),
        ({"seed.x": [1]}, "seed has no nested settings"),
        ({"hparams.mom2_update_wieght": [1.0]}, "sweep run hparams.mom2_update_wieght=1.0: .*did you mean 'mom2_update_weight'"),
        ({"seed": [0, 0]}, "same run 'seed=0'"),
    ],
)
def test_bad_grids_name_the_field(tiny_folder, tmp_path, grid, message):
    with pytest.raises(ConfigError, match=message):
        expand(tiny_sweep(tiny_folder, tmp_path / "sweep", grid=grid))


def test_base_out_is_refused_and_base_may_be_a_file(tiny_folder, tmp_path):
    with pytest.raises(ConfigError, match="sweep.base.out"):
        SweepConfig(base={"out": "x"})
    (tmp_path / "run.yaml").write_text(yaml.safe_dump({"model": str(tiny_folder), "edits": 7}))
    (tmp_path / "s.yaml").write_text(yaml.safe_dump({"base": "run.yaml", "grid": {"seed": [3]}}))
    (run,) = expand(load_sweep_config(tmp_path / "s.yaml"))
    assert run.config.edits == 7 and run.config.seed == 3


# -- retries and outcomes, without models -----------------------------------------------------------
def test_failed_runs_are_retried_then_reported(tiny_folder, tmp_path, monkeypatch, capsys):
    from editscope.cli import main
    from editscope.sweep import runner

    calls: list[str] = []

    def flaky(config_data, threads):
        name = Path(config_data["out"]).name
        calls.append(name)
        if name == "seed=1" or calls.count(name) == 1:
            raise RuntimeError(f"lost {name}")
        return {"edits": config_data["edits"], "weights_sha256": "ab"}

    monkeypatch.setattr(runner, "run_task", flaky)
    sweep = tiny_sweep(tiny_folder, tmp_path / "sweep", grid={"seed": [0, 1]}, max_retries=1)
    report = run_sweep(sweep, backend="inprocess")
    assert [(o.name, o.status, o.attempts) for o in report.outcomes] == [("seed=0", "finished", 2), ("seed=1", "failed", 2)]
    assert report.failed[0].error == "RuntimeError: lost seed=1"
    assert main(["sweep", str(tmp_path / "sweep.yaml"), "--backend", "inprocess"]) == 1  # a run failed for good
    assert "1 failed" in capsys.readouterr().out

    def config_error(config_data, threads):
        calls.append("config")
        raise ConfigError("run.data: no such file")

    calls.clear()
    monkeypatch.setattr(runner, "run_task", config_error)
    report = run_sweep(sweep, backend="inprocess")
    assert [o.attempts for o in report.outcomes] == [1, 1]  # not retried: it would fail the same way


def test_without_ray_the_sweep_runs_in_process(monkeypatch, caplog):
    from editscope.sweep import runner

    monkeypatch.setattr(runner, "ray_available", lambda: False)
    with caplog.at_level(logging.WARNING):
        assert runner.choose_backend("auto", None) == "inprocess"
    assert "Ray is not installed" in caplog.text
    with pytest.raises(ConfigError, match="Ray is not installed"):
        runner.choose_backend("auto", "ray://head:10001")


# -- real runs: in process, on Ray, a killed worker -------------------------------------------------
@pytest.fixture(scope="module")
def cache_home(_throwaway_home):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("EDITSCOPE_HOME", str(_throwaway_home))  # before any worker starts: they inherit it
        yield _throwaway_home


@pytest.fixture(scope="module")
def in_process(tiny_folder, tmp_path_factory, cache_home):
    """The 2x2 sweep run in this process (one torch thread per run): the reference folders."""
    sweep = tiny_sweep(tiny_folder, tmp_path_factory.mktemp("inprocess") / "sweep")
    report = run_sweep(sweep, backend="inprocess")
    assert [o.status for o in report.outcomes] == ["finished"] * 4
    return sweep, report


@pytest.fixture(scope="module")
def ray_cluster(cache_home):
    """A local Ray cluster of two nodes with one CPU each."""
    ray = pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    cluster.add_node(num_cpus=1)
    ray.init(address=cluster.address, logging_level=logging.WARNING)
    cluster.wait_for_nodes()
    yield ray
    ray.shutdown()
    cluster.shutdown()


def test_finished_runs_are_skipped(in_process, capsys):
    from editscope.cli import main

    sweep, _ = in_process
    report = run_sweep(sweep, backend="inprocess")
    assert [o.status for o in report.outcomes] == ["skipped"] * 4
    assert main(["sweep", str(Path(sweep.root).parent / "sweep.yaml"), "--dry-run", "--json"]) == 0
    assert {row["status"] for row in json.loads(capsys.readouterr().out)} == {"complete"}


def test_ray_sweep_equals_in_process(in_process, ray_cluster, tiny_folder, tmp_path):
    reference, reference_report = in_process
    sweep = tiny_sweep(tiny_folder, tmp_path / "sweep")
    report = run_sweep(sweep, backend="ray")
    assert report.backend == "ray"
    assert [o.status for o in report.outcomes] == ["finished"] * 4
    assert [o.weights_sha256 for o in report.outcomes] == [o.weights_sha256 for o in reference_report.outcomes]
    assert_same_runs(Path(reference.root), Path(sweep.root), [o.name for o in report.outcomes])


def _kill_first_run_task(root: Path, deadline: float) -> int:
    """SIGKILL this test's Ray workers running a sweep run, once one has checkpointed past edit 0."""
    import psutil

    while time.monotonic() < deadline:
        for metrics in root.glob("*/metrics.jsonl"):
            lines = metrics.read_text().splitlines()
            if len(lines) >= 2 and json.loads(lines[-1])["edits"] < 20:
                workers = [p for p in psutil.Process().children(recursive=True) if p.name().startswith("ray::run_task")]
                for worker in workers:
                    worker.kill()
                if workers:
                    return len(workers)
        time.sleep(0.02)
    return 0


def test_a_killed_worker_loses_nothing(in_process, ray_cluster, tiny_folder, tmp_path):
    reference, _ = in_process
    sweep = tiny_sweep(tiny_folder, tmp_path / "sweep")
    result = {}
    thread = threading.Thread(target=lambda: result.setdefault("report", run_sweep(sweep, backend="ray")))
    thread.start()
    killed = _kill_first_run_task(Path(sweep.root), time.monotonic() + 600)  # a loaded 2-core machine can take minutes
    thread.join(timeout=900)
    assert killed >= 1, "no run was caught between its first and last checkpoint"
    assert not thread.is_alive(), "the sweep did not finish within 15 minutes of the kill"
    report = result["report"]
    assert [o.status for o in report.outcomes] == ["finished"] * 4
    assert max(o.attempts for o in report.outcomes) == 2  # the killed runs went again ...
    assert_same_runs(Path(reference.root), Path(sweep.root), [o.name for o in report.outcomes])  # ... and resumed exactly


# -- sharded statistics ---------------------------------------------------------------------------
def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def test_sharded_statistics_equal_single_process(tiny_folder, ray_cluster, tmp_path, monkeypatch, caplog):
    from editscope.data.corpora import load_corpus
    from editscope.editors import build_editor
    from editscope.linalg.stats import collect_second_moments, read_cached_moments, token_chunks
    from editscope.models import load, model_fingerprint
    from editscope.sweep.stats import StatsConfig, compute_statistics, in_process_shards, sharded_collector

    monkeypatch.setenv("EDITSCOPE_HOME", str(tmp_path / "home"))
    lm = load(str(tiny_folder))
    corpus = load_corpus("default", model=lm.model, tokenizer=lm.tokenizer)
    chunks = token_chunks(lm.tokenizer, corpus, 200, 32)
    layers = [1, 2, 3]
    with torch_threads(1):
        single = collect_second_moments(lm.model, lm.spec, layers, chunks, batch_tokens=512)
        merged = sharded_collector(3, in_process_shards(lm.model, lm.spec, None), batch_tokens=512)(layers, chunks)
    for layer in layers:
        assert merged[layer].count == single[layer].count
        assert _relative(merged[layer].sum, single[layer].sum) < 1e-10

    config = StatsConfig(model=str(tiny_folder), layers=(1, 2), n_samples=200, seq_len=32, shards=2)
    result = compute_statistics(config, backend="ray")  # two Ray tasks, one per node
    assert result.computed == (1, 2) and all(path.is_file() for path in result.files.values())
    with torch_threads(1):
        reference = collect_second_moments(lm.model, lm.spec, [1, 2], chunks)
    cached = read_cached_moments(model_fingerprint(lm.model), lm.spec, [1, 2], corpus, n_samples=200, seq_len=32, autocast=None)
    for layer in (1, 2):
        assert cached[layer].count == reference[layer].count
        assert _relative(cached[layer].sum, reference[layer].sum) < 1e-10
    editor = build_editor("memit", {**TINY_EDITOR, "layers": [1, 2]})
    with caplog.at_level(logging.INFO, logger="editscope.linalg.stats"):
        editor.prepare(lm.model, lm.tokenizer)  # the editor reads what the sharded job wrote
    assert "computing second moments" not in caplog.text
    assert compute_statistics(config, backend="ray").cached == (1, 2)


def test_cli_stats_in_process_shards(tiny_folder, tmp_path, monkeypatch, capsys):
    from editscope.cli import main

    monkeypatch.setenv("EDITSCOPE_HOME", str(tmp_path / "home"))
    args = ["stats", "--model", str(tiny_folder), "--layers", "1,2", "--samples", "60", "--seq-len", "32", "--shards", "2", "--backend", "inprocess", "--json"]
    assert main(args) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["computed"] == [1, 2] and first["cached"] == [] and first["shards"] == 2
    assert all(Path(p).is_file() and Path(p).is_relative_to(tmp_path / "home") for p in first["files"].values())
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out)["cached"] == [1, 2]
    assert main(["stats", "--model", str(tiny_folder), "--editor", "ft", "--backend", "inprocess"]) == 2
    assert "reads no second-moment statistics" in capsys.readouterr().err


def test_resources_no_node_has_are_reported(ray_cluster, caplog):
    from editscope.sweep.cluster import warn_if_unplaceable

    with caplog.at_level(logging.WARNING):
        warn_if_unplaceable(ray_cluster, 1, 0)
        assert "no node" not in caplog.text
        warn_if_unplaceable(ray_cluster, 2, 0)  # two nodes of one CPU each: none has two
    assert "no node of the Ray cluster has 2 CPUs" in caplog.text
