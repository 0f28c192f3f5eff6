"""A newcomer's first minute: the CLI finds the weights where the README says, every --help option says what it
does and its default, and a download without the hub says what to do."""

from __future__ import annotations

import argparse
import importlib.util

import pytest

from fakehub import FakeHub
from mediagen import make_image
from seedvr import media
from seedvr.checkpoints import REPO_3B, DownloadError, download
from seedvr.cli import build_parser, main
from tiny import write_tiny_setup
from worker_helpers import ROOT


def test_restore_reads_the_folders_from_the_environment(tmp_path, monkeypatch):
    config_dir, ckpt_dir = write_tiny_setup(tmp_path / "tiny")
    monkeypatch.setenv("SEEDVR_CKPT_DIR", str(ckpt_dir))
    monkeypatch.setenv("SEEDVR_CONFIG_DIR", str(config_dir))
    src, dst = make_image(tmp_path / "in.png", width=24, height=16), tmp_path / "out.png"
    assert main(["restore", str(src), str(dst), "--scale", "2", "--device", "cpu"]) == 0
    assert media.probe(dst).width == 48


def _options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if a.option_strings and not isinstance(a, argparse._HelpAction)]


def _restore_parser() -> argparse.ArgumentParser:
    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return commands.choices["restore"]


def _client():
    spec = importlib.util.spec_from_file_location("client", ROOT / "scripts" / "client.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_help_describes_every_option_with_its_default():
    parser = _restore_parser()
    assert all(action.help for action in _options(parser)), [a.dest for a in _options(parser) if not a.help]
    text = " ".join(parser.format_help().split())
    for shown in ("area", "(default: 1280)", "(default: 720)", "(default: 666)", "(default: 18)", "SEEDVR_CKPT_DIR"):
        assert shown in text, shown


def test_client_help_describes_every_option_with_the_workers_defaults(capsys):
    with pytest.raises(SystemExit):
        _client().parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    for shown in ("area", "default: 1280", "default: 720", "default: 666", "default: 18", "default: auto"):
        assert shown in text, shown
    assert text.count("--") >= 2 * 20  # every option in the usage line and again with its help


def test_client_says_the_local_server_cannot_cancel():
    transport = _client().Transport("http://127.0.0.1:9", None, local=True)
    assert "the local server has no /cancel" in transport.cancel("job")


def test_a_hub_that_does_not_answer_says_what_to_do(tmp_path):
    with FakeHub({REPO_3B: {}}) as hub:  # the hub knows none of the files
        with pytest.raises(DownloadError) as info:
            download(["3b"], tmp_path, progress=False, endpoint=hub.endpoint)
    message = str(info.value)
    assert "What to do: check the network and access to the hub (HF_ENDPOINT, HF_TOKEN)" in message
    assert f"seedvr2_ema_3b.pth, ema_vae.pth, pos_emb.pt, neg_emb.pt into {tmp_path} by hand" in message
