/* gateway._relay: the byte tunnel after a 101, relayed by one native thread per worker process.
 *
 * Why: after the upgrade the gateway only copies bytes, and the Python path (uvloop transports) still pays
 * uvloop's per-read cost (a bytes object and a Cython write per chunk) on the event loop. Here one thread
 * per worker owns an epoll set and does what nginx's upgraded-connection handler does: recv into one buffer,
 * send to the other socket, never touching Python objects and never holding the GIL.
 *
 * Rules, the same as gateway/tunnel.py's:
 * - paired backpressure: when a send is short, the rest waits in the destination's pending buffer and the
 *   source is not read until it has been flushed;
 * - EOF from either side, or close(): stop reading both, flush what is pending to each side, then close it;
 * - an error on either side, or abort(): close both at once;
 * - an optional idle timeout closes a tunnel that moved no byte for that long;
 * - a closing tunnel whose peer does not take its last bytes within flush_timeout_ms (30 s, nginx's
 *   send_timeout is 60 s) is aborted, so a reader that stopped reading cannot hold two descriptors forever;
 * - the bytes each side sent are read from TCP_INFO (tcpi_bytes_received, handshake included) before the
 *   first socket of a tunnel is closed, falling back to the bytes this thread read.
 *
 * Python hands over duplicated descriptors with `Relay.add`; the thread reports finished tunnels through an
 * eventfd the event loop watches (`Relay.fileno`, `Relay.reap`). Commands from Python go through a
 * mutex-protected queue and a second eventfd; nothing else is shared.
 *
 * `Relay.dial` does a WebSocket upgrade's dial the way nginx's single loop does, without a uvloop transport to
 * the instance: the calling (Python) thread connects and sends the request at once (on loopback the connection
 * is up by then), registers the socket in this thread's epoll set and queues the tunnel *without* waking the
 * thread; the thread takes it over at its next wake-up (at the latest when the answer comes, or every
 * LAZY_MAX_MS), reads the response head, and either forwards a 101 and relays, or hands the socket and the bytes
 * back (EV_HEAD) for Python to answer. Why: each cross-thread wake-up costs two context switches when both
 * threads share a core, which is most of what a handshake costs here. For the same reason the thread runs as
 * SCHED_BATCH: woken while the Python thread has work, it waits for it instead of preempting it.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define CHUNK_BYTES 65536
#define MAX_EVENTS 256
#define TCP_INFO_BYTES_RECEIVED_AT 128 /* u64 tcpi_bytes_received, Linux >= 4.1 */
#define HEAD_LIMIT (65536 + 4096)     /* a response head not complete by then goes back to Python (its 64 KiB rule) */
#define HEAD_FIRST_BYTES 2048
#define LAZY_MAX_MS 100               /* the longest the thread sleeps without looking at its command queue */

/* A dialed tunnel's life: connecting, then sending the request and reading the response head, then relaying. */
enum { ST_RELAY, ST_DIAL, ST_HEAD };

/* What the thread reports (Relay.reap): a finished tunnel, or how a dial ended. */
enum { EV_DONE, EV_UPGRADED, EV_FAILED, EV_HEAD };
enum { FAIL_CONNECT = 1, FAIL_CONNECT_TIMEOUT, FAIL_RESPONSE_TIMEOUT, FAIL_CLOSED, FAIL_ABORTED };

struct tunnel;

typedef struct {
    struct tunnel *tunnel;
    int fd;              /* -1 once closed */
    uint32_t events;     /* what epoll watches now */
    char *pending;       /* bytes waiting to be sent to this fd */
    size_t pending_len, pending_off;
    uint64_t read_bytes; /* bytes read from this fd by the thread */
} end_t;

typedef struct tunnel {
    uint64_t id;
    end_t ends[2];               /* 0: client, 1: upstream */
    int closing;                 /* no more reading; each fd closes once its pending bytes are sent */
    uint64_t closing_at_ms;      /* when closing began: a peer that never reads is cut off after flush_timeout_ms */
    int collected;
    int64_t received[2];         /* bytes each side sent (TCP_INFO), -1 until known */
    uint64_t idle_ms;            /* 0: no idle timeout */
    uint64_t moved, moved_seen;  /* activity, for the idle sweep */
    uint64_t active_at_ms;
    int finished;
    struct tunnel *prev, *next;  /* the live list (sweeps and shutdown) */
    /* dialed tunnels (Relay.dial) before the relay starts */
    int state;
    int linked;                  /* in the live list (a dialed tunnel is registered by Python before that) */
    uint64_t created_ms;         /* when Python handed it over: its connect and response deadlines count from here */
    int forward_101;             /* relay a 101 head as it came; any other head goes back to Python */
    int outcome_reported;        /* the dial's end (failure or hand-back) has been reported */
    uint64_t deadline_ms;        /* connect, then response deadline; 0: none */
    uint64_t connect_timeout_ms, response_timeout_ms;
    char *head;                  /* what the instance sent so far */
    size_t head_len, head_cap;
} tunnel_t;

enum { CMD_ADD, CMD_CLOSE, CMD_ABORT, CMD_STOP };

typedef struct {
    int kind;
    uint64_t id;
    tunnel_t *tunnel; /* CMD_ADD */
} command_t;

typedef struct {
    uint64_t id;
    int kind;
    int64_t a, b;  /* EV_DONE: bytes each side sent; EV_FAILED: reason and errno; EV_HEAD: the instance's fd */
    char *data;    /* EV_HEAD: the bytes read from the instance (owned by the event) */
    size_t len;
} done_t;

