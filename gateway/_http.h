/* gateway._http's shared definitions: the lane, its connections and what its two files share.
 *
 * _http.c is the Python type (see its comment for the design), _http_io.c the per-connection state machine,
 * _http_util.c buffers, descriptors, the upstream pool and response heads, _http_redis.c the rate limiter's Redis.
 */
#ifndef WSGATE_HTTP_H
#define WSGATE_HTTP_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "_scan.h"

#define LANE_READ_BYTES 65536
#define LANE_MAX_EVENTS 256
#define RESPONSE_HEAD_LIMIT (64 * 1024)   /* http.MAX_RESPONSE_HEAD_BYTES: a longer head goes back to Python */
#define POOL_PER_INSTANCE 32              /* http.UpstreamPool's max_idle_per_instance */
#define POOL_IDLE_MS 30000                /* and its idle_expiry_s */
/* What a WebSocket key is replaced with in the head `decide` sees (gateway/proxy/lane_upgrades.py's _MARK): the
 * same upgrade from any client then has the same head, and its decision is cached like any other. */
#define WS_KEY_MARK "wsgate-lane-key-0000000000=="
#define WS_KEY_MAX 64

/* What a connection is doing. */
enum { H_IDLE, H_LIMIT, H_UPSTREAM, H_BODY, H_CLOSE };  /* H_LIMIT: waiting for Redis's answer */

/* Why a connection goes back to Python (the kinds of `Lane.run()`'s hand-backs, see _http.c). */
enum { K_NEW, K_FORWARD, K_RESPONSE, K_TIMEOUT, K_CLOSED, K_HEAD_TIMEOUT, K_LINGER, K_LIMIT_TIMEOUT, K_UPGRADE };

/* What a descriptor is, by fd (epoll reports the fd; its owner is looked up here). */
enum { SLOT_FREE, SLOT_LISTEN, SLOT_TIMER, SLOT_CLIENT, SLOT_UPSTREAM, SLOT_POOL, SLOT_REDIS };

typedef struct {
    char *data;
    size_t len, cap;
} buf_t;

typedef struct hconn {
    int cfd, ufd;
    int state;
    int first;                  /* no request answered yet: a head timeout answers 408 (Python's rule) */
    int crd, cwr, urd, uwr;     /* edge-triggered readiness: set by epoll, cleared by EAGAIN */
    int cwatched;               /* cfd is in the epoll set (not yet while lane_accept takes a first look) */
    int ceof;
    int unread;                 /* a short read completed the head and reading stopped there (read_client) */
    int connecting, reused, retried, got_response_bytes;
    buf_t cin, cout, uin, req;  /* client input, client output pending, upstream input, request to send */
    size_t req_off;             /* how much of req the instance has taken */
    size_t head_used;           /* bytes of cin the request head (and leading CRLFs) takes */
    PyObject *remote;           /* the client's address (str) */
    PyObject *decision;         /* the current request's, from decide() (a tuple), or NULL */
    uint32_t ip;                /* the instance, network order */
    uint16_t port;
    size_t body_len;
    int keep_client, no_body;
    uint64_t connect_ms, response_ms;
    int status, upstream_keep;
    uint64_t remaining, nbytes;
    uint64_t deadline_ms;       /* 0: none */
    PyObject *limit;            /* the decision's rate limit (see _http_redis.c), or NULL */
    buf_t extra;                /* response header lines the lane adds (X-RateLimit-*) */
    double started;             /* CLOCK_MONOTONIC seconds (Python's time.monotonic()) when the head was complete */
    char wskey[WS_KEY_MAX];     /* the head's Sec-WebSocket-Key when decide saw WS_KEY_MARK instead */
    size_t wskey_len;           /* 0: the head went to decide as it came */
    struct hconn *prev, *next;
} hconn_t;

typedef struct {
    uint32_t ip;
    uint16_t port;
    int fd;
    uint64_t since_ms;
} pooled_t;

