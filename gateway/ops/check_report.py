"""The route table `wsgate --check` prints: one line per route, in match order; pure."""

from __future__ import annotations

from gateway.config.model import GatewayConfig, format_upstream


def route_table(config: GatewayConfig) -> str:
    """Routes as `order  id  uri  predicates  filters`, then the default filters and the discovery locator."""
    rows = [("order", "id", "uri", "predicates", "filters")]
    for route in sorted(config.routes, key=lambda r: r.order):
        rows.append((
            str(route.order), route.id, format_upstream(route.uri),
            " && ".join(p.describe() for p in route.predicates) or "-",
            ", ".join(f.describe() for f in route.filters) or "-",
        ))  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False)) + "  " + row[4]
             for row in rows]
    if config.default_filters:
        lines.append("default-filters: " + ", ".join(f.describe() for f in config.default_filters))
    if config.locator is not None:
        lines.append("discovery.locator: a route per Consul service "
                     f"({config.locator.route_id_prefix}<service>, include: {config.locator.include_expression})")
    if config.profiles:
        lines.append("profiles: " + ", ".join(config.profiles))
    return "\n".join(line.rstrip() for line in lines)
