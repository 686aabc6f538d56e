"""The demo's stage plan: what each family runs, and that every stage's command line is one the CLI accepts."""

from __future__ import annotations

from pathlib import Path

from iarmem.cli import build_parser
from iarmem.commands.demo import DEMO_ORDINARY, DEMO_STEPS, family_stages


def test_the_first_family_gets_the_strong_attack_bench_and_repair_and_every_command_parses(tmp_path: Path) -> None:
    first = family_stages("var", tmp_path, 0, "cpu", sweep=True, extras=True)
    later = family_stages("rar", tmp_path, 0, "cpu", sweep=False, extras=False)
    names = [s.name for s in first]
    assert {"bench", "repair", "sweep"} <= set(names) and not {"bench", "repair", "sweep"} & {s.name for s in later}
    assert names.index("extract") < names.index("repair")  # the repair reads the strong attack's leak
    extract = next(s for s in first if s.name == "extract").argv
    assert "--strength" in extract and extract[extract.index("--strength") + 1] == "strong"
    assert "--strength" not in next(s for s in later if s.name == "extract").argv
    repair = next(s for s in first if s.name == "repair")
    assert repair.results == (0, 1) and all(s.results == (0,) for s in first if s.name != "repair")
    train = next(s for s in later if s.name == "train").argv
    assert train[train.index("--num-train") + 1] == str(DEMO_ORDINARY)
    assert train[train.index("--steps") + 1] == str(DEMO_STEPS["rar"][1])
    parser, _ = build_parser()
    for stage in first + later:
        args = parser.parse_args([*stage.argv, "--resume"])  # as run_stage calls it
        assert args.command == stage.argv[0] or getattr(args, "target", None), stage.name
