/* The native HTTP lane's helpers: buffers, descriptors, the upstream pool, response heads, memory (see _http.c). */
#include "_http.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

uint64_t lane_now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

double lane_now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int buf_reserve(buf_t *b, size_t more) {
    if (b->len + more <= b->cap) return 0;
    size_t cap = b->cap ? b->cap : 1024;
    while (cap < b->len + more) cap *= 2;
    char *data = realloc(b->data, cap);
    if (data == NULL) return -1;
    b->data = data;
    b->cap = cap;
    return 0;
}

int buf_add(buf_t *b, const char *data, size_t len) {
    if (len == 0) return 0;
    if (buf_reserve(b, len) != 0) return -1;
    memcpy(b->data + b->len, data, len);
    b->len += len;
    return 0;
}

void buf_drop(buf_t *b, size_t n) {
    if (n >= b->len) {
        b->len = 0;
        return;
    }
    memmove(b->data, b->data + n, b->len - n);
    b->len -= n;
}

/* The descriptor's kind and owner, without registering it in the epoll set (lane_watch does both). */
int lane_own(Lane *l, int fd, int kind, hconn_t *c) {
    if ((size_t)fd >= l->nslots) {
        size_t n = l->nslots ? l->nslots : 1024;
        while (n <= (size_t)fd) n *= 2;
        unsigned char *slots = realloc(l->slots, n);
        if (slots == NULL) return -1;
        l->slots = slots;
        hconn_t **owners = realloc(l->owners, n * sizeof(hconn_t *));
        if (owners == NULL) return -1;
        l->owners = owners;
        memset(l->slots + l->nslots, 0, n - l->nslots);
        memset(l->owners + l->nslots, 0, (n - l->nslots) * sizeof(hconn_t *));
        l->nslots = n;
    }
    l->slots[fd] = (unsigned char)kind;
    l->owners[fd] = c;
    return 0;
}

static int add_to_epoll(Lane *l, int fd, int kind) {
    int et = kind == SLOT_CLIENT || kind == SLOT_UPSTREAM || kind == SLOT_REDIS;
    struct epoll_event ev = {.events = et ? EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET : EPOLLIN, .data.fd = fd};
    return epoll_ctl(l->epfd, EPOLL_CTL_ADD, fd, &ev);
}

int lane_watch(Lane *l, int fd, int kind, hconn_t *c) {
    if (lane_own(l, fd, kind, c) != 0) return -1;
    if (add_to_epoll(l, fd, kind) == 0) return 0;
    l->slots[fd] = SLOT_FREE;
    l->owners[fd] = NULL;
    return -1;
}

/* A client connection the lane keeps after its first look (lane_accept): registered now, edge-triggered, which
 * reports what is ready already at once, so nothing that came meanwhile is missed. */
int lane_watch_client(Lane *l, hconn_t *c) {
    if (add_to_epoll(l, c->cfd, SLOT_CLIENT) != 0) return -1;
    c->cwatched = 1;
    return 0;
}

/* Take the listening socket's new connections (the event loop saw it readable: Lane.run(True)). */
void lane_accept(Lane *l) {
    for (;;) {
        struct sockaddr_storage addr;
        socklen_t len = sizeof(addr);
        int fd = accept4(l->listenfd, (struct sockaddr *)&addr, &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) return;  /* EAGAIN, or an error the next round sees again */
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        hconn_t *c = calloc(1, sizeof(hconn_t));
        PyObject *remote = lane_remote(l, &addr);
        if (c == NULL || remote == NULL || lane_own(l, fd, SLOT_CLIENT, c) != 0) {
            PyErr_Clear();
            Py_XDECREF(remote);
            free(c);
            close(fd);
            continue;
        }
        c->cfd = fd;
        c->ufd = -1;
        c->first = 1;
        c->remote = remote;
        c->state = H_IDLE;
        c->deadline_ms = lane_now_ms() + l->head_timeout_ms;
        c->next = l->live;
        if (l->live) l->live->prev = c;
        l->live = c;
        l->nlive++;
        if (l->max_connections > 0 && (Py_ssize_t)l->nlive + l->outside > l->max_connections) {
            hand_back(l, c, K_NEW, 0);  /* the Python path refuses it (503) */
            continue;
        }
        /* A first look before the connection enters the epoll set: a client usually sends its head right after
         * connecting, so it is often here already. An upgrade placed now (or a request answered now) then costs no
         * epoll_ctl pair and no second wake-up of the event loop; if nothing came, one recv said EAGAIN. */
        c->crd = c->cwr = 1;
        lane_progress(l, c);
        if (l->owners[fd] == c && !c->cwatched && lane_watch_client(l, c) != 0) lane_close_conn(l, c);
    }
}

