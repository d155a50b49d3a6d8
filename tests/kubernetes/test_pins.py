"""Versions are pinned in one place: kubernetes/README.md's table lists every image and every
custom API version the layouts render, and nothing the layouts do not use. Under a second."""

from __future__ import annotations

import re

from tests.kubernetes.manifests import CUSTOM, KUBERNETES, LAYOUTS, pod_templates, render


def pins_table() -> str:
    text = (KUBERNETES / "README.md").read_text()
    return text[text.index("## Pinned versions") :].split("\n## ")[0]


def test_every_rendered_image_and_api_is_in_the_pins_table() -> None:
    table = pins_table()
    listed_images = set(re.findall(r"`([a-z0-9./-]+:[A-Za-z0-9._-]+)`", table))
    images = set()
    apis = set()
    for layout in LAYOUTS:
        docs = render(layout)
        for _, template in pod_templates(docs):
            images |= {c["image"] for c in template["spec"]["containers"]}
        apis |= {d["apiVersion"] for d in docs if (d["apiVersion"], d["kind"]) in CUSTOM}
    assert images == listed_images, (images - listed_images, listed_images - images)
    for api in apis:
        assert f"`{api}`" in table, api
    assert {api for api, _ in CUSTOM} == apis
