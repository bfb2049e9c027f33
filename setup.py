"""The optional native relay (gateway/_relay*.c, _relay.h) and HTTP lane (gateway/_http*.c, _http.h); everything
else is in pyproject.toml.

`optional=True`: without a C compiler the install still succeeds and the gateway relays tunnels and proxies HTTP in
Python.
"""

import sys

from setuptools import Extension, setup

ext_modules = []
if sys.platform.startswith("linux"):  # epoll and eventfd
    sources = ["gateway/_relay.c", "gateway/_relay_thread.c", "gateway/_relay_dial.c", "gateway/_relay_index.c",
               "gateway/_relay_sockmap.c", "gateway/_relay_bpf.c", "gateway/_relay_events.c"]
    ext_modules.append(Extension("gateway._relay", sources,
                                 depends=["gateway/_relay.h", "gateway/_relay_api.h", "gateway/_scan.h"],
                                 optional=True,
                                 extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-missing-field-initializers"]))
    http_sources = ["gateway/_http.c", "gateway/_http_io.c", "gateway/_http_util.c", "gateway/_http_redis.c",
                    "gateway/_http_upgrade.c"]
    ext_modules.append(Extension("gateway._http", http_sources,
                                 depends=["gateway/_http.h", "gateway/_relay_api.h", "gateway/_scan.h"],
                                 optional=True,
                                 extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-missing-field-initializers"]))

setup(ext_modules=ext_modules)