void lane_forget(Lane *l, int fd) {
    if (fd < 0) return;
    /* A client never registered (its first head placed at accept) and the listening socket (the event loop's to
     * watch) have nothing to delete: a call saved. */
    int unwatched = (size_t)fd < l->nslots && ((l->slots[fd] == SLOT_CLIENT && l->owners[fd] != NULL
        && l->owners[fd]->cfd == fd && !l->owners[fd]->cwatched) || l->slots[fd] == SLOT_LISTEN);
    if (!unwatched) epoll_ctl(l->epfd, EPOLL_CTL_DEL, fd, NULL);
    if ((size_t)fd < l->nslots) {
        l->slots[fd] = SLOT_FREE;
        l->owners[fd] = NULL;
    }
}

void close_fd(Lane *l, int fd) {
    if (fd < 0) return;
    lane_forget(l, fd);
    close(fd);
}

/* A CR not followed by LF or an LF without its CR before the head's end: Python refuses it at once (400). */
int bare_cr_or_lf(const char *p, size_t len) {
    for (size_t k = 0; k < len; k++) {
        if (p[k] == '\n' && (k == 0 || p[k - 1] != '\r')) return 1;
        if (p[k] == '\r' && k + 1 < len && p[k + 1] != '\n') return 1;
    }
    return 0;
}

/* The value of a head's one Sec-WebSocket-Key line (1-64 base64 characters): 0 and where it is, or -1 when there is
 * none, more than one or another value (the head then goes to decide as it came). */
static int ws_key_at(const char *head, size_t len, size_t *at, size_t *vlen) {
    static const char name[] = "\r\nsec-websocket-key:";
    const size_t name_len = sizeof(name) - 1;
    const char *end = head + len, *p = head;
    int found = 0;
    while ((p = find_crlf(p, (size_t)(end - p))) != NULL) {
        if ((size_t)(end - p) >= name_len && strncasecmp(p, name, name_len) == 0) {
            if (found++) return -1;
            const char *v = p + name_len, *e = find_crlf(v, (size_t)(end - v));
            if (e == NULL) e = end;
            while (v < e && (*v == ' ' || *v == '\t')) v++;
            while (e > v && (e[-1] == ' ' || e[-1] == '\t')) e--;
            if (e == v || e - v > WS_KEY_MAX) return -1;
            for (const char *k = v; k < e; k++)
                if (!(isalnum((unsigned char)*k) || *k == '+' || *k == '/' || *k == '=')) return -1;
            *at = (size_t)(v - head);
            *vlen = (size_t)(e - v);
        }
        p += 2;
    }
    return found ? 0 : -1;
}

/* The head as decide gets it: a WebSocket key replaced by WS_KEY_MARK (kept in c->wskey to splice back). */
PyObject *head_for_decide(hconn_t *c, const char *head, size_t len) {
    size_t at, vlen;
    c->wskey_len = 0;
    if (ws_key_at(head, len, &at, &vlen) != 0) return PyBytes_FromStringAndSize(head, (Py_ssize_t)len);
    const size_t mark_len = sizeof(WS_KEY_MARK) - 1;
    PyObject *raw = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(len - vlen + mark_len));
    if (raw == NULL) return NULL;
    char *out = PyBytes_AS_STRING(raw);
    memcpy(out, head, at);
    memcpy(out + at, WS_KEY_MARK, mark_len);
    memcpy(out + at + mark_len, head + at + vlen, len - at - vlen);
    memcpy(c->wskey, head + at, vlen);
    c->wskey_len = vlen;
    return raw;
}

/* Send what is pending for fd from b (its first *off bytes already sent); -1 on an error. */
int flush_to(int fd, int *ready, buf_t *b, size_t *off) {
    while (*ready && *off < b->len) {
        ssize_t n = send(fd, b->data + *off, b->len - *off, MSG_NOSIGNAL);
        if (n >= 0) {
            *off += (size_t)n;
        } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
            *ready = 0;
        } else if (errno != EINTR) {
            return -1;
        }
    }
    return 0;
}

