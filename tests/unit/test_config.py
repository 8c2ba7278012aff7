import pytest

from synpref_core.config import ConfigError, IngestConfig, config_hash, load_config


def test_yaml_config_loads_and_unknown_keys_fail_naming_the_field(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text("sources:\n  - format: hh-rlhf\n    paths: [a.jsonl]\nout: /tmp/x\n")
    config = load_config(good, IngestConfig)
    assert config.sources[0].format == "hh-rlhf" and config.decontamination.ngram == 13

    bad = tmp_path / "bad.yaml"
    bad.write_text("sources:\n  - format: hh-rlhf\n    paths: [a]\n    stauts: gold\n")
    with pytest.raises(ConfigError, match=r"(?s)bad\.yaml.*sources\.0\.stauts"):
        load_config(bad, IngestConfig)
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("sources:\n  - format: csv\n    paths: [a]\n")
    with pytest.raises(ConfigError, match=r"sources\.0\.format"):
        load_config(wrong, IngestConfig)


def test_config_hash_tracks_content():
    a = IngestConfig.model_validate({"sources": [{"format": "pairs", "paths": ["x"]}]})
    b = IngestConfig.model_validate({"sources": [{"format": "pairs", "paths": ["x"]}]})
    c = IngestConfig.model_validate({"sources": [{"format": "pairs", "paths": ["y"]}]})
    assert config_hash(a) == config_hash(b) != config_hash(c)
