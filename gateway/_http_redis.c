/* The native HTTP lane's RequestRateLimiter: the token bucket script sent to Redis from C (see _http.c).
 *
 * Why: on the Python path a rate-limited request costs a redis-py call (a coroutine, a connection from the pool,
 * the reply parsed and wrapped) on top of the proxying, about 20 times nginx's CPU per request. Here each lane keeps
 * one non-blocking connection to Redis, watched by the lane's own epoll set, and pipelines `EVALSHA` calls on it:
 * replies come back in order, so a FIFO of the connections waiting tells whose reply is whose. The calls of one turn
 * of Lane.run go out in one write at its end.
 *
 * decide() gives the command already RESP-encoded but for ARGV[3], `now` in whole seconds (the script's clock,
 * `time.time()` on the Python path), which C inserts. Any reply that is not the script's `[allowed, tokens]`
 * (NOSCRIPT after a SCRIPT FLUSH or a restart, any error) and any connection failure hands the request back to
 * Python as new: the Python limiter then does what it always does (EVAL that reloads the script, fail open and
 * log once per outage), so both lanes follow one set of failure rules. A reply that does not come within the
 * limiter's timeout hands the request back as K_LIMIT_TIMEOUT: Python notes the failure as its own timeout would
 * have, instead of waiting a second time.
 */
#include "_http.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* Redis answered c's script call: allowed (1), refused (0), or no usable answer (-1: Python asks again). */
void lane_limited(Lane *l, hconn_t *c, int allowed, long long tokens) {
    PyObject *allowed_tail, *refused_head, *refused_tail;
    int status;
    if (allowed < 0 || !PyArg_ParseTuple(c->limit, "y#y#SSSiK", &(const char *){0}, &(Py_ssize_t){0},
                                         &(const char *){0}, &(Py_ssize_t){0}, &allowed_tail, &refused_head,
                                         &refused_tail, &status, &(unsigned long long){0})) {
        PyErr_Clear();
        hand_back(l, c, K_NEW, 0);
        return;
    }
    char remaining[64];
    int len = snprintf(remaining, sizeof(remaining), "X-RateLimit-Remaining: %lld\r\n", tokens);
    l->limited++;
    if (allowed) {
        c->state = H_IDLE;  /* until dispatch: not waiting for Redis any more */
        c->extra.len = 0;
        if (buf_add(&c->extra, remaining, (size_t)len) != 0
            || buf_add(&c->extra, PyBytes_AS_STRING(allowed_tail), (size_t)PyBytes_GET_SIZE(allowed_tail)) != 0) {
            hand_back(l, c, K_NEW, 0);
            return;
        }
        if (lane_dispatch(l, c) > 0) lane_progress(l, c);
        return;
    }
    /* The refusal is the Python path's (`GatewayServer.handle`): its head and body from decide, our count. */
    c->cout.len = 0;
    if (buf_add(&c->cout, PyBytes_AS_STRING(refused_head), (size_t)PyBytes_GET_SIZE(refused_head)) != 0
        || buf_add(&c->cout, remaining, (size_t)len) != 0
        || buf_add(&c->cout, PyBytes_AS_STRING(refused_tail), (size_t)PyBytes_GET_SIZE(refused_tail)) != 0) {
        c->cout.len = 0;
        hand_back(l, c, K_NEW, 0);
        return;
    }
    buf_drop(&c->cin, c->head_used);
    c->status = status;
    c->nbytes = 0;
    finish_request(l, c, 4);  /* answered by the gateway: Accounting.answered */
    c->first = 0;
    c->state = c->keep_client && !l->draining ? H_IDLE : H_CLOSE;
    c->deadline_ms = c->state == H_IDLE ? lane_now_ms() + l->head_timeout_ms : 0;
    lane_progress(l, c);
}

/* ---- the FIFO of connections waiting for a reply (NULL: gone, its reply is read and dropped) ---- */

