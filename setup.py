"""Package discovery; every other build setting is in pyproject.toml.

``[tool.setuptools.packages.find]`` cannot add a package whose source lives elsewhere, so the
discovery is here: every package under vlseg/, prompts/ and retrieval/ (found as before, namespace
directories included), plus ``vlseg._configs`` built from the top-level ``configs/`` directory, so
that the model configs (configs/models/*.yaml) ship in the wheel without a second copy in git.
"""

from setuptools import find_namespace_packages, setup

setup(
    packages=[
        *find_namespace_packages(include=["vlseg*", "prompts*", "retrieval*"]),
        "vlseg._configs",
        "vlseg._configs.models",  # data only (*.yaml); train/, tune/, ... stay in the checkout
    ],
    package_dir={"vlseg._configs": "configs"},
)
