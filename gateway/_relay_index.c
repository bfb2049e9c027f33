/* gateway._relay: the relay thread's index of live tunnels by id, so that a close or abort command finds its
 * tunnel in O(1) (a walk of the live list made draining N tunnels cost O(N^2)).
 *
 * Open addressing with linear probing; deletion shifts the following entries back (no tombstones), and the table
 * doubles at half full, so a lookup examines about 1.5 slots on average. Owned by the relay thread, like the live
 * list it mirrors. */
#include "_relay.h"

static size_t home_slot(uint64_t id, size_t mask) {
    /* Fibonacci hashing: consecutive ids (the common case) spread over the table. */
    return (size_t)((id * 0x9E3779B97F4A7C15ull) >> 29) & mask;
}

static int index_grow(Relay *r) {
    size_t cap = r->index_cap ? r->index_cap * 2 : 64;
    tunnel_t **slots = calloc(cap, sizeof(tunnel_t *));
    if (slots == NULL) return -1;
    for (size_t k = 0; k < r->index_cap; k++) {
        tunnel_t *t = r->index[k];
        if (t == NULL) continue;
        size_t i = home_slot(t->id, cap - 1);
        while (slots[i] != NULL) i = (i + 1) & (cap - 1);
        slots[i] = t;
    }
    free(r->index);
    r->index = slots;
    r->index_cap = cap;
    return 0;
}

int index_put(Relay *r, tunnel_t *t) {
    if ((r->index_count + 1) * 2 > r->index_cap && index_grow(r) != 0) return -1;
    size_t mask = r->index_cap - 1, i = home_slot(t->id, mask);
    while (r->index[i] != NULL) i = (i + 1) & mask;
    r->index[i] = t;
    r->index_count++;
    return 0;
}

/* The slot holding `id`, or -1. */
static ssize_t index_slot(Relay *r, uint64_t id) {
    if (r->index_cap == 0) return -1;
    size_t mask = r->index_cap - 1, i = home_slot(id, mask);
    r->lookups++;
    for (;;) {
        r->probes++;
        tunnel_t *t = r->index[i];
        if (t == NULL) return -1;
        if (t->id == id) return (ssize_t)i;
        i = (i + 1) & mask;
    }
}

tunnel_t *index_get(Relay *r, uint64_t id) {
    ssize_t i = index_slot(r, id);
    return i < 0 ? NULL : r->index[i];
}

void index_del(Relay *r, uint64_t id) {
    ssize_t found = index_slot(r, id);
    if (found < 0) return;
    size_t mask = r->index_cap - 1, hole = (size_t)found, j = hole;
    r->index[hole] = NULL;
    r->index_count--;
    /* Move back every entry after the hole that could not be found any more across it. */
    for (;;) {
        j = (j + 1) & mask;
        tunnel_t *t = r->index[j];
        if (t == NULL) return;
        size_t home = home_slot(t->id, mask);
        /* It stays when its home lies cyclically in (hole, j]. */
        int stays = hole <= j ? (hole < home && home <= j) : (hole < home || home <= j);
        if (stays) continue;
        r->index[hole] = t;
        r->index[j] = NULL;
        hole = j;
    }
}
