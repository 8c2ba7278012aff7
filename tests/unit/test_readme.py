"""The README's flow config examples are valid configs (docs that cannot rot silently)."""

import re
from pathlib import Path

import yaml

from flows.ingest import IngestFlowConfig
from flows.retrieve import RetrieveFlowConfig
from flows.train_rm import TrainRMFlowConfig

README = Path(__file__).resolve().parents[2] / "README.md"


def _blocks() -> list[dict]:
    blocks = re.findall(r"```yaml\n(.*?)```", README.read_text(), flags=re.S)
    return [yaml.safe_load(block) for block in blocks]


def test_readme_yaml_examples_validate():
    ingest, train_rm, retrieve = _blocks()
    config = IngestFlowConfig.model_validate(ingest)
    assert config.ingest.sources[0].fields.prompt == "question"
    assert config.runtime.executor.kind == "ray"
    train = TrainRMFlowConfig.model_validate(train_rm)
    assert train.train_on.split == (0.0, 0.8) and train.gold_on.statuses == ["gold"]
    assert train.training.profile == "cpu" and train.benchmarks == []
    round_ = RetrieveFlowConfig.model_validate(retrieve)
    assert round_.round == 2 and round_.retrieval.filters == {"objectivity": "objective"}
    assert round_.store.ann.kind == "IVF_PQ"