typedef struct {
    PyObject_HEAD
    int epfd, wakefd, donefd;
    pthread_t thread;
    int started, stopped;
    pthread_mutex_t lock;
    command_t *commands;
    size_t ncommands, commands_cap;
    int queued;     /* commands wait (read by the thread without the lock, atomically) */
    int signalled;  /* the wake eventfd was written since the thread last took the queue */
    done_t *done;
    size_t ndone, done_cap;
    uint64_t next_id;
    /* owned by the relay thread */
    tunnel_t *live;
    tunnel_t **freelater;
    size_t nfreelater, freelater_cap;
    uint64_t sweep_ms;
    uint64_t last_sweep_ms;
    pid_t owner; /* the process that started the thread (a forked child has no thread to stop) */
    uint64_t flush_timeout_ms;  /* how long a closing tunnel may wait for a peer to take its last bytes */
    char buffer[CHUNK_BYTES];
} Relay;

static uint64_t now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static int grow(void **items, size_t *cap, size_t need, size_t size) {
    if (need <= *cap) return 0;
    size_t cap2 = *cap ? *cap * 2 : 16;
    while (cap2 < need) cap2 *= 2;
    void *bigger = realloc(*items, cap2 * size);
    if (bigger == NULL) return -1;
    *items = bigger;
    *cap = cap2;
    return 0;
}

/* Wake whoever waits on the eventfd `fd`. */
static void signal_fd(int fd) {
    uint64_t one = 1;
    ssize_t unused = write(fd, &one, sizeof(one));
    (void)unused;
}

/* Reset the eventfd `fd`, then take the queue it signals (items, count, capacity) under the lock. The order
 * matters: anything queued after the take signals again. Returns the items (the caller frees them). */
static void *take_queue(pthread_mutex_t *lock, int fd, void **items, size_t *count, size_t *cap, size_t *taken) {
    uint64_t value;
    ssize_t unused = read(fd, &value, sizeof(value));
    (void)unused;
    pthread_mutex_lock(lock);
    void *out = *items;
    *taken = *count;
    *items = NULL;
    *count = *cap = 0;
    pthread_mutex_unlock(lock);
    return out;
}

/* ---- the relay thread ---------------------------------------------------------------------------- */

static int64_t tcp_bytes_received(int fd) {
    unsigned char info[TCP_INFO_BYTES_RECEIVED_AT + 8];
    socklen_t len = sizeof(info);
    if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, info, &len) != 0 || len < sizeof(info)) return -1;
    uint64_t value;
    memcpy(&value, info + TCP_INFO_BYTES_RECEIVED_AT, sizeof(value));
    return (int64_t)value;
}

static void collect(tunnel_t *t) {
    if (t->collected) return;
    t->collected = 1;
    for (int i = 0; i < 2; i++) {
        int64_t value = t->ends[i].fd >= 0 ? tcp_bytes_received(t->ends[i].fd) : -1;
        t->received[i] = value >= 0 ? value : (int64_t)t->ends[i].read_bytes;
    }
}

static void close_end(Relay *r, end_t *e) {
    if (e->fd < 0) return;
    epoll_ctl(r->epfd, EPOLL_CTL_DEL, e->fd, NULL);
    close(e->fd);
    e->fd = -1;
    free(e->pending);
    e->pending = NULL;
    e->pending_len = e->pending_off = 0;
}

/* Queue an event for Python; `data` (malloc'ed) passes to the event. */
static void report_event(Relay *r, uint64_t id, int kind, int64_t a, int64_t b, char *data, size_t len) {
    pthread_mutex_lock(&r->lock);
    /* Python reads the eventfd before it takes the queue: a non-empty queue is already signalled. */
    int wake = r->ndone == 0;
    int failed = grow((void **)&r->done, &r->done_cap, r->ndone + 1, sizeof(done_t));
    if (!failed) r->done[r->ndone++] = (done_t){.id = id, .kind = kind, .a = a, .b = b, .data = data, .len = len};
    pthread_mutex_unlock(&r->lock);
    if (failed) {
        /* Out of memory: what the event carried cannot reach Python. */
        free(data);
        if (kind == EV_HEAD) close((int)a);
        return;
    }
    if (wake) signal_fd(r->donefd);
}

static void free_tunnel(tunnel_t *t) {
    free(t->head);
    free(t);
}

/* Free tunnels only after the current batch of epoll events: a later event may still point at them. */
static void maybe_finish(Relay *r, tunnel_t *t) {
    if (t->finished || t->ends[0].fd >= 0 || t->ends[1].fd >= 0) return;
    t->finished = 1;
    if (t->prev) t->prev->next = t->next; else r->live = t->next;
    if (t->next) t->next->prev = t->prev;
    if (t->state == ST_RELAY)
        report_event(r, t->id, EV_DONE, t->received[0], t->received[1], NULL, 0);
    else if (!t->outcome_reported)
        report_event(r, t->id, EV_FAILED, FAIL_ABORTED, 0, NULL, 0);
    if (grow((void **)&r->freelater, &r->freelater_cap, r->nfreelater + 1, sizeof(tunnel_t *)) == 0)
        r->freelater[r->nfreelater++] = t;
    /* else, out of memory: leak one small struct rather than risk a use after free */
}

static void abort_tunnel(Relay *r, tunnel_t *t) {
    collect(t);
    close_end(r, &t->ends[0]);
    close_end(r, &t->ends[1]);
    maybe_finish(r, t);
}

static void set_interest(Relay *r, end_t *e, uint32_t want) {
    if (want == e->events) return;
    struct epoll_event ev = {.events = want, .data.ptr = e};
    if (epoll_ctl(r->epfd, EPOLL_CTL_MOD, e->fd, &ev) == 0) e->events = want;
}

