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
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
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
} tunnel_t;

enum { CMD_ADD, CMD_CLOSE, CMD_ABORT, CMD_STOP };

typedef struct {
    int kind;
    uint64_t id;
    tunnel_t *tunnel; /* CMD_ADD */
} command_t;

typedef struct {
    uint64_t id;
    int64_t received[2];
} done_t;

typedef struct {
    PyObject_HEAD
    int epfd, wakefd, donefd;
    pthread_t thread;
    int started, stopped;
    pthread_mutex_t lock;
    command_t *commands;
    size_t ncommands, commands_cap;
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

static void report_done(Relay *r, tunnel_t *t) {
    pthread_mutex_lock(&r->lock);
    if (grow((void **)&r->done, &r->done_cap, r->ndone + 1, sizeof(done_t)) == 0) {
        r->done[r->ndone].id = t->id;
        r->done[r->ndone].received[0] = t->received[0];
        r->done[r->ndone].received[1] = t->received[1];
        r->ndone++;
    }
    pthread_mutex_unlock(&r->lock);
    uint64_t one = 1;
    ssize_t unused = write(r->donefd, &one, sizeof(one));
    (void)unused;
}

/* Free tunnels only after the current batch of epoll events: a later event may still point at them. */
static void maybe_finish(Relay *r, tunnel_t *t) {
    if (t->finished || t->ends[0].fd >= 0 || t->ends[1].fd >= 0) return;
    t->finished = 1;
    if (t->prev) t->prev->next = t->next; else r->live = t->next;
    if (t->next) t->next->prev = t->prev;
    report_done(r, t);
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

/* What epoll should watch on end i: reading while nothing waits to go the other way, writing while bytes wait. */
static void update_interest(Relay *r, tunnel_t *t, int i) {
    end_t *e = &t->ends[i];
    if (e->fd < 0) return;
    end_t *other = &t->ends[1 - i];
    uint32_t want = 0;
    if (!t->closing && other->pending_len == 0) want |= EPOLLIN;
    if (e->pending_len) want |= EPOLLOUT;
    if (want == e->events) return;
    struct epoll_event ev = {.events = want, .data.ptr = e};
    if (epoll_ctl(r->epfd, EPOLL_CTL_MOD, e->fd, &ev) == 0) e->events = want;
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

static void start_tunnel(Relay *r, tunnel_t *t) {
    t->prev = NULL;
    t->next = r->live;
    if (r->live) r->live->prev = t;
    r->live = t;
    t->active_at_ms = now_ms();
    if (t->idle_ms) want_sweep(r, t->idle_ms / 4);
    /* Bytes that arrived with the heads go first. */
    for (int i = 0; i < 2; i++) {
        t->ends[i].tunnel = t;
        if (t->ends[i].pending_len && flush(&t->ends[i]) != 0) {
            abort_tunnel(r, t);
            return;
        }
    }
    /* Registered with their final interest: one epoll_ctl per socket. */
    for (int i = 0; i < 2; i++) {
        end_t *e = &t->ends[i];
        uint32_t want = (t->ends[1 - i].pending_len ? 0 : EPOLLIN) | (e->pending_len ? EPOLLOUT : 0);
        struct epoll_event ev = {.events = want, .data.ptr = e};
        if (epoll_ctl(r->epfd, EPOLL_CTL_ADD, e->fd, &ev) != 0) {
            abort_tunnel(r, t);
            return;
        }
        e->events = want;
    }
}

static void sweep_idle(Relay *r, uint64_t now) {
    tunnel_t *t = r->live;
    while (t) {
        tunnel_t *next = t->next;
        if (t->closing) {
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

/* Returns 1 when asked to stop. */
static int run_commands(Relay *r) {
    uint64_t value;
    ssize_t unused = read(r->wakefd, &value, sizeof(value));
    (void)unused;
    pthread_mutex_lock(&r->lock);
    command_t *commands = r->commands;
    size_t count = r->ncommands;
    r->commands = NULL;
    r->ncommands = r->commands_cap = 0;
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
            if (c->kind == CMD_CLOSE) begin_close(r, t); else abort_tunnel(r, t);
        }
    }
    free(commands);
    return stop;
}

static void *relay_main(void *arg) {
    Relay *r = (Relay *)arg;
    struct epoll_event events[MAX_EVENTS];
    int stop = 0;
    while (!stop) {
        int timeout = r->sweep_ms ? (int)r->sweep_ms : -1;
        int n = epoll_wait(r->epfd, events, MAX_EVENTS, timeout);
        if (n < 0 && errno != EINTR) break;
        for (int k = 0; k < n; k++) {
            if (events[k].data.ptr == NULL) {
                stop = run_commands(r) || stop;
                continue;
            }
            end_t *e = (end_t *)events[k].data.ptr;
            tunnel_t *t = e->tunnel;
            if (e->fd < 0 || t->finished) continue;
            int i = (int)(e - t->ends);
            uint32_t got = events[k].events;
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
        for (size_t k = 0; k < r->nfreelater; k++) free(r->freelater[k]);
        r->nfreelater = 0;
        if (r->sweep_ms) {
            uint64_t now = now_ms();
            if (now - r->last_sweep_ms >= r->sweep_ms) {
                r->last_sweep_ms = now;
                sweep_idle(r, now);
                for (size_t k = 0; k < r->nfreelater; k++) free(r->freelater[k]);
                r->nfreelater = 0;
            }
        }
    }
    while (r->live) abort_tunnel(r, r->live);
    for (size_t k = 0; k < r->nfreelater; k++) free(r->freelater[k]);
    r->nfreelater = 0;
    return NULL;
}

/* ---- the Python object ----------------------------------------------------------------------------- */

static int push_command(Relay *r, command_t command) {
    pthread_mutex_lock(&r->lock);
    /* The thread reads the eventfd before it takes the queue: a non-empty queue is already signalled. */
    int wake = r->ncommands == 0;
    int failed = grow((void **)&r->commands, &r->commands_cap, r->ncommands + 1, sizeof(command_t));
    if (!failed) r->commands[r->ncommands++] = command;
    pthread_mutex_unlock(&r->lock);
    if (failed) return -1;
    if (wake) {
        uint64_t one = 1;
        ssize_t unused = write(r->wakefd, &one, sizeof(one));
        (void)unused;
    }
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
    uint64_t value;
    ssize_t unused = read(r->donefd, &value, sizeof(value));
    (void)unused;
    pthread_mutex_lock(&r->lock);
    done_t *done = r->done;
    size_t count = r->ndone;
    r->done = NULL;
    r->ndone = r->done_cap = 0;
    pthread_mutex_unlock(&r->lock);
    PyObject *list = PyList_New((Py_ssize_t)count);
    if (list == NULL) {
        free(done);
        return NULL;
    }
    for (size_t k = 0; k < count; k++) {
        PyObject *item = Py_BuildValue("(KLL)", (unsigned long long)done[k].id, (long long)done[k].received[0],
                                       (long long)done[k].received[1]);
        if (item == NULL) {
            Py_DECREF(list);
            free(done);
            return NULL;
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
    {"close", (PyCFunction)Relay_close, METH_O, "close(id): flush what is pending to each side, then close both."},
    {"abort", (PyCFunction)Relay_abort, METH_O, "abort(id): close both sides at once."},
    {"reap", (PyCFunction)Relay_reap, METH_NOARGS,
     "reap() -> [(id, client_bytes, upstream_bytes)]: tunnels finished since the last call."},
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
    if (PyModule_AddIntConstant(module, "CHUNK_BYTES", CHUNK_BYTES) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
