"""wsgate node: one WebSocket endpoint for every UI module, sessions in Redis, push to any user on any node."""