/* What epoll should watch on end i: reading while nothing waits to go the other way, writing while bytes wait. */
static void update_interest(Relay *r, tunnel_t *t, int i) {
    end_t *e = &t->ends[i];
    if (e->fd < 0) return;
    end_t *other = &t->ends[1 - i];
    uint32_t want = 0;
    if (!t->closing && other->pending_len == 0) want |= EPOLLIN;
    if (e->pending_len) want |= EPOLLOUT;
    set_interest(r, e, want);
}

/* Send what waits for end i; returns -1 on a fatal error. */
static int flush(end_t *e) {
    while (e->pending_len) {
        ssize_t n = send(e->fd, e->pending + e->pending_off, e->pending_len, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) return 0;
            return -1;
        }
        e->pending_off += (size_t)n;
        e->pending_len -= (size_t)n;
    }
    free(e->pending);
    e->pending = NULL;
    e->pending_off = 0;
    return 0;
}

/* The sweep runs at least every `ms` (5 ms to 1 s) from now on. */
static void want_sweep(Relay *r, uint64_t ms) {
    if (ms < 5) ms = 5;
    if (ms > 1000) ms = 1000;
    if (r->sweep_ms == 0 || ms < r->sweep_ms) r->sweep_ms = ms;
}

static void begin_close(Relay *r, tunnel_t *t) {
    if (!t->closing) {
        t->closing = 1;
        t->closing_at_ms = now_ms();
        collect(t);
    }
    for (int i = 0; i < 2; i++) {
        end_t *e = &t->ends[i];
        if (e->fd >= 0 && e->pending_len == 0) close_end(r, e);
    }
    for (int i = 0; i < 2; i++) update_interest(r, t, i);
    if (t->ends[0].fd >= 0 || t->ends[1].fd >= 0) want_sweep(r, r->flush_timeout_ms / 4);
    maybe_finish(r, t);
}

/* Keep bytes that could not be sent yet; the source stops being read until they are. */
static int keep_pending(end_t *dst, const char *data, size_t len) {
    char *copy = malloc(len);
    if (copy == NULL) return -1;
    memcpy(copy, data, len);
    dst->pending = copy;
    dst->pending_len = len;
    dst->pending_off = 0;
    return 0;
}

static void on_readable(Relay *r, tunnel_t *t, int i) {
    end_t *src = &t->ends[i], *dst = &t->ends[1 - i];
    ssize_t n;
    do {
        n = recv(src->fd, r->buffer, CHUNK_BYTES, 0);
    } while (n < 0 && errno == EINTR);
    if (n < 0) {
        if (errno != EAGAIN && errno != EWOULDBLOCK) abort_tunnel(r, t);
        return;
    }
    if (n == 0) {
        begin_close(r, t);
        return;
    }
    src->read_bytes += (uint64_t)n;
    t->moved += (uint64_t)n;
    if (dst->fd < 0) return;
    size_t sent = 0;
    while (sent < (size_t)n) {
        ssize_t w = send(dst->fd, r->buffer + sent, (size_t)n - sent, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) break;
            abort_tunnel(r, t);
            return;
        }
        sent += (size_t)w;
    }
    if (sent < (size_t)n) {
        if (keep_pending(dst, r->buffer + sent, (size_t)n - sent) != 0) {
            abort_tunnel(r, t);
            return;
        }
        update_interest(r, t, i);
        update_interest(r, t, 1 - i);
    }
}

static void on_writable(Relay *r, tunnel_t *t, int i) {
    end_t *e = &t->ends[i];
    if (flush(e) != 0) {
        abort_tunnel(r, t);
        return;
    }
    if (e->pending_len == 0 && t->closing) {
        close_end(r, e);
        maybe_finish(r, t);
        return;
    }
    update_interest(r, t, i);
    update_interest(r, t, 1 - i);
}

static tunnel_t *find_live(Relay *r, uint64_t id) {
    for (tunnel_t *t = r->live; t; t = t->next)
        if (t->id == id) return t;
    return NULL;
}

static void link_live(Relay *r, tunnel_t *t) {
    t->linked = 1;
    t->prev = NULL;
    t->next = r->live;
    if (r->live) r->live->prev = t;
    r->live = t;
    t->ends[0].tunnel = t;
    t->ends[1].tunnel = t;
    t->active_at_ms = now_ms();
    if (t->idle_ms) want_sweep(r, t->idle_ms / 4);
}

/* Send what each side has pending (bytes that came with the heads), then watch both with their final interest.
 * `registered` tells which ends are in the epoll set already. */
static void arm_relay(Relay *r, tunnel_t *t, const int registered[2]) {
    for (int i = 0; i < 2; i++) {
        if (t->ends[i].pending_len && flush(&t->ends[i]) != 0) {
            abort_tunnel(r, t);
            return;
        }
    }
    for (int i = 0; i < 2; i++) {
        end_t *e = &t->ends[i];
        uint32_t want = (t->ends[1 - i].pending_len ? 0 : EPOLLIN) | (e->pending_len ? EPOLLOUT : 0);
        if (registered[i] && want == e->events) continue;
        struct epoll_event ev = {.events = want, .data.ptr = e};
        if (epoll_ctl(r->epfd, registered[i] ? EPOLL_CTL_MOD : EPOLL_CTL_ADD, e->fd, &ev) != 0) {
            abort_tunnel(r, t);
            return;
        }
        e->events = want;
    }
}

/* ---- dialed tunnels: connect, send the request, read the response head ------------------------------ */

