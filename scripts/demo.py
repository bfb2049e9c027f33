"""`make demo`: Redis (the running one or a new one), the dev Consul agent, two nodes, the gateway and the demo page.

Prints the URLs (the demo page first), a demo user's token and a ready-to-paste push command; Ctrl-C stops everything
it started.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

import jwt

from harness import ProcessGroup, free_port, http_status, provide_redis

DEMO_SECRET = "wsgate-demo-secret-not-for-production"  # >= 32 bytes, as HS256 wants
DEMO_API_KEY = "wsgate-demo-key"
DEMO_MANAGEMENT_KEY = "wsgate-demo-management-key"
DEMO_AMQP_URL = os.environ.get("WSGATE_DEMO_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
DEMO_AMQP_QUEUE = "wsgate-demo.push"


def _amqp_answers(url: str) -> bool:
    """True when something listens where the RabbitMQ URL points (the nodes then consume the demo queue)."""
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 5672), timeout=1):
            return True
    except OSError:
        return False


def _port(preferred: int) -> int:
    """`preferred` when it is free, else any free port."""
    import socket

    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", preferred))
            return preferred
        except OSError:
            return free_port()


def mint_token(user: str, *, ttl_s: int = 3600) -> str:
    """A short-lived HS256 token for a demo user."""
    now = int(time.time())
    return jwt.encode({"sub": user, "iat": now, "exp": now + ttl_s}, DEMO_SECRET, algorithm="HS256")


def _amqp_consuming(health_url: str, *, timeout_s: float = 20.0) -> bool:
    """True once a node's detailed /health (read with the management key) shows its RabbitMQ consumer UP."""
    import json
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            request = urllib.request.Request(health_url, headers={"Authorization": f"Bearer {DEMO_MANAGEMENT_KEY}"})
            with urllib.request.urlopen(request, timeout=2) as response:
                if json.loads(response.read()).get("amqp", {}).get("status") == "UP":
                    return True
        except (OSError, ValueError):
            pass
        time.sleep(0.1)  # polling a status, with a deadline
    return False


