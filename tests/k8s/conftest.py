"""Each overlay rendered once per test session (and dev with each optional component)."""

from __future__ import annotations

import pytest

from tests.k8s.kube import COMPONENTS, K8S, OVERLAYS, parse, render, render_with_component

VARIANTS = [*OVERLAYS, *(f"dev+{c}" for c in COMPONENTS)]


@pytest.fixture(scope="session")
def rendered(tmp_path_factory) -> dict[str, str]:
    """Rendered YAML of every variant: the overlays, and dev with each component."""
    out = {name: render(K8S / "overlays" / name) for name in OVERLAYS}
    for c in COMPONENTS:
        out[f"dev+{c}"] = render_with_component(c, tmp_path_factory.mktemp(c))
    return out


@pytest.fixture(scope="session")
def objects(rendered) -> dict[str, list[dict]]:
    return {name: parse(text) for name, text in rendered.items()}
