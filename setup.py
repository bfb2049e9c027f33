"""The optional native relay (gateway/_relay*.c, _relay.h); everything else is in pyproject.toml.

`optional=True`: without a C compiler the install still succeeds and the gateway relays tunnels in Python.
"""

import sys

from setuptools import Extension, setup

ext_modules = []
if sys.platform.startswith("linux"):  # epoll and eventfd
    sources = ["gateway/_relay.c", "gateway/_relay_thread.c", "gateway/_relay_dial.c", "gateway/_relay_index.c",
               "gateway/_relay_sockmap.c"]
    ext_modules.append(Extension("gateway._relay", sources, depends=["gateway/_relay.h"], optional=True,
                                 extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-missing-field-initializers"]))

setup(ext_modules=ext_modules)
