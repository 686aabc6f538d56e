"""Provenance helpers: the settings hash, the quoted command, what the runs recorded."""

from __future__ import annotations

from pathlib import Path

from iarmem import __version__
from iarmem.report.discover import Run
from iarmem.report.provenance import command_text, environment, recorded, settings_hash


def test_settings_hash_ignores_key_order_and_sees_values() -> None:
    a = settings_hash({"top": 10.0, "mode": "in", "grid": {"x": [1, 2]}})
    assert a == settings_hash({"grid": {"x": [1, 2]}, "mode": "in", "top": 10.0}) and len(a) == 12
    assert a != settings_hash({"top": 5.0, "mode": "in", "grid": {"x": [1, 2]}})


def test_command_is_shell_quoted() -> None:
    assert command_text(["iarmem", "report", "my runs/a", "--title", "it's"]) == \
        "iarmem report 'my runs/a' --title 'it'\"'\"'s'"
    assert command_text(None) == ""


def test_environment_and_what_runs_recorded() -> None:
    env = environment()
    assert env["iarmem"] == __version__ and env["python"].count(".") == 2 and env["torch"]
    runs = [Run(Path("/a"), {"iarmem_version": "0.0.9", "environment": {"torch": "2.3"}}, "extract"),
            Run(Path("/b"), {"iarmem_version": __version__, "settings": {"device": "cuda"},
                             "summary": {"world_size": 8}}, "localize")]
    lines = recorded(runs)
    assert "0.0.9 (1 runs)" in lines[0] and "differs from this iarmem" in lines[0]
    assert "devices: cuda (1)" in lines and "processes per run (world size): 8 (1 runs)" in lines
    assert "torch: 2.3 (1)" in lines
    plain = recorded([Run(Path("/c"), {"iarmem_version": __version__}, "extract")])
    assert len(plain) == 2 and "not the python or torch version" in plain[1]
