/* gateway._relay: dialed upgrades. `Relay.dial` (run by the Python thread) connects, sends the request and
 * registers the socket without waking the relay thread; the functions before it are the thread's side: reading the
 * response head, then forwarding a 101 and relaying, or handing the head and the socket back to Python. */
#include "_relay.h"

/* ---- dialed tunnels: connect, send the request, read the response head ------------------------------ */

/* The dial ended before any relaying: report why and close both descriptors. */
void fail_dial(Relay *r, tunnel_t *t, int reason, int err) {
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

/* The instance answered 101: the head and anything after it go to the client, then the relay starts. The client
 * gets them at the end of the loop's turn (arm_upgrades), after the one wake-up of Python for the turn's events:
 * so Python hears of a tunnel before its client does, and a turn of 101s wakes it once. */
static void upgrade(Relay *r, tunnel_t *t) {
    end_t *client = &t->ends[0], *up = &t->ends[1];
    report_quiet(r, t, EV_UPGRADED, 0, 0);
    t->state = ST_RELAY;
    client->borrowed = 0; /* the thread's from the 101 on: Python forgets it when it hears of the 101 */
    t->deadline_ms = 0;
    up->read_bytes += t->head_len;
    client->pending = t->head;
    client->pending_len = t->head_len;
    client->pending_off = 0;
    t->head = NULL;
    t->head_len = t->head_cap = 0;
    t->active_at_ms = now_ms();
    if (grow((void **)&r->arming, &r->arming_cap, r->narming + 1, sizeof(tunnel_t *)) == 0) {
        r->arming[r->narming++] = t;
        t->arming = 1;
        return;
    }
    wake_python(r); /* out of memory: at once */
    const int registered[2] = {0, 1};
    arm_relay(r, t, registered);
}

/* The end of the turn for its 101s: Python is woken, then each client gets its 101 and its tunnel starts (one
 * aborted meanwhile is skipped; one closed meanwhile closes now). Runs before the turn frees finished tunnels. */
void arm_upgrades(Relay *r) {
    wake_python(r);
    const int registered[2] = {0, 1};
    for (size_t k = 0; k < r->narming; k++) {
        tunnel_t *t = r->arming[k];
        int then_close = t->arming == 2;
        t->arming = 0;
        if (t->finished) continue;
        arm_relay(r, t, registered);
        if (then_close && !t->finished) begin_close(r, t);
    }
    r->narming = 0;
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
        const char *end = find_head_end(t->head + from, t->head_len - from);
        if (end != NULL) {
            if (is_upgrade_head(t, end)) upgrade(r, t); else hand_back(r, t);
            return 1;
        }
    }
}

void on_dial_event(Relay *r, tunnel_t *t, uint32_t got) {
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
void start_dial(Relay *r, tunnel_t *t) {
    if (link_live(r, t) != 0) {
        fail_dial(r, t, FAIL_CLOSED, ENOMEM);
        return;
    }
    if (t->state == ST_DIAL) {
        t->deadline_ms = t->created_ms + t->connect_timeout_ms;
        want_sweep(r, t->connect_timeout_ms / 4);
    } else if (t->response_timeout_ms) {
        t->deadline_ms = t->created_ms + t->response_timeout_ms;
    }
    if (t->response_timeout_ms) want_sweep(r, t->response_timeout_ms / 4);
}

/* ---- the Python entry point ----------------------------------------------------------------------- */

const char dial_doc[] =
"dial(client_fd, host, port, request, *, connect_timeout_ms, response_timeout_ms=0, idle_timeout_ms=0,\n"
"     forward_101=True) -> int\n\n"
"Connect to host:port (an IPv4 or IPv6 literal; ValueError otherwise) and send `request` from the calling\n"
"thread without blocking; the relay thread reads the response head. A '101' head (when `forward_101`) goes\n"
"to the client with what follows it and the tunnel relays from then on; any other head comes back through\n"
"reap() with the instance's descriptor. The relay owns `client_fd` once this returns; a connect refused at\n"
"once raises OSError and leaves it to the caller.";

/* The dial itself: 0 with the tunnel's id in *id, or an errno value with nothing started (the client untouched,
 * no Python exception set). Runs on the Python thread: from Relay.dial and dial_fast, and from the HTTP lane
 * through the capsule (relay_api_dial). */
static int dial_core(Relay *r, int client_fd, const struct sockaddr *address, socklen_t address_len,
                     const char *request, size_t request_len, uint64_t connect_ms, uint64_t response_ms,
                     uint64_t idle_ms, int forward_101, int borrow, int quiet, uint64_t *id_out) {
    if (r->stopped) return EPIPE;
    int fd = socket(address->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return errno;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    int failed = 0;
    if (connect(fd, address, address_len) != 0 && errno != EINPROGRESS) {
        failed = errno;
        close(fd);
        return failed;
    }
    /* On loopback the connection is usually up already: send at once, from this thread, so the relay thread
     * first hears of the dial when the answer comes. EAGAIN: still connecting (or, rarely, no room). */
    ssize_t sent = send(fd, request, request_len, MSG_NOSIGNAL);
    if (sent < 0 && errno != EAGAIN && errno != EWOULDBLOCK) {
        failed = errno;
        close(fd);
        return failed;
    }
    tunnel_t *t = tunnel_new(client_fd, fd, idle_ms);
    if (t == NULL) {
        close(fd);
        return ENOMEM;
    }
    t->state = sent < 0 ? ST_DIAL : ST_HEAD;
    t->created_ms = now_ms();
    t->forward_101 = forward_101;
    t->quiet = quiet;
    t->ends[0].borrowed = borrow;
    t->connect_timeout_ms = connect_ms;
    t->response_timeout_ms = response_ms;
    size_t off = sent > 0 ? (size_t)sent : 0;
    end_t *up = &t->ends[1];
    if (request_len > off && append_pending(up, request + off, request_len - off) != 0) {
        free(t);
        close(fd);
        return ENOMEM;
    }
    up->events = t->state == ST_DIAL ? EPOLLOUT : EPOLLIN | (up->pending_len ? EPOLLOUT : 0);
    struct epoll_event ev = {.events = up->events, .data.ptr = up};
    /* Registered and queued under the lock: the thread, seeing an event for a tunnel it has not taken over yet,
     * takes the queue and so waits until the tunnel is in it. Not woken: the answer's event will do that. */
    uint64_t id = 0; /* read under the lock: once it is released the thread may finish and free the tunnel */
    pthread_mutex_lock(&r->lock);
    /* Room first: once registered, an event may reach the thread, which must then find the tunnel queued. */
    failed = grow((void **)&r->commands, &r->commands_cap, r->ncommands + 1, sizeof(command_t)) != 0 ? ENOMEM : 0;
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
        close(fd);
        return failed;
    }
    *id_out = id;
    return 0;
}

/* Relay.dial and dial_fast once their arguments are read; releases `request`. */
static PyObject *dial_with(Relay *r, int client_fd, const char *host, int port, Py_buffer request,
                           unsigned long long connect_ms, unsigned long long response_ms, unsigned long long idle_ms,
                           int forward_101, int borrow) {
    PyObject *result = NULL;
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
    uint64_t id = 0;
    int failed = dial_core(r, client_fd, (struct sockaddr *)&address, address_len, request.buf, (size_t)request.len,
                           connect_ms, response_ms, idle_ms, forward_101, borrow, 0, &id);
    if (failed) {
        errno = failed;
        PyErr_SetFromErrno(PyExc_OSError);
        goto out;
    }
    result = PyLong_FromUnsignedLongLong(id);
out:
    PyBuffer_Release(&request);
    return result;
}

PyObject *Relay_dial(Relay *r, PyObject *args, PyObject *kwargs) {
    static char *keywords[] = {"client_fd", "host", "port", "request", "connect_timeout_ms", "response_timeout_ms",
                               "idle_timeout_ms", "forward_101", NULL};
    int client_fd, port, forward_101 = 1;
    const char *host;
    Py_buffer request = {0};
    unsigned long long connect_ms = 0, response_ms = 0, idle_ms = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "isiy*|$KKKp:dial", keywords, &client_fd, &host, &port, &request,
                                     &connect_ms, &response_ms, &idle_ms, &forward_101))
        return NULL;
    return dial_with(r, client_fd, host, port, request, connect_ms, response_ms, idle_ms, forward_101, 0);
}

