"""Every deployment in infra/prefect/prefect.yaml points at a real Prefect flow, and the form the
Prefect UI draws from its parameter schema shows the flow's own defaults, accepts a change to one
field with the rest as shown, and names the field in a validation error."""

from __future__ import annotations

import importlib
import inspect
from typing import Any

import pytest
import yaml
from prefect import Flow
from prefect.exceptions import ParameterTypeError
from prefect.flows import load_flow_from_entrypoint
from prefect.utilities.callables import parameter_schema
from prefect.utilities.schema_tools import ValidationError, validate

from tests.conftest import REPO

SPEC = yaml.safe_load((REPO / "infra" / "prefect" / "prefect.yaml").read_text())
DEPLOYMENTS = {d["name"]: d for d in SPEC["deployments"]}


def test_deployment_entrypoints_are_flows():
    names = set()
    for deployment in SPEC["deployments"]:
        path, attr = deployment["entrypoint"].split(":")
        module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
        target = getattr(module, attr)
        assert isinstance(target, Flow), deployment["name"]
        names.add(target.name)
    assert {"ingest", "train_rm", "retrieve", "evaluate"} <= names


def _deployed(name: str, monkeypatch: pytest.MonkeyPatch) -> tuple[Flow, dict[str, Any]]:
    """The flow and its parameter schema exactly as `prefect deploy` builds them (run from the
    repository root): load_flow_from_entrypoint, then parameter_schema."""
    monkeypatch.chdir(REPO)
    flow = load_flow_from_entrypoint(DEPLOYMENTS[name]["entrypoint"])
    return flow, parameter_schema(flow).model_dump()


def _signature_default(flow: Flow) -> Any:
    """The flow's own default config: what it runs with when given nothing."""
    return inspect.signature(flow.fn).parameters["config"].default


def _resolve(node: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    ref = node.get("$ref")
    return schema["definitions"][ref.rsplit("/", 1)[1]] if ref else node


def _form_defaults(node: dict[str, Any], schema: dict[str, Any]) -> Any:
    """What a form shows for ``node`` from the schema alone: its default, else its model's
    properties' defaults (what the UI falls back to, and where `default_factory` showed nothing)."""
    if "default" in node:
        return node["default"]
    node = _resolve(node, schema)
    assert "properties" in node, f"{node.get('title')}: no default to show"
    return {key: _form_defaults(prop, schema) for key, prop in node["properties"].items()}


@pytest.mark.parametrize("name", sorted(DEPLOYMENTS))
def test_form_shows_the_flows_defaults(name, monkeypatch):
    flow, schema = _deployed(name, monkeypatch)
    default = _signature_default(flow)
    assert default is not None, "the config parameter has a real default, not None"
    expected = default.model_dump(mode="json")

    prop = schema["properties"]["config"]
    assert schema["required"] == [] and "anyOf" not in prop, "config is the model, not Optional"
    assert prop["default"] == expected
    # field by field too: no field of the flow config leaves its default to a default_factory,
    # which never reaches the schema (the form showed [] for sources and 'local' for the executor)
    fields = _resolve(prop, schema)["properties"]
    assert {key: _form_defaults(field, schema) for key, field in fields.items()} == expected
    assert expected["runtime"]["executor"]["kind"] == "ray"

    # the form's values as shown are valid, for the server and for the flow
    validate({"config": prop["default"]}, schema, raise_on_error=True)
    parsed = flow.validate_parameters({"config": prop["default"]})["config"]
    assert parsed.model_dump(mode="json") == expected

    # every model and the config parameter say what they are
    assert prop.get("description")
    for title, definition in schema["definitions"].items():
        assert definition.get("description"), f"{title} has no description"


def test_train_rm_form_trains_on_80_and_picks_on_the_other_20(monkeypatch):
    _, schema = _deployed("train-rm", monkeypatch)
    shown = schema["properties"]["config"]["default"]
    assert shown["train_on"]["split"] == [0.0, 0.8]
    assert shown["gold_on"]["split"] == [0.8, 1.0]
    assert shown["train_on"]["sources"] == shown["gold_on"]["sources"] == ["hh-rlhf-harmless"]
    assert shown["benchmarks"] and shown["ingest"]["sources"]


def _changed(name: str, monkeypatch: pytest.MonkeyPatch, **update: Any) -> tuple[Flow, Any]:
    flow, schema = _deployed(name, monkeypatch)
    values = {**schema["properties"]["config"]["default"], **update}
    validate({"config": values}, schema, raise_on_error=True)
    return flow, flow.validate_parameters({"config": values})["config"]


def test_one_changed_field_validates_and_round_trips(monkeypatch):
    flow, config = _changed("retrieve", monkeypatch, round=3)
    expected = _signature_default(flow).model_copy(update={"round": 3})
    assert config.model_dump(mode="json") == expected.model_dump(mode="json")


@pytest.mark.parametrize("name", ["train-rm", "retrieve"])
def test_pairs_set_with_the_rest_as_shown_is_accepted(name, monkeypatch):
    flow, config = _changed(name, monkeypatch, pairs="/data/ingest/manifest.json")
    assert config.pairs == "/data/ingest/manifest.json"
    assert config.ingest.model_dump() == _signature_default(flow).ingest.model_dump()


def test_validation_errors_name_the_field(monkeypatch):
    flow, schema = _deployed("retrieve", monkeypatch)
    shown = schema["properties"]["config"]["default"]
    bad = {**shown, "round": 0}
    with pytest.raises(ValidationError, match=r"'config\.round'.*less than the minimum of 1"):
        validate({"config": bad}, schema, raise_on_error=True)
    with pytest.raises(ParameterTypeError, match=r"config\.round"):
        flow.validate_parameters({"config": bad})

    nested = {**shown, "runtime": {**shown["runtime"], "executor": {"kind": "spark"}}}
    with pytest.raises(ValidationError, match=r"'config\.runtime\.executor\.kind'"):
        validate({"config": nested}, schema, raise_on_error=True)
