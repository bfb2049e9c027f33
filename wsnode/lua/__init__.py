"""The Redis Lua scripts, one `<name>.lua` file each beside this module (package data of the wheel).

A script is read once, when the module that runs it is imported; redis-py then sends it by its SHA1.
"""

from __future__ import annotations

from importlib.resources import files


def source(name: str) -> str:
    """The text of `wsnode/lua/<name>.lua`."""
    return files(__name__).joinpath(f"{name}.lua").read_text(encoding="utf-8")
