"""The endpoint picker's config (kubernetes/overlays/inference-gateway/epp-config.yaml) is one
its v1.5.0 would load: checked against a JSON Schema written from its Go types' json tags
(tests/data/epp/, with the source commit and paths; the picker decodes strictly, so an unknown
key is an error there too), and every pluginRef names a declared plugin. No picker runs here.
Under a second."""

from __future__ import annotations

import copy
import json
from typing import Any

import jsonschema
import pytest
import yaml

from tests.conftest import ROOT
from tests.kubernetes.manifests import one, render

SCHEMA = ROOT / "tests" / "data" / "epp" / "endpointpickerconfig.v1.5.0.json"


def epp_config() -> dict[str, Any]:
    docs = render("inference-gateway")
    config: dict[str, Any] = yaml.safe_load(
        one(docs, "ConfigMap", "dx-epp-config")["data"]["epp.yaml"]
    )
    return config


def validate(config: dict[str, Any]) -> None:
    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft7Validator(schema).validate(config)
    names = {p.get("name", p["type"]) for p in config["plugins"]}
    refs = [r["pluginRef"] for prof in config["schedulingProfiles"] for r in prof["plugins"]]
    for source in config.get("dataLayer", {}).get("sources", []):
        refs.append(source["pluginRef"])
        refs += [e["pluginRef"] for e in source.get("extractors", [])]
    unknown = set(refs) - names
    if unknown:
        raise jsonschema.ValidationError(f"pluginRef to undeclared plugins: {sorted(unknown)}")


def test_picker_config_matches_its_types() -> None:
    config = epp_config()
    validate(config)
    # The picker reads its args from the Deployment: the config file is the ConfigMap's key.
    deployment = one(render("inference-gateway"), "Deployment", "dx-epp")
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--config-file") + 1] == "/config/epp.yaml"


@pytest.mark.parametrize(
    "mistake",
    [
        # The upstream guide's own example says `data:`; v1.5.0's type says dataLayer.
        lambda c: c.__setitem__("data", c.pop("dataLayer")),
        lambda c: c["plugins"][1]["parameters"]["engineConfigs"][0].__setitem__("kvUsage", "x"),
        lambda c: c["plugins"].append({"type": "no-such-scorer"}),
        lambda c: c["schedulingProfiles"][0]["plugins"].append({"pluginRef": "undeclared"}),
    ],
    ids=["data-not-dataLayer", "misspelt-spec", "unknown-plugin", "dangling-ref"],
)
def test_the_check_catches_mistakes(mistake: Any) -> None:
    config = copy.deepcopy(epp_config())
    mistake(config)
    with pytest.raises(jsonschema.ValidationError):
        validate(config)