static int queue_push(Lane *l, hconn_t *c) {
    if (l->rq_len == l->rq_cap) {
        size_t cap = l->rq_cap ? l->rq_cap * 2 : 64;
        hconn_t **q = malloc(cap * sizeof(hconn_t *));
        if (q == NULL) return -1;
        for (size_t k = 0; k < l->rq_len; k++) q[k] = l->rq[(l->rq_head + k) % l->rq_cap];
        free(l->rq);
        l->rq = q;
        l->rq_cap = cap;
        l->rq_head = 0;
    }
    l->rq[(l->rq_head + l->rq_len++) % l->rq_cap] = c;
    return 0;
}

static hconn_t *queue_pop(Lane *l) {
    hconn_t *c = l->rq[l->rq_head];
    l->rq_head = (l->rq_head + 1) % l->rq_cap;
    l->rq_len--;
    return c;
}

void redis_forget_conn(Lane *l, hconn_t *c) {
    for (size_t k = 0; k < l->rq_len; k++) {
        size_t at = (l->rq_head + k) % l->rq_cap;
        if (l->rq[at] == c) l->rq[at] = NULL;
    }
}

/* The connection failed: every request waiting goes back to Python, which asks Redis itself. */
static void redis_reset(Lane *l) {
    close_fd(l, l->redis_fd);
    l->redis_fd = -1;
    l->rout.len = 0;
    l->rin.len = 0;
    l->rout_off = 0;
    while (l->rq_len) {
        hconn_t *c = queue_pop(l);
        if (c != NULL) lane_limited(l, c, -1, 0);
    }
}

static int redis_dial(Lane *l) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(l->redis_port)};
    addr.sin_addr.s_addr = l->redis_ip;
    if ((connect(fd, (struct sockaddr *)&addr, sizeof(addr)) != 0 && errno != EINPROGRESS)
        || lane_watch(l, fd, SLOT_REDIS, NULL) != 0) {
        close(fd);
        return -1;
    }
    l->redis_fd = fd;
    l->redis_rd = l->redis_wr = 0;
    return 0;
}

static void redis_flush(Lane *l) {
    if (flush_to(l->redis_fd, &l->redis_wr, &l->rout, &l->rout_off) != 0) {
        redis_reset(l);
        return;
    }
    if (l->rout_off == l->rout.len) {
        l->rout.len = 0;
        l->rout_off = 0;
    }
}

/* Queue c's script call; -1 when it cannot be sent (the caller hands the request back). */
int redis_submit(Lane *l, hconn_t *c, const char *before, size_t before_len, const char *after, size_t after_len) {
    if (l->redis_port == 0) return -1;
    if (l->redis_fd < 0 && redis_dial(l) != 0) return -1;
    char now[48];
    long long seconds = (long long)time(NULL);
    int digits = snprintf(now, sizeof(now), "%lld", seconds);
    char arg[64];
    int arg_len = snprintf(arg, sizeof(arg), "$%d\r\n%s\r\n", digits, now);
    if (queue_push(l, c) != 0) return -1;
    if (buf_add(&l->rout, before, before_len) != 0 || buf_add(&l->rout, arg, (size_t)arg_len) != 0
        || buf_add(&l->rout, after, after_len) != 0) {
        l->rq_len--;  /* the entry just pushed */
        redis_reset(l);  /* a half-written command would garble the stream */
        return -1;
    }
    return 0;  /* sent with the turn's others (redis_send_queued) */
}

/* Send the commands the turn queued, at its end: one write (and one reply read, mostly) for all the requests of the
 * turn rather than one per request. Runs before Lane.run collects its hand-backs (a failed write hands back the
 * requests waiting for Redis). */
void redis_send_queued(Lane *l) {
    if (l->redis_fd >= 0 && l->rout.len > l->rout_off) redis_flush(l);
}

/* One RESP value at p: its end, or NULL when incomplete; *bad set when it is not RESP. Fills *ints with up to two
 * integers of a top-level array of integers, *count with how many there were, *error when it is an error reply. */