/* The dial ended before any relaying: report why and close both descriptors. */
static void fail_dial(Relay *r, tunnel_t *t, int reason, int err) {
    report_event(r, t->id, EV_FAILED, reason, err, NULL, 0);
    t->outcome_reported = 1;
    close_end(r, &t->ends[0]);
    close_end(r, &t->ends[1]);
    maybe_finish(r, t);
}

/* A head Python must judge (not a 101, or a 101 it rewrites): give it the instance's descriptor and the bytes
 * read; the client's duplicate is closed (Python still holds the client's own transport). */
static void hand_back(Relay *r, tunnel_t *t) {
    end_t *up = &t->ends[1];
    if (up->pending_len) {
        /* Answered before the whole request was taken: nothing Python could resume. */
        fail_dial(r, t, FAIL_CLOSED, 0);
        return;
    }
    epoll_ctl(r->epfd, EPOLL_CTL_DEL, up->fd, NULL);
    int fd = up->fd;
    up->fd = -1;
    report_event(r, t->id, EV_HEAD, fd, 0, t->head, t->head_len);
    t->head = NULL;
    t->head_len = t->head_cap = 0;
    t->outcome_reported = 1;
    close_end(r, &t->ends[0]);
    maybe_finish(r, t);
}

/* The instance answered 101: the head and anything after it go to the client, then the relay starts. */
static void upgrade(Relay *r, tunnel_t *t) {
    end_t *client = &t->ends[0], *up = &t->ends[1];
    report_event(r, t->id, EV_UPGRADED, 0, 0, NULL, 0);
    t->state = ST_RELAY;
    t->deadline_ms = 0;
    up->read_bytes += t->head_len;
    client->pending = t->head;
    client->pending_len = t->head_len;
    client->pending_off = 0;
    t->head = NULL;
    t->head_len = t->head_cap = 0;
    t->active_at_ms = now_ms();
    const int registered[2] = {0, 1};
    arm_relay(r, t, registered);
}

static int is_upgrade_head(const tunnel_t *t, const char *end) {
    static const char prefix[] = "HTTP/1.1 101 ";
    return t->forward_101 && end != NULL && t->head_len >= sizeof(prefix) - 1
        && memcmp(t->head, prefix, sizeof(prefix) - 1) == 0;
}

/* Read what the instance sent; returns 1 once the dial has moved on (upgraded, handed back or failed). */
static int read_response_head(Relay *r, tunnel_t *t) {
    end_t *up = &t->ends[1];
    for (;;) {
        if (t->head_len == t->head_cap) {
            if (t->head_cap >= HEAD_LIMIT) {
                hand_back(r, t);
                return 1;
            }
            size_t cap = t->head_cap ? t->head_cap * 2 : HEAD_FIRST_BYTES;
            if (cap > HEAD_LIMIT) cap = HEAD_LIMIT;
            char *bigger = realloc(t->head, cap);
            if (bigger == NULL) {
                fail_dial(r, t, FAIL_CLOSED, ENOMEM);
                return 1;
            }
            t->head = bigger;
            t->head_cap = cap;
        }
        ssize_t n = recv(up->fd, t->head + t->head_len, t->head_cap - t->head_len, 0);
        if (n < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) return 0;
            fail_dial(r, t, FAIL_CLOSED, errno);
            return 1;
        }
        if (n == 0) {
            /* A partial head at EOF is Python's to judge (it names what was wrong). */
            if (t->head_len) hand_back(r, t); else fail_dial(r, t, FAIL_CLOSED, 0);
            return 1;
        }
        size_t from = t->head_len >= 3 ? t->head_len - 3 : 0;
        t->head_len += (size_t)n;
        const char *end = memmem(t->head + from, t->head_len - from, "\r\n\r\n", 4);
        if (end != NULL) {
            if (is_upgrade_head(t, end)) upgrade(r, t); else hand_back(r, t);
            return 1;
        }
    }
}