/* ---- the upstream pool: idle keep-alive connections, newest first, still watched (an EOF closes them) ---- */

static void pool_remove(Lane *l, size_t k) {
    l->pool[k] = l->pool[--l->npool];
}

int pool_take(Lane *l, uint32_t ip, uint16_t port) {
    uint64_t now = lane_now_ms();
    for (size_t k = l->npool; k-- > 0;) {
        pooled_t p = l->pool[k];
        if (p.ip != ip || p.port != port) continue;
        pool_remove(l, k);
        if (now - p.since_ms > POOL_IDLE_MS) {
            close_fd(l, p.fd);
            continue;
        }
        return p.fd;
    }
    return -1;
}

void pool_put(Lane *l, hconn_t *c) {
    size_t same = 0, oldest = (size_t)-1;
    for (size_t k = 0; k < l->npool; k++) {
        if (l->pool[k].ip != c->ip || l->pool[k].port != c->port) continue;
        same++;
        if (oldest == (size_t)-1 || l->pool[k].since_ms < l->pool[oldest].since_ms) oldest = k;
    }
    if (same >= POOL_PER_INSTANCE) {
        close_fd(l, l->pool[oldest].fd);
        pool_remove(l, oldest);
    }
    if (l->npool == l->pool_cap) {
        size_t cap = l->pool_cap ? l->pool_cap * 2 : 64;
        pooled_t *pool = realloc(l->pool, cap * sizeof(pooled_t));
        if (pool == NULL) {
            close_fd(l, c->ufd);
            c->ufd = -1;
            return;
        }
        l->pool = pool;
        l->pool_cap = cap;
    }
    l->pool[l->npool++] = (pooled_t){.ip = c->ip, .port = c->port, .fd = c->ufd, .since_ms = lane_now_ms()};
    l->slots[c->ufd] = SLOT_POOL;
    l->owners[c->ufd] = NULL;
    c->ufd = -1;
}

void pool_event(Lane *l, int fd) {
    /* An idle connection never has anything to say: input or an EOF means it is done with. */
    for (size_t k = 0; k < l->npool; k++) {
        if (l->pool[k].fd == fd) {
            pool_remove(l, k);
            break;
        }
    }
    close_fd(l, fd);
}

void lane_pool_clear(Lane *l) {
    for (size_t k = 0; k < l->npool; k++) close_fd(l, l->pool[k].fd);
    l->npool = 0;
}

/* ---- response heads ---- */

static int is_token_char(unsigned char ch) {
    return ch > 32 && ch < 127 && !strchr("\"(),/:;<=>?@[\\]{}", ch);
}

static int name_is(const char *p, size_t len, const char *name) {
    return strlen(name) == len && strncasecmp(p, name, len) == 0;
}