static const char *parse_value(const char *p, const char *end, int depth, long long *ints, int *count, int *error,
                               int *bad) {
    if (p >= end) return NULL;
    const char *eol = find_crlf(p, (size_t)(end - p));
    if (eol == NULL) return NULL;
    char type = *p;
    long long n = 0;
    int negative = 0;
    const char *d = p + 1;
    if ((type == ':' || type == '$' || type == '*') && d < eol && *d == '-') {
        negative = 1;
        d++;
    }
    if (type == ':' || type == '$' || type == '*') {
        if (d == eol || eol - d > 18) {
            *bad = 1;
            return NULL;
        }
        for (; d < eol; d++) {
            if (*d < '0' || *d > '9') {
                *bad = 1;
                return NULL;
            }
            n = n * 10 + (*d - '0');
        }
        if (negative) n = -n;
    }
    switch (type) {
    case '+':
        return eol + 2;
    case '-':
        if (depth == 0) *error = 1;
        return eol + 2;
    case ':':
        if (depth == 1 && *count < 2) ints[*count] = n;
        if (depth == 1) (*count)++;
        return eol + 2;
    case '$':
        if (n < 0) return eol + 2;
        if (end - (eol + 2) < n + 2) return NULL;
        return eol + 2 + n + 2;
    case '*': {
        const char *q = eol + 2;
        if (depth > 8) {
            *bad = 1;
            return NULL;
        }
        for (long long k = 0; k < n; k++) {
            if (depth == 0 && k >= 2) *count = 3;  /* longer than the script's two values */
            q = parse_value(q, end, depth + 1, ints, count, error, bad);
            if (q == NULL) return NULL;
        }
        if (depth == 0 && n != 2) *count = 3;
        return q;
    }
    default:
        *bad = 1;
        return NULL;
    }
}

static void redis_read(Lane *l) {
    while (l->redis_rd) {
        ssize_t n = recv(l->redis_fd, l->scratch, sizeof(l->scratch), 0);
        if (n > 0) {
            if (buf_add(&l->rin, l->scratch, (size_t)n) != 0) {
                redis_reset(l);
                return;
            }
        } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            l->redis_rd = 0;
        } else if (n == 0 || errno != EINTR) {
            redis_reset(l);
            return;
        }
    }
    size_t used = 0;
    while (used < l->rin.len) {
        long long ints[2] = {0, 0};
        int count = 0, error = 0, bad = 0;
        const char *start = l->rin.data + used;
        const char *next = parse_value(start, l->rin.data + l->rin.len, 0, ints, &count, &error, &bad);
        if (bad || (next != NULL && l->rq_len == 0)) {  /* not RESP, or a reply nobody asked for */
            redis_reset(l);
            return;
        }
        if (next == NULL) break;
        used += (size_t)(next - start);
        hconn_t *c = queue_pop(l);
        if (c == NULL) continue;
        int script_reply = *start == '*' && !error && count == 2 && (ints[0] == 0 || ints[0] == 1);
        lane_limited(l, c, script_reply ? (int)ints[0] : -1, ints[1]);
    }
    buf_drop(&l->rin, used);
}

void redis_event(Lane *l, uint32_t events) {
    if (l->redis_fd < 0) return;
    if (events & (EPOLLOUT | EPOLLHUP | EPOLLERR)) l->redis_wr = 1;
    if (events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) l->redis_rd = 1;
    int err = 0;
    socklen_t len = sizeof(err);
    if ((events & (EPOLLHUP | EPOLLERR))
        && (getsockopt(l->redis_fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0 || err != 0)) {
        redis_reset(l);  /* a refused connect, a reset */
        return;
    }
    redis_flush(l);
    if (l->redis_fd >= 0) redis_read(l);
}

void redis_close(Lane *l) {
    redis_reset(l);
    free(l->rq);
    l->rq = NULL;
    l->rq_cap = l->rq_len = l->rq_head = 0;
    free(l->rout.data);
    free(l->rin.data);
    l->rout = (buf_t){0};
    l->rin = (buf_t){0};
}