static void on_dial_event(Relay *r, tunnel_t *t, uint32_t got) {
    end_t *up = &t->ends[1];
    if (t->state == ST_DIAL) {
        int err = 0;
        socklen_t len = sizeof(err);
        if (getsockopt(up->fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0) err = errno;
        if (err == 0 && (got & (EPOLLERR | EPOLLHUP))) err = ECONNREFUSED;
        if (err != 0) {
            fail_dial(r, t, FAIL_CONNECT, err);
            return;
        }
        if (!(got & EPOLLOUT)) return;
        t->state = ST_HEAD;
        t->deadline_ms = t->response_timeout_ms ? now_ms() + t->response_timeout_ms : 0;
    }
    if (up->pending_len && (got & EPOLLOUT) && flush(up) != 0) {
        fail_dial(r, t, FAIL_CLOSED, errno);
        return;
    }
    if ((got & (EPOLLIN | EPOLLHUP | EPOLLERR)) && read_response_head(r, t)) return;
    set_interest(r, up, EPOLLIN | (up->pending_len ? EPOLLOUT : 0));
}

/* Python connected the socket, sent what it could of the request and registered the socket in the epoll set
 * (Relay_dial); the thread takes the tunnel over here, at the latest when the first event for it comes. */
static void start_dial(Relay *r, tunnel_t *t) {
    link_live(r, t);
    if (t->state == ST_DIAL) {
        t->deadline_ms = t->created_ms + t->connect_timeout_ms;
        want_sweep(r, t->connect_timeout_ms / 4);
    } else if (t->response_timeout_ms) {
        t->deadline_ms = t->created_ms + t->response_timeout_ms;
    }
    if (t->response_timeout_ms) want_sweep(r, t->response_timeout_ms / 4);
}

static void start_tunnel(Relay *r, tunnel_t *t) {
    if (t->state != ST_RELAY) {
        start_dial(r, t);
        return;
    }
    link_live(r, t);
    const int registered[2] = {0, 0};
    arm_relay(r, t, registered);
}

static void sweep_idle(Relay *r, uint64_t now) {
    tunnel_t *t = r->live;
    while (t) {
        tunnel_t *next = t->next;
        if (t->state != ST_RELAY) {
            if (t->deadline_ms && now >= t->deadline_ms)
                fail_dial(r, t, t->state == ST_DIAL ? FAIL_CONNECT_TIMEOUT : FAIL_RESPONSE_TIMEOUT, 0);
        } else if (t->closing) {
            if (now - t->closing_at_ms >= r->flush_timeout_ms) abort_tunnel(r, t);
        } else if (t->idle_ms) {
            if (t->moved != t->moved_seen) {
                t->moved_seen = t->moved;
                t->active_at_ms = now;
            } else if (now - t->active_at_ms >= t->idle_ms) {
                begin_close(r, t);
            }
        }
        t = next;
    }
}

/* Take the command queue; `woken`: the wake eventfd was readable (it is reset first). Returns 1 when asked to
 * stop. */
static int run_commands(Relay *r, int woken) {
    if (woken) {
        uint64_t value;
        ssize_t unused = read(r->wakefd, &value, sizeof(value));
        (void)unused;
    }
    pthread_mutex_lock(&r->lock);
    command_t *commands = r->commands;
    size_t count = r->ncommands;
    r->commands = NULL;
    r->ncommands = r->commands_cap = 0;
    r->signalled = 0;
    __atomic_store_n(&r->queued, 0, __ATOMIC_RELAXED);
    pthread_mutex_unlock(&r->lock);
    int stop = 0;
    for (size_t k = 0; k < count; k++) {
        command_t *c = &commands[k];
        if (c->kind == CMD_ADD) {
            start_tunnel(r, c->tunnel);
        } else if (c->kind == CMD_STOP) {
            stop = 1;
        } else {
            tunnel_t *t = find_live(r, c->id);
            if (t == NULL) continue;
            /* Closing a tunnel still dialing leaves nothing to flush: it is aborted. */
            if (c->kind == CMD_CLOSE && t->state == ST_RELAY) begin_close(r, t); else abort_tunnel(r, t);
        }
    }
    free(commands);
    return stop;
}

static void *relay_main(void *arg) {
    Relay *r = (Relay *)arg;
    pthread_setname_np(pthread_self(), "wsgate-relay"); /* shown by top -H and /proc/<pid>/task/<tid>/comm */
    struct sched_param batch = {.sched_priority = 0};
    pthread_setschedparam(pthread_self(), SCHED_BATCH, &batch);
    struct epoll_event events[MAX_EVENTS];
    int stop = 0;
    while (!stop) {
        /* Dials are queued without waking the thread: it looks at the queue at least every LAZY_MAX_MS. */
        int timeout = r->sweep_ms && r->sweep_ms < LAZY_MAX_MS ? (int)r->sweep_ms : LAZY_MAX_MS;
        int n = epoll_wait(r->epfd, events, MAX_EVENTS, timeout);
        if (n < 0 && errno != EINTR) break;
        int woken = 0;
        for (int k = 0; k < n; k++) woken |= events[k].data.ptr == NULL;
        if (woken || __atomic_load_n(&r->queued, __ATOMIC_ACQUIRE)) stop = run_commands(r, woken) || stop;
        for (int k = 0; k < n; k++) {
            if (events[k].data.ptr == NULL) continue;
            end_t *e = (end_t *)events[k].data.ptr;
            tunnel_t *t = e->tunnel;
            /* A dial registered after the queue was taken: Python holds the lock until it is queued. */
            if (!t->linked) stop = run_commands(r, 0) || stop;
            if (e->fd < 0 || t->finished) continue;
            int i = (int)(e - t->ends);
            uint32_t got = events[k].events;
            if (t->state != ST_RELAY) {
                on_dial_event(r, t, got);
                continue;
            }
            if (got & EPOLLOUT) {
                on_writable(r, t, i);
                if (e->fd < 0 || t->finished) continue;
            }
            if ((got & (EPOLLIN | EPOLLHUP | EPOLLERR)) && !t->closing && t->ends[1 - i].pending_len == 0) {
                on_readable(r, t, i);
            } else if (got & (EPOLLHUP | EPOLLERR)) {
                abort_tunnel(r, t);
            }
        }
        for (size_t k = 0; k < r->nfreelater; k++) free_tunnel(r->freelater[k]);
        r->nfreelater = 0;
        if (r->sweep_ms) {
            uint64_t now = now_ms();
            if (now - r->last_sweep_ms >= r->sweep_ms) {
                r->last_sweep_ms = now;
                sweep_idle(r, now);
                for (size_t k = 0; k < r->nfreelater; k++) free_tunnel(r->freelater[k]);
                r->nfreelater = 0;
            }
        }
    }
    while (r->live) abort_tunnel(r, r->live);
    for (size_t k = 0; k < r->nfreelater; k++) free_tunnel(r->freelater[k]);
    r->nfreelater = 0;
    return NULL;
}

/* ---- the Python object ----------------------------------------------------------------------------- */

/* Queue a command and wake the thread (unless a wake is pending already). */
static int push_command(Relay *r, command_t command) {
    pthread_mutex_lock(&r->lock);
    int failed = grow((void **)&r->commands, &r->commands_cap, r->ncommands + 1, sizeof(command_t));
    int wake = 0;
    if (!failed) {
        r->commands[r->ncommands++] = command;
        __atomic_store_n(&r->queued, 1, __ATOMIC_RELEASE);
        wake = !r->signalled;
        r->signalled = 1;
    }
    pthread_mutex_unlock(&r->lock);
    if (failed) return -1;
    if (wake) signal_fd(r->wakefd);
    return 0;
}

static void stop_thread(Relay *r) {
    if (!r->started || r->stopped) return;
    r->stopped = 1;
    if (getpid() != r->owner) return;
    command_t stop = {.kind = CMD_STOP};
    if (push_command(r, stop) == 0) {
        Py_BEGIN_ALLOW_THREADS
        pthread_join(r->thread, NULL);
        Py_END_ALLOW_THREADS
    }
}

static PyObject *Relay_new(PyTypeObject *type, PyObject *args, PyObject *kwargs) {
    static char *keywords[] = {"flush_timeout_ms", NULL};
    unsigned long long flush_timeout_ms = 30000;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|$K:Relay", keywords, &flush_timeout_ms)) return NULL;
    Relay *r = (Relay *)type->tp_alloc(type, 0);
    if (r == NULL) return NULL;
    r->flush_timeout_ms = flush_timeout_ms;
    r->epfd = r->wakefd = r->donefd = -1;
    pthread_mutex_init(&r->lock, NULL);
    r->next_id = 1;
    r->epfd = epoll_create1(EPOLL_CLOEXEC);
    r->wakefd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    r->donefd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (r->epfd < 0 || r->wakefd < 0 || r->donefd < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        Py_DECREF(r);
        return NULL;
    }
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
    if (epoll_ctl(r->epfd, EPOLL_CTL_ADD, r->wakefd, &ev) != 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        Py_DECREF(r);
        return NULL;
    }
    /* Signals belong to the interpreter's main thread: the relay thread starts with all of them blocked. */
    sigset_t all, previous;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &previous);
    int rc = pthread_create(&r->thread, NULL, relay_main, r);
    pthread_sigmask(SIG_SETMASK, &previous, NULL);
    if (rc != 0) {
        errno = rc;
        PyErr_SetFromErrno(PyExc_OSError);
        Py_DECREF(r);
        return NULL;
    }
    r->started = 1;
    r->owner = getpid();
    return (PyObject *)r;
}