def _amqp_line(enabled: bool) -> str:
    if not enabled:
        return f"(no RabbitMQ at {DEMO_AMQP_URL}: pushes through RabbitMQ are off; scripts/ensure-services starts one)"
    return f"""Push to alice through RabbitMQ (queue {DEMO_AMQP_QUEUE}):
  {sys.executable} -m scripts.amqp_push --url {DEMO_AMQP_URL} --queue {DEMO_AMQP_QUEUE} \\
       '{{"to":{{"users":["alice"]}},"module":"notices","event":"created","data":{{"text":"hello via RabbitMQ"}}}}'"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--gateway-port", type=int, default=8080)
    parser.add_argument("--demo-port", type=int, default=8090, help="the demo page's port")
    parser.add_argument("--check", action="store_true", help="start everything, verify it answers, then stop")
    args = parser.parse_args(argv)

    log_dir = Path(tempfile.mkdtemp(prefix="wsgate-demo-"))
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with provide_redis(log_dir) as (redis_info, _):
        group = ProcessGroup(log_dir)
        try:
            consul_port = _port(8500)
            consul = group.python("devconsul", "devconsul", "--port", str(consul_port))
            consul.wait_http_ready(f"http://127.0.0.1:{consul_port}/v1/status/leader")
            demo_port = _port(args.demo_port)
            node_env = {
                "REDIS_URL": redis_info.url,
                "CONSUL_HTTP_ADDR": f"127.0.0.1:{consul_port}",
                "WSNODE_JWT_SECRET": DEMO_SECRET,
                "WSNODE_API_KEY": DEMO_API_KEY,
                "WSNODE_MANAGEMENT_KEY": DEMO_MANAGEMENT_KEY,  # the admin page reads the nodes with it
                "WSNODE_REDIS_PREFIX": "wsgate-demo:",
                # The page is served by the demo server, so its WebSocket's Origin is that server's.
                "WSNODE_ALLOWED_ORIGINS": f"http://127.0.0.1:{demo_port},http://localhost:{demo_port}",
            }
            amqp = _amqp_answers(DEMO_AMQP_URL)
            if amqp:  # the nodes also take pushes from RabbitMQ
                node_env.update({"WSNODE_AMQP_URL": DEMO_AMQP_URL, "WSNODE_AMQP_QUEUE": DEMO_AMQP_QUEUE})
            node_health = []
            for name in ("node-a", "node-b"):
                port = free_port()
                node = group.python(name, "wsnode", "--host", "127.0.0.1", "--port", str(port),
                                    "--node-id", name, env=node_env)
                node.wait_http_ready(f"http://127.0.0.1:{port}/health")
                node_health.append(f"http://127.0.0.1:{port}/health")
            gw_port = _port(args.gateway_port)
            gateway = group.python("gateway", "gateway", "--config", "routes.yaml", "--host", "127.0.0.1",
                                   "--port", str(gw_port),
                                   "--workers", "1", env={"CONSUL_HTTP_ADDR": f"127.0.0.1:{consul_port}",
                                                          "WSGATE_NODE_MANAGEMENT_KEY": DEMO_MANAGEMENT_KEY})
            gateway.wait_http_ready(f"http://127.0.0.1:{gw_port}/actuator/health")
            base = f"http://127.0.0.1:{gw_port}"
            demo = group.python("demo", "demo.server", "--host", "127.0.0.1", "--port", str(demo_port),
                                "--secret", DEMO_SECRET, "--gateway", base, "--api-key", DEMO_API_KEY)
            demo_url = f"http://127.0.0.1:{demo_port}/"
            demo.wait_http_ready(f"{demo_url}health")
            token = mint_token("alice")
            print(f"""
wsgate demo is up (logs in {log_dir})
  demo page:      {demo_url}   (as alice: {demo_url}?user=alice; open it twice to see two tabs in sync)
  admin page:     {base}/actuator/admin   (no token needed: the demo gateway listens on loopback only)
  routes (SCG):   {base}/actuator/gateway/routes
  Consul (dev):   http://127.0.0.1:{consul_port}/v1/health/service/ws-service?passing
  Redis:          {redis_info.url} (keys under wsgate-demo:)
  WebSocket:      ws://127.0.0.1:{gw_port}/ws-svc/websocket?token={token}
Push to alice:
  curl -s -X POST {base}/ws-svc/api/v1/push -H 'Authorization: Bearer {DEMO_API_KEY}' \\
       -H 'Content-Type: application/json' \\
       -d '{{"to":{{"users":["alice"]}},"module":"notices","event":"created","data":{{"text":"hello"}}}}'
{_amqp_line(amqp)}
Ctrl-C stops everything.""", flush=True)
            if args.check:
                # The page's own pieces: its config, and the client script the nodes serve through the gateway.
                for url in (f"{demo_url}config.json", f"{base}/ws-svc/static/wsgate.js"):
                    status = http_status(url)
                    if status != 200:
                        print(f"check failed: {url} answered {status}", file=sys.stderr)
                        return 1
                if amqp and not all(_amqp_consuming(url) for url in node_health):
                    print(f"check failed: the nodes do not consume {DEMO_AMQP_QUEUE}", file=sys.stderr)
                    return 1
            else:
                while not stop.is_set() and all(p.alive() for p in group.processes):
                    stop.wait(0.5)
                dead = [p.name for p in group.processes if not p.alive()]
                if dead:
                    print(f"stopped: {', '.join(dead)} exited; logs in {log_dir}", file=sys.stderr)
                    return 1
            return 0
        finally:
            group.stop_all()


if __name__ == "__main__":
    os.chdir(Path(__file__).resolve().parent.parent)
    sys.exit(main())
