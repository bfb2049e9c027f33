/* Line ends in HTTP heads, for gateway._http and gateway._relay.
 *
 * Why not memmem: glibc's sets up a two-way search per call, about 250 instructions to find the end of a header
 * line, and a handshake's head was searched line by line several times; memchr for the CR is vectorised.
 */
#ifndef WSGATE_SCAN_H
#define WSGATE_SCAN_H

#include <string.h>

/* The first CR LF in p[0, len), or NULL. */
static inline const char *find_crlf(const char *p, size_t len) {
    const char *end = p + len;
    while (p < end && (p = memchr(p, '\r', (size_t)(end - p))) != NULL) {
        if (end - p >= 2 && p[1] == '\n') return p;
        p++;
    }
    return NULL;
}

/* The first CR LF CR LF (a head's end) in p[0, len), or NULL. */
static inline const char *find_head_end(const char *p, size_t len) {
    const char *end = p + len;
    while (p < end && (p = memchr(p, '\r', (size_t)(end - p))) != NULL) {
        if (end - p >= 4 && memcmp(p, "\r\n\r\n", 4) == 0) return p;
        p++;
    }
    return NULL;
}

#endif