/* The instance's head (uin[0, len)) as the client gets it, into cout; -1 when Python must judge it. */
int take_response(hconn_t *c, size_t len) {
    const char *p = c->uin.data;
    if (len < 12 || memcmp(p, "HTTP/1.", 7) != 0 || (p[7] != '1' && p[7] != '0') || p[8] != ' ') return -1;
    for (int k = 9; k < 12; k++) if (p[k] < '0' || p[k] > '9') return -1;
    int status = (p[9] - '0') * 100 + (p[10] - '0') * 10 + (p[11] - '0');
    if (status < 200) return -1;  /* 1xx heads are passed on by Python, a 101 refused there */
    const char *line_end = find_crlf(p, len + 2);
    if (line_end == NULL || (line_end > p + 12 && p[12] != ' ')) return -1;
    int keep_upstream = p[7] == '1';
    long long length = -1;
    c->cout.len = 0;
    if (buf_add(&c->cout, "HTTP/1.1", 8) != 0 || buf_add(&c->cout, p + 8, (size_t)(line_end - (p + 8))) != 0
        || (line_end - p == 12 && buf_add(&c->cout, " ", 1) != 0) || buf_add(&c->cout, "\r\n", 2) != 0)
        return -1;  /* (a status line without a reason gets Python's "HTTP/1.1 200 ") */
    const char *q = line_end + 2, *end = p + len;
    while (q < end) {
        const char *eol = find_crlf(q, (size_t)(end - q) + 2);
        const char *colon = memchr(q, ':', (size_t)(eol - q));
        if (colon == NULL || colon == q) return -1;
        for (const char *n = q; n < colon; n++) if (!is_token_char((unsigned char)*n)) return -1;
        const char *v = colon + 1, *ve = eol;
        for (const char *x = v; x < ve; x++) {
            unsigned char ch = (unsigned char)*x;
            if ((ch < 32 && ch != '\t') || ch == 127) return -1;
        }
        while (v < ve && (*v == ' ' || *v == '\t')) v++;
        while (ve > v && (ve[-1] == ' ' || ve[-1] == '\t')) ve--;
        size_t nlen = (size_t)(colon - q), vlen = (size_t)(ve - v);
        if (name_is(q, nlen, "transfer-encoding")) return -1;  /* chunked and the rest: the Python relay */
        if (name_is(q, nlen, "content-length")) {
            if (vlen == 0 || vlen > 18) return -1;
            long long n = 0;
            for (size_t k = 0; k < vlen; k++) {
                if (v[k] < '0' || v[k] > '9') return -1;
                n = n * 10 + (v[k] - '0');
            }
            if (length >= 0 && length != n) return -1;
            length = n;
        }
        if (name_is(q, nlen, "connection")) {
            /* close or keep-alive only: another option names a header to drop, which Python does */
            if (vlen == 5 && strncasecmp(v, "close", 5) == 0) keep_upstream = 0;
            else if (!(vlen == 10 && strncasecmp(v, "keep-alive", 10) == 0)) return -1;
        }
        if (!(name_is(q, nlen, "connection") || name_is(q, nlen, "keep-alive") || name_is(q, nlen, "te")
              || name_is(q, nlen, "proxy-authenticate") || name_is(q, nlen, "proxy-authorization")
              || name_is(q, nlen, "proxy-connection") || name_is(q, nlen, "trailer")
              || name_is(q, nlen, "upgrade"))) {
            if (buf_add(&c->cout, q, nlen) != 0 || buf_add(&c->cout, ": ", 2) != 0 || buf_add(&c->cout, v, vlen) != 0
                || buf_add(&c->cout, "\r\n", 2) != 0)
                return -1;
        }
        q = eol + 2;
    }
    int no_body = c->no_body || status == 204 || status == 304;
    if (!no_body && length < 0) return -1;  /* until close: Python */
    /* a rate limiter's X-RateLimit-* after the instance's headers, as Python's `_answer` adds them */
    if (c->extra.len && buf_add(&c->cout, c->extra.data, c->extra.len) != 0) return -1;
    if (!c->keep_client && buf_add(&c->cout, "Connection: close\r\n", 19) != 0) return -1;
    if (buf_add(&c->cout, "\r\n", 2) != 0) return -1;
    c->status = status;
    c->remaining = no_body ? 0 : (uint64_t)length;
    c->nbytes = c->remaining;
    c->upstream_keep = keep_upstream;
    return 0;
}

/* A new connection to the request's instance, registered for the lane; -1 when it cannot be made. */
int lane_dial(Lane *l, hconn_t *c) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one));  /* http.keep_alive's settings */
    int idle = 15, interval = 5, count = 3;
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof(idle));
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &interval, sizeof(interval));
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &count, sizeof(count));
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(c->port)};
    addr.sin_addr.s_addr = c->ip;
    if (connect(fd, (struct sockaddr *)&addr, sizeof(addr)) != 0 && errno != EINPROGRESS) {
        close(fd);
        return -1;
    }
    if (lane_watch(l, fd, SLOT_UPSTREAM, c) != 0) {
        close(fd);
        return -1;
    }
    c->ufd = fd;
    c->urd = c->uwr = 0;
    c->connecting = 1;
    c->reused = 0;
    c->deadline_ms = c->connect_ms ? lane_now_ms() + c->connect_ms : 0;
    return 0;
}

