"""Shared test setup: offline, quiet services, and small real inputs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "data"


@pytest.fixture(scope="session")
def chromium() -> tuple[str, str]:
    """Paths of Debian's chromium and its chromedriver, installed with apt-get when missing."""
    from tests.browser import install_chromium

    return install_chromium()


@pytest.fixture(scope="session")
def ray_local():
    """A real local Ray with 2 CPUs for the whole session, started as the flows start it
    (loopback only, token auth on)."""
    import ray

    from synpref_core.config import ExecutorConfig
    from synpref_core.executors import ensure_ray

    ensure_ray(ExecutorConfig(kind="ray", ray_num_cpus=2))
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def hh_embedded(tmp_path_factory) -> tuple[str, str]:
    """(pairs dir, embeddings dir) of the first RECORDS hh-rlhf records, embedded by the
    bundled MiniLM: once per session for every test that needs real embeddings."""
    import gzip

    from synpref_core.config import IngestConfig, SourceSpec
    from synpref_core.executors import run
    from synpref_core.ingest.pipeline import run_ingest
    from synpref_core.retrieval.embed import EmbedStage
    from tests.embed_helpers import RECORDS, embed_config
    from tests.ingest_helpers import HH

    root = tmp_path_factory.mktemp("hh-embedded")
    source = root / "hh.jsonl"
    source.write_bytes(b"".join(gzip.decompress(HH.read_bytes()).splitlines(True)[:RECORDS]))
    ingest = IngestConfig(
        sources=[SourceSpec(format="hh-rlhf", paths=[str(source)])],
        out=str(root / "pairs"),
        shard_bytes=2**16,
    )
    pairs = run_ingest(ingest, progress=False).rsplit("/", 1)[0]
    run(EmbedStage(embed_config(pairs, str(root / "embeddings"))), progress=False)
    return pairs, str(root / "embeddings")


@pytest.fixture(scope="module")
def pairs_dir(tmp_path_factory) -> str:
    """Real pairs in 3 shards (~230 pairs): OffsetBias and two LLMBar subsets."""
    from synpref_core.config import IngestConfig, SourceSpec
    from synpref_core.ingest.pipeline import run_ingest

    llmbar = DATA / "llmbar" / "Dataset" / "LLMBar"
    config = IngestConfig(
        sources=[
            SourceSpec(format="offsetbias", paths=[str(DATA / "offsetbias")]),
            SourceSpec(
                format="llmbar",
                paths=[str(llmbar / "Natural"), str(llmbar / "Adversarial" / "GPTOut")],
            ),
        ],
        out=str(tmp_path_factory.mktemp("pairs") / "ingest"),
    )
    out = run_ingest(config, progress=False)
    return out.rsplit("/", 1)[0]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> str:
    """A tiny real reward model (2-layer BERT, random weights) in its own directory."""
    from tests.rm_helpers import tiny_model_dir

    return str(tiny_model_dir(tmp_path_factory.mktemp("rm")))