static void Relay_dealloc(Relay *r) {
    stop_thread(r);
    if (r->epfd >= 0) close(r->epfd);
    if (r->wakefd >= 0) close(r->wakefd);
    if (r->donefd >= 0) close(r->donefd);
    free(r->commands);
    for (size_t k = 0; k < r->ndone; k++) {
        /* Hand-backs nobody reaped: their descriptors are closed here. */
        free(r->done[k].data);
        if (r->done[k].kind == EV_HEAD) close((int)r->done[k].a);
    }
    free(r->done);
    free(r->freelater);
    pthread_mutex_destroy(&r->lock);
    Py_TYPE(r)->tp_free((PyObject *)r);
}

static int copy_pending(end_t *e, Py_buffer *data) {
    if (data->len == 0) return 0;
    e->pending = malloc((size_t)data->len);
    if (e->pending == NULL) return -1;
    memcpy(e->pending, data->buf, (size_t)data->len);
    e->pending_len = (size_t)data->len;
    return 0;
}

PyDoc_STRVAR(add_doc,
"add(client_fd, upstream_fd, to_client=b'', to_upstream=b'', *, idle_timeout_ms=0) -> int\n\n"
"Relay between two connected non-blocking TCP sockets from now on. The relay owns the descriptors (it\n"
"closes them); `to_client`/`to_upstream` are sent first. Returns the tunnel's id.");

static PyObject *Relay_add(Relay *r, PyObject *args, PyObject *kwargs) {
    static char *keywords[] = {"client_fd", "upstream_fd", "to_client", "to_upstream", "idle_timeout_ms", NULL};
    int fds[2];
    Py_buffer to_client = {0}, to_upstream = {0};
    unsigned long long idle_ms = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "ii|y*y*$K:add", keywords, &fds[0], &fds[1], &to_client,
                                     &to_upstream, &idle_ms))
        return NULL;
    PyObject *result = NULL;
    if (r->stopped) {
        PyErr_SetString(PyExc_RuntimeError, "relay is stopped");
        goto out;
    }
    if (fds[0] < 0 || fds[1] < 0 || fds[0] == fds[1]) {
        PyErr_SetString(PyExc_ValueError, "two distinct open descriptors are needed");
        goto out;
    }
    tunnel_t *t = calloc(1, sizeof(tunnel_t));
    if (t == NULL) {
        PyErr_NoMemory();
        goto out;
    }
    t->id = r->next_id++;
    t->idle_ms = idle_ms;
    t->received[0] = t->received[1] = -1;
    t->ends[0].fd = fds[0];
    t->ends[1].fd = fds[1];
    if (copy_pending(&t->ends[0], &to_client) != 0 || copy_pending(&t->ends[1], &to_upstream) != 0) {
        free(t->ends[0].pending);
        free(t->ends[1].pending);
        free(t);
        PyErr_NoMemory();
        goto out;
    }
    command_t add = {.kind = CMD_ADD, .id = t->id, .tunnel = t};
    uint64_t id = t->id;
    if (push_command(r, add) != 0) {
        free(t->ends[0].pending);
        free(t->ends[1].pending);
        free(t);
        PyErr_NoMemory();
        goto out;
    }
    result = PyLong_FromUnsignedLongLong(id);
out:
    if (to_client.obj) PyBuffer_Release(&to_client);
    if (to_upstream.obj) PyBuffer_Release(&to_upstream);
    return result;
}

