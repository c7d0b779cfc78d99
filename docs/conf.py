"""Sphinx configuration of boxloss' documentation.

Build (warnings are errors, as CI builds it; no network needed):

    python -m sphinx -W --keep-going -n -b html docs docs/_build/html
    python -m sphinx -W --keep-going -b doctest docs docs/_build/doctest

Sphinx rather than MkDocs: the docstrings are written in the Google style with reST roles and ``.. math::``
(napoleon reads them as they are), the libraries boxloss' users rely on (PyTorch, torchvision, kornia) publish
Sphinx inventories to link against, and its doctest builder runs the docstrings' examples. Pages are Markdown
(MyST), the API pages autodoc.
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import boxloss  # noqa: E402

project = "boxloss"
author = "the boxloss authors"
copyright = "2026, the boxloss authors"
release = boxloss.__version__
version = ".".join(release.split(".")[:2])

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.intersphinx",
    "sphinx.ext.doctest",
    "sphinx.ext.mathjax",
    "sphinx-mathjax-offline",  # MathJax 3 served from the built site: no CDN
]

source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
root_doc = "index"
exclude_patterns = ["_build", "_inventories", "README.md"]
myst_enable_extensions = ["dollarmath", "amsmath", "deflist"]
myst_heading_anchors = 3

html_theme = "furo"
html_title = f"boxloss {release}"
html_static_path = ["_static"]
html_favicon = "_static/favicon.svg"
html_show_sourcelink = False

# every reference must resolve: a broken one is a warning, and CI builds with -W
nitpicky = True
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_typehints_description_target = "documented"
autodoc_default_options = {"members": False}
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
napoleon_preprocess_types = False
# the docstrings' "Args:" types are descriptions such as ``Tensor[..., 4]``, not importable names: shown as
# written, not cross-referenced (the signature's annotations are)
napoleon_use_param = False

# Inventories of the projects linked to, shipped in docs/_inventories (docs/_inventories/make_inventories.py
# writes them): the build reads no network.
intersphinx_mapping = {
    "python": ("https://docs.python.org/3", os.path.join(HERE, "_inventories", "python.inv")),
    "torch": ("https://docs.pytorch.org/docs/stable", os.path.join(HERE, "_inventories", "torch.inv")),
    "torchvision": ("https://docs.pytorch.org/vision/stable", os.path.join(HERE, "_inventories", "torchvision.inv")),
}
intersphinx_timeout = 1

doctest_global_setup = """
import torch
import boxloss
torch.set_printoptions(precision=4)
"""

# the public modules and what every one of them must document
PUBLIC_MODULES = ["boxloss", "boxloss.detection", "boxloss.segmentation", "boxloss.integrations.ultralytics",
                  "boxloss.integrations.transformers", "boxloss.backends"]


def _public_names():
    for module_name in PUBLIC_MODULES:
        module = importlib.import_module(module_name)
        for name in getattr(module, "__all__", []):
            yield module_name, name, getattr(module, name)


def _check_public_api(app, env):
    """Every public name (``__all__`` of the public modules) has a docstring and is documented on an API page:
    a missing one is a warning, so an error under ``-W``."""
    from sphinx.util import logging

    log = logging.getLogger("boxloss.docs")
    documented = set(env.get_domain("py").objects)
    for module_name, name, obj in _public_names():
        if not (inspect.isfunction(obj) or inspect.isclass(obj)):
            continue
        if not inspect.getdoc(obj):
            log.warning(f"public name {module_name}.{name} has no docstring")
        if f"{module_name}.{name}" not in documented and not any(key.endswith("." + name) for key in documented):
            log.warning(f"public name {module_name}.{name} is not documented on any API page")
    return []


def setup(app):
    app.connect("env-check-consistency", _check_public_api)
