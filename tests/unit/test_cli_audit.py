"""``synpref audit-stage2``: bad input is one line on stderr and exit 2 before any work (the real
command in a subprocess), and the printed table carries the paper's figures with what they are."""

from __future__ import annotations

import pytest

from synpref_core.cli_audit import PAPER_NOTE, print_audit
from synpref_core.curation.audit import audit_table
from tests.unit.test_audit import OUTCOMES, outcome_tables
from tests.unit.test_cli_errors import assert_one_line_error, synpref


@pytest.mark.parametrize(
    ("args", "config", "names"),
    [
        (["--noise", "1.5"], None, ["--noise", "1.5"]),
        ([], "bogus: 1\n", ["bogus"]),
        ([], "audit_seed: -1\n", ["audit_seed"]),
        ([], "best_rm: {tmp}/no-such-rm\n", ["no-such-rm"]),
        (["--config", "{tmp}/missing.yaml"], None, ["missing.yaml"]),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, args, config, names):
    args = [a.format(tmp=tmp_path) for a in args]
    if config is not None:
        path = tmp_path / "stage2.yaml"
        path.write_text(config.format(tmp=tmp_path))
        args += ["--config", str(path)]
    assert_one_line_error(synpref("audit-stage2", *args, cwd=tmp_path), *names)


def test_the_table_shows_every_metric_beside_the_papers_figures(capsys):
    result = audit_table(*outcome_tables(OUTCOMES))
    report = {"noise": 0.2, "seed": 0, "curated": "CURATED", "counts": result.counts,
              "metrics": result.metrics}  # fmt: skip
    print_audit(report)
    out = capsys.readouterr().out
    assert "4 of 10 pairs flipped" in out
    for name in result.metrics:
        assert name in out
    assert "80.0%" in out and "86%" in out and "92%" in out
    assert "60.0%" in out  # kept_correct of a content-blind filter: the clean share
    assert " ".join(PAPER_NOTE.split()[:6]) in " ".join(out.split())
