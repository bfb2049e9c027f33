/* The relay's dial as the HTTP lane calls it, from C (gateway/_http_upgrade.c): one struct behind a capsule,
 * `gateway._relay._dial_api`, so an upgrade the lane can place on its own costs no Python call to start.
 *
 * `dial` is `Relay.dial_fast` without its Python arguments: connect to ip:port (IPv4, network order) without
 * blocking, send `request`, and let the relay thread read the answer; `client_fd` stays the caller's until the
 * 101 (as dial_fast's). It returns 0 with the tunnel's id in *id, or an errno value (the relay is stopped: EPIPE;
 * `relay` is not a Relay: EINVAL) with nothing started, no Python exception set and the client untouched. */
#ifndef WSGATE_RELAY_API_H
#define WSGATE_RELAY_API_H

#include <Python.h>
#include <stddef.h>
#include <stdint.h>

#define RELAY_API_CAPSULE "gateway._relay._dial_api"

typedef struct {
    int (*dial)(PyObject *relay, int client_fd, uint32_t ip, uint16_t port, const char *request, size_t len,
                uint64_t connect_ms, uint64_t response_ms, uint64_t idle_ms, uint64_t *id);
} relay_api_t;

#endif
