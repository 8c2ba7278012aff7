"""Every deployment in infra/prefect/prefect.yaml points at a real Prefect flow."""

from __future__ import annotations

import importlib

import yaml
from prefect import Flow

from tests.conftest import REPO


def test_deployment_entrypoints_are_flows():
    spec = yaml.safe_load((REPO / "infra" / "prefect" / "prefect.yaml").read_text())
    names = set()
    for deployment in spec["deployments"]:
        path, attr = deployment["entrypoint"].split(":")
        module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
        target = getattr(module, attr)
        assert isinstance(target, Flow), deployment["name"]
        names.add(target.name)
    assert {"ingest", "train_rm", "retrieve", "evaluate"} <= names