/* The client's address as text (see Lane.last_remote), a new reference; NULL with an exception set. */
PyObject *lane_remote(Lane *l, const struct sockaddr_storage *addr) {
    uint32_t ip = addr->ss_family == AF_INET ? ((const struct sockaddr_in *)addr)->sin_addr.s_addr : 0;
    if (l->last_remote != NULL && ip != 0 && ip == l->last_ip) return Py_NewRef(l->last_remote);
    char text[INET6_ADDRSTRLEN] = "unknown";
    if (addr->ss_family == AF_INET)
        inet_ntop(AF_INET, &((const struct sockaddr_in *)addr)->sin_addr, text, sizeof(text));
    else if (addr->ss_family == AF_INET6)
        inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)addr)->sin6_addr, text, sizeof(text));
    PyObject *remote = PyUnicode_FromString(text);
    if (remote != NULL && ip != 0) {
        Py_XSETREF(l->last_remote, Py_NewRef(remote));
        l->last_ip = ip;
    }
    return remote;
}

/* decide's answer (token, request, ip, port, body_len, keep, no_body, connect_ms, response_ms[, limit, upgrade,
 * plan]) read without PyArg_ParseTuple, which parsed its format per request (1,300 instructions); -1 when it is
 * not one (an exception may be set). The references are borrowed from `decision`. */
int read_decision(PyObject *decision, decision_t *d) {
    if (!PyTuple_Check(decision)) return -1;
    Py_ssize_t n = PyTuple_GET_SIZE(decision);
    if (n < 9 || n > 12 || !PyBytes_Check(PyTuple_GET_ITEM(decision, 1))) return -1;
    d->token = PyTuple_GET_ITEM(decision, 0);
    d->request = PyTuple_GET_ITEM(decision, 1);
    d->ip = (unsigned int)PyLong_AsUnsignedLongMask(PyTuple_GET_ITEM(decision, 2));
    d->port = (unsigned int)PyLong_AsUnsignedLongMask(PyTuple_GET_ITEM(decision, 3));
    d->body_len = PyLong_AsUnsignedLongLongMask(PyTuple_GET_ITEM(decision, 4));
    d->keep = PyObject_IsTrue(PyTuple_GET_ITEM(decision, 5));
    d->no_body = PyObject_IsTrue(PyTuple_GET_ITEM(decision, 6));
    d->connect_ms = PyLong_AsUnsignedLongLongMask(PyTuple_GET_ITEM(decision, 7));
    d->response_ms = PyLong_AsUnsignedLongLongMask(PyTuple_GET_ITEM(decision, 8));
    d->limit = n > 9 ? PyTuple_GET_ITEM(decision, 9) : Py_None;
    d->upgrade = n > 10 ? PyObject_IsTrue(PyTuple_GET_ITEM(decision, 10)) : 0;
    d->plan = n > 11 ? PyTuple_GET_ITEM(decision, 11) : Py_None;
    return d->keep < 0 || d->no_body < 0 || d->upgrade < 0 || PyErr_Occurred() ? -1 : 0;
}

/* A tuple of `n` new references (stolen, NULL ones too), or NULL when one is NULL: Py_BuildValue parsed its format
 * per call, about 1,000 instructions for a hand-back or a finished request. */
PyObject *tuple_of(PyObject **fields, Py_ssize_t n) {
    PyObject *item = PyTuple_New(n);
    int complete = item != NULL;
    for (Py_ssize_t k = 0; k < n; k++) {
        if (fields[k] == NULL) complete = 0;
        if (item != NULL) PyTuple_SET_ITEM(item, k, fields[k]); /* a NULL slot is fine for the tuple's dealloc */
        else Py_XDECREF(fields[k]);
    }
    if (!complete) Py_CLEAR(item);
    return item;
}

/* malloc keeps what a burst of hand-backs freed, in fragments of its arenas (200 oversized heads at once left the
 * gateway 8 MiB larger for good; tests/functional/test_gateway_abuse.py): once such a burst has been over for
 * TRIM_QUIET_MS, that memory goes back to the system. */
#define TRIM_AFTER 64
#define TRIM_QUIET_MS 500

void lane_trim_after_burst(Lane *l, uint64_t now) {
    if (l->handed_back != l->trim_seen) {
        l->trim_seen = l->handed_back;
        l->quiet_since_ms = now;
    } else if (l->handed_back - l->trimmed >= TRIM_AFTER && now - l->quiet_since_ms >= TRIM_QUIET_MS) {
        l->trimmed = l->handed_back;
#ifdef __GLIBC__
        malloc_trim(0);
#endif
    }
}
