"""The README's flow config example is a valid config (docs that cannot rot silently)."""

import re
from pathlib import Path

import yaml

from flows.ingest import IngestFlowConfig

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_yaml_example_validates():
    blocks = re.findall(r"```yaml\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "README has no yaml example"
    config = IngestFlowConfig.model_validate(yaml.safe_load(blocks[0]))
    assert config.ingest.sources[0].fields.prompt == "question"
    assert config.runtime.executor.kind == "ray"
