"""Installed as ``vlseg._configs`` (see setup.py): the named model variants in ``models/*.yaml``
ship in the wheel from here, so that ``vlseg.list_models()`` works outside a source checkout."""
