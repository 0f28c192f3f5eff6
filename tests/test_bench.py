"""scripts/bench.py: a CPU smoke run with the tiny models (the report's structure, never timings) and the
FLOP model against the figures of shared/spec/seedvr2.md §9."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from seedvr.models.nadit import parse_params

ROOT = Path(__file__).resolve().parents[1]


def load_bench():
    spec = importlib.util.spec_from_file_location("bench", ROOT / "scripts" / "bench.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench"] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    "model,latent,tflop",
    [("3b", (6, 90, 160), 115.3), ("7b", (6, 90, 160), 183.9), ("3b", (6, 134, 240), 257.5), ("7b", (6, 134, 240), 410.5)],
)
def test_dit_flops_match_the_spec_table(model: str, latent: tuple, tflop: float) -> None:
    config = yaml.safe_load((ROOT / f"configs_{model}" / "main.yaml").read_text())
    params = parse_params(config["dit"]["arch"], config["dit"]["model"])
    flops = load_bench().dit_flops(params, latent, 58)
    assert sum(flops.values()) / 1e12 == pytest.approx(tflop, abs=0.15)


def test_cpu_smoke_run_reports_every_stage(tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    cmd = [sys.executable, str(ROOT / "scripts" / "bench.py"), "--model", "tiny", "--frames", "13",
           "--in-size", "64x48", "--res", "96x64", "--batch-frames", "9", "--json", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    assert report["frames"] == 13 and report["window"] == 9 and report["overlap"] == 5
    assert report["output"] == "90x68" and report["input"] == "64x48"
    assert set(report["seconds"]) == {"decode", "preprocess", "encode", "dit", "vae_decode", "postprocess", "write", "total"}
    assert all(v >= 0 for v in report["seconds"].values())
    assert report["seconds"]["total"] >= report["seconds"]["dit"] > 0
    assert report["dit_gflop"] > 0 and report["dit_tflops_per_s"] > 0 and report["output_fps"] > 0
    assert report["peak_memory_mb"]["process_rss"] > 0
    assert "| dit |" in proc.stdout and "--model tiny" in report["command"]


def test_help_documents_every_option() -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench.py"), "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0
    for option in ("--model", "--ckpt-dir", "--device", "--dtype", "--attention", "--compile", "--frames", "--in-size",
                   "--res", "--scale", "--batch-frames", "--overlap-frames", "--vae-tile", "--color-fix", "--warmup", "--json",
                   "--dit-layers", "--sp-size"):
        assert option in proc.stdout


def test_first_layers_cuts_depth_not_width() -> None:
    config = yaml.safe_load((ROOT / "configs_3b" / "main.yaml").read_text())["dit"]["model"]
    cut = load_bench().first_layers(config, 4)
    params = parse_params("v2", cut)
    assert params.num_layers == 4 and params.vid_dim == config["vid_dim"] and params.heads == config["heads"]
    assert params.window_methods == config["window_method"][:4]
    with pytest.raises(ValueError, match="--dit-layers must be between 1 and 32, got 33"):
        load_bench().first_layers(config, 33)


@pytest.mark.slow  # one process and a torchrun launch of two ranks
def test_parallel_bench_times_one_job_on_two_ranks_against_one(tmp_path: Path) -> None:
    out = tmp_path / "parallel.json"
    cmd = [sys.executable, str(ROOT / "scripts" / "bench_parallel.py"), "--ranks", "2", "--json", str(out), "--",
           "--model", "tiny", "--device", "cpu", "--frames", "9", "--in-size", "64x48", "--res", "64x48",
           "--batch-frames", "5", "--overlap-frames", "1", "--vae-tile", "0"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
    result = json.loads(out.read_text())
    assert result["speedup"] > 0 and result["threads_per_rank"] == 1
    assert len(result["one"]["peak_memory_mb_per_rank"]) == 1 and len(result["split"]["peak_memory_mb_per_rank"]) == 2
    assert result["one"]["frames"] == result["split"]["frames"] == 9
    assert "| 9 frame(s) -> 64x48 |" in proc.stdout


def test_random_weights_are_filled_at_the_planned_scale() -> None:
    """Every matrix is written (not left as uninitialised memory) with std 1/sqrt(fan_in), matrices
    differ, vectors named like norms are ones and the other vectors zeros."""
    import torch

    bench = load_bench()
    model = torch.nn.Sequential(torch.nn.Linear(300, 700), torch.nn.Linear(700, 200), torch.nn.LayerNorm(200))
    with torch.device("meta"):
        meta = torch.nn.Sequential(torch.nn.Linear(300, 700), torch.nn.Linear(700, 200), torch.nn.LayerNorm(200))
    for module in (model, meta.to_empty(device="cpu")):
        with torch.no_grad():
            for param in module.parameters():
                param.fill_(7.0)
        bench.random_init_(module, seed=1)
        first, second = module[0].weight, module[1].weight
        assert first.std().item() * 300**0.5 == pytest.approx(1, abs=0.02)
        assert second.std().item() * 700**0.5 == pytest.approx(1, abs=0.02)
        assert abs(first.mean().item()) < 0.002
        assert not torch.equal(first.flatten()[:200] * 300**0.5, second.flatten()[:200] * 700**0.5)
        assert torch.equal(module[2].weight, torch.ones(200)) and not module[0].bias.any() and not module[2].bias.any()


def test_saved_random_weights_load_strictly_under_the_configs_file_names(tmp_path: Path, monkeypatch) -> None:
    """`bench.py --save-weights` writes what `--ckpt-dir` then loads: the file names of the model's config,
    every key, the same values (the tiny fixture models stand in for the 3B's random ones)."""
    import argparse

    import torch

    from seedvr.checkpoints import load_weights
    from tiny import tiny_models

    bench = load_bench()
    models = tiny_models()
    monkeypatch.setattr(bench, "build_models", lambda args: (models, models.dit.params))
    bench.save_weights(argparse.Namespace(model="3b", ckpt_dir=None), tmp_path)
    config = yaml.safe_load((ROOT / "configs_3b" / "main.yaml").read_text())
    for name, model in ((config["dit"]["checkpoints"]["normal"], models.dit), (config["vae"]["checkpoint"], models.vae)):
        fresh = load_weights(type(model)(model.params), tmp_path / name, torch.float32, "cpu")
        for key, value in model.state_dict().items():
            assert torch.equal(fresh.state_dict()[key], value), key
    with pytest.raises(SystemExit, match="--save-weights needs"):
        bench.save_weights(argparse.Namespace(model="tiny", ckpt_dir=None), tmp_path)
