"""Package layout only (metadata is in pyproject.toml).

The repo keeps its top-level folders, but everything installs under the one
``clawmesh`` import name, so nothing generic (``services``, ``shared``) lands in
site-packages:

    protos/clawmesh  -> clawmesh            (the generated stubs)
    services/        -> clawmesh.services
    shared/          -> clawmesh.shared
    launcher/        -> clawmesh.launcher
    loadtest/        -> clawmesh.loadtest
"""

from setuptools import find_packages, setup

ROOTS = {
    "clawmesh": "protos/clawmesh",
    "clawmesh.services": "services",
    "clawmesh.shared": "shared",
    "clawmesh.launcher": "launcher",
    "clawmesh.loadtest": "loadtest",
}

packages: list[str] = []
for name, path in ROOTS.items():
    packages += [name, *(f"{name}.{sub}" for sub in find_packages(path))]

setup(packages=packages, package_dir=ROOTS)
