# The two commands of the README: `make demo` and `make test`. Both build the virtual environment first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv test demo lint bench clean

venv: $(STAMP)

# setup.py builds the native relay (gateway/_relay*.c) and HTTP lane (gateway/_http*.c) in place: a change to it reinstalls.
$(STAMP): pyproject.toml setup.py gateway/_relay.c gateway/_relay_thread.c gateway/_relay_dial.c gateway/_relay_index.c gateway/_relay_sockmap.c gateway/_relay_bpf.c gateway/_relay_events.c gateway/_relay.h \
		gateway/_http.c gateway/_http_io.c gateway/_http_util.c gateway/_http_redis.c gateway/_http_upgrade.c gateway/_http.h \
		gateway/_relay_api.h gateway/_scan.h
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

# The test suite starts its own Redis when none answers at $$REDIS_URL / 127.0.0.1:6379; it only needs the binary.
# RabbitMQ, PostgreSQL and MariaDB (broker and outbox tests) are started when they do not answer.
test: venv
	scripts/ensure-redis-server
	scripts/ensure-services
	scripts/ensure-chromium
	$(PY) -m pytest $(PYTEST_ARGS)

demo: venv
	scripts/ensure-redis-server
	$(PY) -m scripts.demo

lint: venv
	$(VENV)/bin/ruff check gateway wsnode devconsul demo harness tests bench scripts setup.py
	$(VENV)/bin/mypy

bench: venv
	$(PY) -m pip install -q -e '.[test,bench]'
	$(PY) -m bench

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
