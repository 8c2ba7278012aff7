"""Bad Stage 2 inputs fail at start with one line naming what and where: a D_wild stage that is
not pairs, an RM directory that is not a one-output reward model, a gold set too small to train
a gold RM on; and `python -m flows.stage2` prints that line and exits 2, without a traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from synpref_core.config import RuntimeConfig, TrackingConfig
from synpref_core.rm.model import NotARewardModelError
from synpref_core.stages import StageError
from tests.conftest import REPO
from tests.rm_helpers import tiny_model_dir


def config(tmp_path, **update):
    from flows.stage2 import Stage2FlowConfig

    tracking = TrackingConfig(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    base = Stage2FlowConfig(out=str(tmp_path / "s2"), runtime=RuntimeConfig(tracking=tracking))
    return base.model_copy(update=update)


def two_label_classifier(directory):
    from transformers import BertForSequenceClassification

    from synpref_core.rm.model import load_tokenizer
    from tests.rm_helpers import tiny_bert_config

    tokenizer = load_tokenizer()
    model = BertForSequenceClassification(tiny_bert_config(tokenizer, num_labels=2))
    model.save_pretrained(directory)
    return str(directory)


def test_an_rm_that_is_not_one_output_is_refused(tmp_path):
    from flows.stage2 import preflight

    bad = two_label_classifier(tmp_path / "two-labels")
    with pytest.raises(NotARewardModelError, match=r"two-labels: not a one-output reward model"):
        preflight(config(tmp_path, best_rm=bad))
    with pytest.raises(NotARewardModelError, match=r"nowhere: not a reward model"):
        preflight(config(tmp_path, gold_rm=str(tmp_path / "nowhere")))


def test_a_wild_stage_without_pair_columns_is_refused(tmp_path, hh_embedded):
    from flows.stage2 import preflight

    embeddings = hh_embedded[1]
    with pytest.raises(StageError, match="D_wild must be a pairs stage"):
        preflight(config(tmp_path, wild=embeddings))


def test_a_gold_set_too_small_to_train_on_is_refused(tmp_path, pairs_dir):
    from flows.stage2 import resolve_rms

    best = str(tiny_model_dir(tmp_path / "best"))
    cfg = config(tmp_path, best_rm=best, min_gold_pairs=10**6)
    with pytest.raises(StageError, match=r"gold pairs, fewer than min_gold_pairs=1000000"):
        resolve_rms(cfg, pairs_dir)


def test_the_command_prints_one_line_and_exits_2(tmp_path):
    path = tmp_path / "stage2.yaml"
    path.write_text(yaml.safe_dump({"best_rm": str(tmp_path / "missing"), "out": str(tmp_path)}))
    done = subprocess.run(
        [sys.executable, "-m", "flows.stage2", "--config", str(path)],
        capture_output=True, text=True, cwd=REPO, timeout=300,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [f"error: {tmp_path / 'missing'}: not a reward "
                                                "model (no config.json)"]  # fmt: skip
    assert "Traceback" not in done.stderr + done.stdout