typedef struct {
    PyObject_HEAD
    int epfd, listenfd, timerfd;
    PyObject *decide;           /* decide(head: bytes, remote: str) -> tuple | None */
    /* The last IPv4 client's address and its text, given to the next connection from it: inet_ntop cost 1,700
     * instructions a connection, and decide's cache key hashes the same str object once, not a new one each time. */
    uint32_t last_ip;
    PyObject *last_remote;
    uint64_t head_timeout_ms;
    size_t max_head_bytes;
    int draining;
    Py_ssize_t max_connections; /* 0: no limit; beyond it (with `outside`) a new connection goes to Python */
    Py_ssize_t outside;         /* the worker's connections and tunnels that are not the lane's (set by Python) */
    unsigned char *slots;       /* SLOT_* by fd */
    hconn_t **owners;           /* the connection of a SLOT_CLIENT/SLOT_UPSTREAM fd, by fd */
    size_t nslots;
    hconn_t *live;
    size_t nlive;
    pooled_t *pool;
    size_t npool, pool_cap;
    PyObject *done;             /* list of finished requests, taken by run() */
    PyObject *handbacks;        /* list of connections going back to Python, taken by run() */
    uint64_t requests, handed_back, limited;
    uint64_t upgrades_dialed, upgrades_lost;  /* upgrades lane_upgrade dialed; of them, lost to memory */
    uint64_t trim_seen, trimmed, quiet_since_ms;  /* hand-backs at the last sweep and at the last malloc_trim */
    uint32_t redis_ip;          /* the rate limiter's Redis (network order); port 0: none */
    uint16_t redis_port;
    int redis_fd, redis_rd, redis_wr;
    buf_t rout, rin;            /* commands not sent yet, replies not parsed yet */
    size_t rout_off;
    hconn_t **rq;               /* ring of the connections waiting for a reply, in command order */
    size_t rq_head, rq_len, rq_cap;
    char scratch[LANE_READ_BYTES];
} Lane;

/* What decide answered for a request (read_decision). */
typedef struct {
    PyObject *token, *request, *limit, *plan;  /* plan: an upgrade's (gateway/_http_upgrade.c), or None */
    unsigned int ip, port;
    unsigned long long body_len, connect_ms, response_ms;
    int keep, no_body, upgrade;
} decision_t;

#pragma GCC visibility push(hidden)

/* _http_util.c */
uint64_t lane_now_ms(void);
double lane_now_s(void);
int buf_add(buf_t *b, const char *data, size_t len);
void buf_drop(buf_t *b, size_t n);
int lane_own(Lane *l, int fd, int kind, hconn_t *c);
int lane_watch(Lane *l, int fd, int kind, hconn_t *c);
int lane_watch_client(Lane *l, hconn_t *c);
void lane_accept(Lane *l);  /* the listening socket's new connections, each with a first look */
void lane_trim_after_burst(Lane *l, uint64_t now);  /* malloc_trim once a burst of hand-backs is over */
void lane_forget(Lane *l, int fd);
void close_fd(Lane *l, int fd);
int pool_take(Lane *l, uint32_t ip, uint16_t port);
void pool_put(Lane *l, hconn_t *c);
void pool_event(Lane *l, int fd);
void lane_pool_clear(Lane *l);
int take_response(hconn_t *c, size_t len);
int bare_cr_or_lf(const char *p, size_t len);
PyObject *head_for_decide(hconn_t *c, const char *head, size_t len);
PyObject *lane_remote(Lane *l, const struct sockaddr_storage *addr);
int read_decision(PyObject *decision, decision_t *d);
PyObject *tuple_of(PyObject **fields, Py_ssize_t n);
int flush_to(int fd, int *ready, buf_t *b, size_t *off);
int lane_dial(Lane *l, hconn_t *c);

/* _http_io.c */
void lane_event(Lane *l, int fd, uint32_t events);
void lane_sweep(Lane *l);
void lane_close_conn(Lane *l, hconn_t *c);
void lane_progress(Lane *l, hconn_t *c);
int lane_dispatch(Lane *l, hconn_t *c);
void hand_back(Lane *l, hconn_t *c, int kind, size_t cin_from);
void finish_request(Lane *l, hconn_t *c, int failed);
void lane_unlink(Lane *l, hconn_t *c);  /* forget a connection whose descriptor is no longer the lane's */

/* _http_upgrade.c */
int lane_upgrade(Lane *l, hconn_t *c, PyObject *holder, PyObject *token);  /* 0: dialed, c is gone */

/* _http_redis.c */
int redis_submit(Lane *l, hconn_t *c, const char *before, size_t before_len, const char *after, size_t after_len);
void redis_event(Lane *l, uint32_t events);
void redis_send_queued(Lane *l);  /* the turn's commands, at its end */
void redis_forget_conn(Lane *l, hconn_t *c);
void redis_close(Lane *l);
void lane_limited(Lane *l, hconn_t *c, int allowed, long long tokens);

#pragma GCC visibility pop

#endif