const char dial_fast_doc[] =
"dial_fast(client_fd, host, port, request, connect_timeout_ms, response_timeout_ms, idle_timeout_ms, /) -> int\n\n"
"dial() with its arguments in order and forward_101 on: the call the HTTP lane's upgrades make once each, read\n"
"without PyArg_ParseTupleAndKeywords (about 3,400 instructions a call with the timeouts as keywords). Unlike\n"
"dial(), client_fd stays the caller's until the 101: the thread never closes it before (a failure or a head\n"
"handed back leave it open, as does an abort before the 101), and owns it from the 101 (EV_UPGRADED) on, so the\n"
"caller needs no duplicate.";

PyObject *Relay_dial_fast(Relay *r, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 7) {
        PyErr_SetString(PyExc_TypeError, "dial_fast takes 7 positional arguments");
        return NULL;
    }
    long client_fd = PyLong_AsLong(args[0]), port = PyLong_AsLong(args[2]);
    const char *host = PyUnicode_Check(args[1]) ? PyUnicode_AsUTF8(args[1]) : NULL;
    unsigned long long ms[3];
    for (int k = 0; k < 3; k++) ms[k] = PyLong_AsUnsignedLongLong(args[4 + k]);
    if (PyErr_Occurred()) return NULL;
    if (host == NULL || !PyBytes_Check(args[3])) {
        PyErr_SetString(PyExc_TypeError, "dial_fast: host is a str and request bytes");
        return NULL;
    }
    if (client_fd < 0 || client_fd > INT_MAX || port < 0 || port > INT_MAX) {
        PyErr_SetString(PyExc_ValueError, "an open client descriptor, a port and a connect timeout are needed");
        return NULL;
    }
    Py_buffer request;
    if (PyObject_GetBuffer(args[3], &request, PyBUF_SIMPLE) != 0) return NULL;
    return dial_with(r, (int)client_fd, host, (int)port, request, ms[0], ms[1], ms[2], 1, 1);
}

/* ---- the HTTP lane's entry point (gateway/_relay_api.h) -------------------------------------------------- */

static PyTypeObject *relay_type;

static int relay_api_dial(PyObject *relay, int client_fd, uint32_t ip, uint16_t port, const char *request,
                          size_t len, uint64_t connect_ms, uint64_t response_ms, uint64_t idle_ms, uint64_t *id) {
    if (relay_type == NULL || !PyObject_TypeCheck(relay, relay_type) || client_fd < 0 || port == 0
        || connect_ms == 0)
        return EINVAL;
    struct sockaddr_in address = {.sin_family = AF_INET, .sin_port = htons(port), .sin_addr.s_addr = ip};
    return dial_core((Relay *)relay, client_fd, (struct sockaddr *)&address, sizeof(address), request, len,
                     connect_ms, response_ms, idle_ms, 1, 1, 1, id);
}

static const relay_api_t relay_api = {.dial = relay_api_dial};

PyObject *relay_api_capsule(PyTypeObject *type) {
    relay_type = type;
    return PyCapsule_New((void *)&relay_api, RELAY_API_CAPSULE, NULL);
}
