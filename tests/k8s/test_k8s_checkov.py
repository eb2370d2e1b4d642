"""checkov passes on every rendered overlay and on the Dockerfile, with the skips in
k8s/checkov.yaml (each one justified there). One checkov run for everything: it takes seconds
to start, and nothing is cached between runs."""

from __future__ import annotations

import json
import re
import subprocess

import yaml

from tests.conftest import ROOT
from tests.k8s.kube import CHECKOV, K8S, tool

CONFIG = K8S / "checkov.yaml"


def test_checkov_passes_on_the_rendered_overlays_and_the_dockerfile(rendered, tmp_path):
    checkov = tool(CHECKOV, "run `make k8s-tools` (make test and make k8s-validate do)")
    files = []
    for name, text in rendered.items():
        path = tmp_path / f"{name}.yaml"
        path.write_text(text)
        files += ["-f", str(path)]
    done = subprocess.run(
        [checkov, "--config-file", str(CONFIG), *files, "-f", str(ROOT / "Dockerfile"), "-o", "json"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )
    reports = json.loads(done.stdout)
    reports = reports if isinstance(reports, list) else [reports]
    by_framework = {r["check_type"]: r for r in reports}
    assert set(by_framework) == {"kubernetes", "dockerfile"}, (set(by_framework), done.stderr[-2000:])
    failed = [f"{c['check_id']} {c['resource']}: {c['check_name']}"
              for r in reports for c in r["results"]["failed_checks"]]
    assert not failed, "\n".join(failed)
    for name, report in by_framework.items():
        assert report["summary"]["passed"] > 20, (name, report["summary"])  # it did scan
    assert done.returncode == 0, done.stderr[-2000:]


def test_every_skipped_check_says_why():
    config = yaml.safe_load(CONFIG.read_text())
    lines = CONFIG.read_text().splitlines()
    for check in config["skip-check"]:
        at = next(i for i, line in enumerate(lines) if line.strip() == f"- {check}")
        assert lines[at - 1].strip().startswith("#"), f"{check}: no comment saying why it is skipped"
        assert re.fullmatch(r"CKV2?_[A-Z0-9]+_\d+", check), check
