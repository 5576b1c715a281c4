"""``lafs pipeline`` checks its parameters before anything runs: a named configuration, or sources and sets."""

from __future__ import annotations

from typer.testing import CliRunner

from lafs_cli.main import app
from lafs_cli.pipeline import eval_set


def test_eval_sets_of_the_command_line() -> None:
    assert eval_set("lfw-v1") == {"data": "lfw-v1"}
    assert eval_set("ijb:/data/IJBC") == {"data": "/data/IJBC", "kind": "ijb"}


def test_unknown_configuration_and_missing_sources_are_one_line_errors() -> None:
    unknown = CliRunner().invoke(app, ["pipeline", "no-such-protocol"])
    assert unknown.exit_code != 0 and "unknown pipeline configuration 'no-such-protocol'" in str(unknown.exception)
    partial = CliRunner().invoke(app, ["pipeline", "--labelled", "att"])
    assert partial.exit_code != 0
    message = str(partial.exception)
    assert "invalid pipeline parameters" in message and "unlabelled" in message and "eval_sets" in message