PyDoc_STRVAR(dial_doc,
"dial(client_fd, host, port, request, *, connect_timeout_ms, response_timeout_ms=0, idle_timeout_ms=0,\n"
"     forward_101=True) -> int\n\n"
"Connect to host:port (an IPv4 or IPv6 literal; ValueError otherwise) from the relay thread, send `request`,\n"
"read the response head. A '101' head (when `forward_101`) goes to the client with what follows it and the\n"
"tunnel relays from then on; any other head comes back through reap() with the instance's descriptor.\n"
"The relay owns `client_fd` once this returns; a connect refused at once raises OSError and leaves it to the caller.");

static PyObject *Relay_dial(Relay *r, PyObject *args, PyObject *kwargs) {
    static char *keywords[] = {"client_fd", "host", "port", "request", "connect_timeout_ms", "response_timeout_ms",
                               "idle_timeout_ms", "forward_101", NULL};
    int client_fd, port, forward_101 = 1;
    const char *host;
    Py_buffer request = {0};
    unsigned long long connect_ms = 0, response_ms = 0, idle_ms = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "isiy*|$KKKp:dial", keywords, &client_fd, &host, &port, &request,
                                     &connect_ms, &response_ms, &idle_ms, &forward_101))
        return NULL;
    PyObject *result = NULL;
    int fd = -1;
    struct sockaddr_storage address;
    socklen_t address_len;
    memset(&address, 0, sizeof(address));
    struct sockaddr_in *v4 = (struct sockaddr_in *)&address;
    struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)&address;
    if (r->stopped) {
        PyErr_SetString(PyExc_RuntimeError, "relay is stopped");
        goto out;
    }
    if (client_fd < 0 || port <= 0 || port > 65535 || connect_ms == 0) {
        PyErr_SetString(PyExc_ValueError, "an open client descriptor, a port and a connect timeout are needed");
        goto out;
    }
    if (inet_pton(AF_INET, host, &v4->sin_addr) == 1) {
        v4->sin_family = AF_INET;
        v4->sin_port = htons((uint16_t)port);
        address_len = sizeof(*v4);
    } else if (inet_pton(AF_INET6, host, &v6->sin6_addr) == 1) {
        v6->sin6_family = AF_INET6;
        v6->sin6_port = htons((uint16_t)port);
        address_len = sizeof(*v6);
    } else {
        PyErr_Format(PyExc_ValueError, "not an IP address: %s", host);
        goto out;
    }
    fd = socket(address.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        goto out;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (connect(fd, (struct sockaddr *)&address, address_len) != 0 && errno != EINPROGRESS) {
        PyErr_SetFromErrno(PyExc_OSError);
        goto out;
    }
    /* On loopback the connection is usually up already: send at once, from this thread, so the relay thread
     * first hears of the dial when the answer comes. EAGAIN: still connecting (or, rarely, no room). */
    ssize_t sent = send(fd, request.buf, (size_t)request.len, MSG_NOSIGNAL);
    if (sent < 0 && errno != EAGAIN && errno != EWOULDBLOCK) {
        PyErr_SetFromErrno(PyExc_OSError);
        goto out;
    }
    tunnel_t *t = calloc(1, sizeof(tunnel_t));
    if (t == NULL) {
        PyErr_NoMemory();
        goto out;
    }
    t->state = sent < 0 ? ST_DIAL : ST_HEAD;
    t->created_ms = now_ms();
    t->forward_101 = forward_101;
    t->connect_timeout_ms = connect_ms;
    t->response_timeout_ms = response_ms;
    t->idle_ms = idle_ms;
    t->received[0] = t->received[1] = -1;
    t->ends[0].fd = client_fd;
    t->ends[1].fd = fd;
    t->ends[0].tunnel = t->ends[1].tunnel = t;
    Py_buffer rest = request;
    rest.buf = (char *)request.buf + (sent > 0 ? sent : 0);
    rest.len = request.len - (sent > 0 ? sent : 0);
    if (copy_pending(&t->ends[1], &rest) != 0) {
        free(t);
        PyErr_NoMemory();
        goto out;
    }
    end_t *up = &t->ends[1];
    up->events = t->state == ST_DIAL ? EPOLLOUT : EPOLLIN | (up->pending_len ? EPOLLOUT : 0);
    struct epoll_event ev = {.events = up->events, .data.ptr = up};
    /* Registered and queued under the lock: the thread, seeing an event for a tunnel it has not taken over yet,
     * takes the queue and so waits until the tunnel is in it. Not woken: the answer's event will do that. */
    uint64_t id = 0; /* read under the lock: once it is released the thread may finish and free the tunnel */
    pthread_mutex_lock(&r->lock);
    /* Room first: once registered, an event may reach the thread, which must then find the tunnel queued. */
    int failed = grow((void **)&r->commands, &r->commands_cap, r->ncommands + 1, sizeof(command_t)) != 0 ? ENOMEM : 0;
    if (!failed && epoll_ctl(r->epfd, EPOLL_CTL_ADD, fd, &ev) != 0) failed = errno;
    if (!failed) {
        id = t->id = r->next_id++;
        r->commands[r->ncommands++] = (command_t){.kind = CMD_ADD, .id = id, .tunnel = t};
        __atomic_store_n(&r->queued, 1, __ATOMIC_RELEASE);
    }
    pthread_mutex_unlock(&r->lock);
    if (failed) {
        free(up->pending);
        free(t);
        errno = failed;
        PyErr_SetFromErrno(PyExc_OSError);
        goto out;
    }
    fd = -1; /* the thread's now */
    result = PyLong_FromUnsignedLongLong(id);
out:
    if (fd >= 0) close(fd);
    PyBuffer_Release(&request);
    return result;
}

