"""Benchmarks: relay vs nginx, fan-out vs python-socketio, soak. Run with `python -m bench.<name>`."""
