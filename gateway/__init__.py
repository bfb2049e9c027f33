"""wsgate gateway: Spring Cloud Gateway routes, Consul discovery, a WebSocket byte tunnel."""