static PyObject *send_id_command(Relay *r, PyObject *arg, int kind) {
    unsigned long long id = PyLong_AsUnsignedLongLong(arg);
    if (id == (unsigned long long)-1 && PyErr_Occurred()) return NULL;
    if (r->stopped) Py_RETURN_NONE;
    command_t command = {.kind = kind, .id = id};
    if (push_command(r, command) != 0) return PyErr_NoMemory();
    Py_RETURN_NONE;
}

static PyObject *Relay_close(Relay *r, PyObject *arg) { return send_id_command(r, arg, CMD_CLOSE); }
static PyObject *Relay_abort(Relay *r, PyObject *arg) { return send_id_command(r, arg, CMD_ABORT); }

static PyObject *Relay_reap(Relay *r, PyObject *Py_UNUSED(ignored)) {
    size_t count;
    done_t *done = take_queue(&r->lock, r->donefd, (void **)&r->done, &r->ndone, &r->done_cap, &count);
    PyObject *list = PyList_New((Py_ssize_t)count);
    for (size_t k = 0; k < count; k++) {
        done_t *d = &done[k];
        PyObject *item = NULL;
        if (list != NULL) {
            if (d->data != NULL)
                item = Py_BuildValue("(KiLLy#)", (unsigned long long)d->id, d->kind, (long long)d->a, (long long)d->b,
                                     d->data, (Py_ssize_t)d->len);
            else
                item = Py_BuildValue("(KiLLO)", (unsigned long long)d->id, d->kind, (long long)d->a, (long long)d->b,
                                     Py_None);
        }
        free(d->data);
        if (item == NULL) {
            /* Keep going so every event's memory and descriptor is released. */
            if (d->kind == EV_HEAD) close((int)d->a);
            Py_CLEAR(list);
            continue;
        }
        PyList_SET_ITEM(list, (Py_ssize_t)k, item);
    }
    free(done);
    return list;
}

static PyObject *Relay_fileno(Relay *r, PyObject *Py_UNUSED(ignored)) { return PyLong_FromLong(r->donefd); }

static PyObject *Relay_stop(Relay *r, PyObject *Py_UNUSED(ignored)) {
    stop_thread(r);
    Py_RETURN_NONE;
}

static PyMethodDef Relay_methods[] = {
    {"add", (PyCFunction)(void (*)(void))Relay_add, METH_VARARGS | METH_KEYWORDS, add_doc},
    {"dial", (PyCFunction)(void (*)(void))Relay_dial, METH_VARARGS | METH_KEYWORDS, dial_doc},
    {"close", (PyCFunction)Relay_close, METH_O, "close(id): flush what is pending to each side, then close both."},
    {"abort", (PyCFunction)Relay_abort, METH_O, "abort(id): close both sides at once."},
    {"reap", (PyCFunction)Relay_reap, METH_NOARGS,
     "reap() -> [(id, kind, a, b, data)]: what happened since the last call. EV_DONE: a tunnel finished, a and b\n"
     "are the bytes the client and the instance sent. EV_UPGRADED: a dial got its 101 and relays. EV_FAILED: a\n"
     "dial failed, a is FAIL_* and b an errno or 0. EV_HEAD: a dial's head is Python's, a is the instance's\n"
     "descriptor (the caller's to close) and data what was read from it."},
    {"fileno", (PyCFunction)Relay_fileno, METH_NOARGS, "The eventfd that becomes readable when tunnels finish."},
    {"stop", (PyCFunction)Relay_stop, METH_NOARGS, "Abort every tunnel and stop the thread (idempotent)."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject RelayType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "gateway._relay.Relay",
    .tp_basicsize = sizeof(Relay),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A native relay thread with its own epoll set; see the module's docstring.",
    .tp_new = Relay_new,
    .tp_dealloc = (destructor)Relay_dealloc,
    .tp_methods = Relay_methods,
};

static struct PyModuleDef relay_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "gateway._relay",
    .m_doc = "Native byte relay for upgraded connections (one epoll thread per worker process).",
    .m_size = -1,
};

PyMODINIT_FUNC PyInit__relay(void) {
    if (PyType_Ready(&RelayType) < 0) return NULL;
    PyObject *module = PyModule_Create(&relay_module);
    if (module == NULL) return NULL;
    Py_INCREF(&RelayType);
    if (PyModule_AddObject(module, "Relay", (PyObject *)&RelayType) < 0) {
        Py_DECREF(&RelayType);
        Py_DECREF(module);
        return NULL;
    }
    static const struct { const char *name; int value; } constants[] = {
        {"CHUNK_BYTES", CHUNK_BYTES}, {"EV_DONE", EV_DONE}, {"EV_UPGRADED", EV_UPGRADED},
        {"EV_FAILED", EV_FAILED}, {"EV_HEAD", EV_HEAD}, {"FAIL_CONNECT", FAIL_CONNECT},
        {"FAIL_CONNECT_TIMEOUT", FAIL_CONNECT_TIMEOUT}, {"FAIL_RESPONSE_TIMEOUT", FAIL_RESPONSE_TIMEOUT},
        {"FAIL_CLOSED", FAIL_CLOSED}, {"FAIL_ABORTED", FAIL_ABORTED},
    };
    for (size_t k = 0; k < sizeof(constants) / sizeof(constants[0]); k++) {
        if (PyModule_AddIntConstant(module, constants[k].name, constants[k].value) < 0) {
            Py_DECREF(module);
            return NULL;
        }
    }
    return module;
}
