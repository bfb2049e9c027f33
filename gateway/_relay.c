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
 * - EOF, a reset or an error from either side, or close(): stop relaying; each side still open gets what is
 *   pending for it, then a lingering close (gateway/linger.py states the rule for every relay): its write side is
 *   shut down and what it still sends is read and dropped until its EOF or for linger_ms (5 s), so that closing
 *   it with unread input cannot make the kernel reset the connection and destroy the last bytes (a close frame);
 * - abort(): close both at once;
 * - an optional idle timeout closes a tunnel that moved no byte for that long;
 * - a closing tunnel whose peer does not take its last bytes within flush_timeout_ms (30 s, nginx's
 *   send_timeout is 60 s) is aborted, so a reader that stopped reading cannot hold two descriptors forever;
 * - close and abort commands find their tunnel through an index by id (_relay_index.c), so draining N tunnels
 *   costs O(N);
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
 *
 * `Relay(sockmap=True)` lets the kernel move the bytes of the tunnels it can (_relay_sockmap.c); the thread keeps
 * the rules above and takes a tunnel back when they need it. With `sockmap_after_reads=N` a tunnel goes to the
 * kernel only once the thread has relayed N reads of it (see Relay.sm_after_reads).
 *
 * Files: this one is the Python type; _relay_thread.c the thread's loop and relaying; _relay_dial.c the dialed
 * upgrades; _relay_index.c the tunnels by id; _relay_sockmap.c the sockmap relay; _relay.h what they share.
 */
#include "_relay.h"

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
    static char *keywords[] = {"flush_timeout_ms", "linger_ms", "sockmap", "sockmap_after_reads", NULL};
    unsigned long long flush_timeout_ms = 30000, linger_ms = 5000, after_reads = 0;
    int sockmap = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|$KKpK:Relay", keywords, &flush_timeout_ms, &linger_ms, &sockmap,
                                     &after_reads))
        return NULL;
    Relay *r = (Relay *)type->tp_alloc(type, 0);
    if (r == NULL) return NULL;
    r->sm.prog = r->sm.cookies = r->sm.vals = r->sm.targets = r->sm.sources = -1;
    snprintf(r->sm.why, sizeof(r->sm.why), "not asked for");
    r->flush_timeout_ms = flush_timeout_ms;
    r->linger_ms = linger_ms;
    r->sm_after_reads = after_reads;
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
    /* Before the thread starts: it reads r->sm without a lock. A failure leaves the thread relaying alone. */
    if (sockmap) sockmap_init(&r->sm);
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
    free(r->arming);
    free(r->index);
    sockmap_free(&r->sm);
    pthread_mutex_destroy(&r->lock);
    Py_TYPE(r)->tp_free((PyObject *)r);
}

tunnel_t *tunnel_new(int client_fd, int upstream_fd, uint64_t idle_ms) {
    tunnel_t *t = calloc(1, sizeof(tunnel_t));
    if (t == NULL) return NULL;
    t->idle_ms = idle_ms;
    t->sm_slot = -1;
    t->received[0] = t->received[1] = -1;
    t->ends[0].fd = client_fd;
    t->ends[1].fd = upstream_fd;
    t->ends[0].tunnel = t->ends[1].tunnel = t;
    return t;
}

int copy_pending(end_t *e, Py_buffer *data) {
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
    tunnel_t *t = tunnel_new(fds[0], fds[1], idle_ms);
    if (t == NULL) {
        PyErr_NoMemory();
        goto out;
    }
    t->id = r->next_id++;
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

/* One event as (id, kind, a, b, data or None), built directly: Py_BuildValue parsed its format per event, about
 * 1,700 instructions, and a handshake makes two events. */
static PyObject *event_tuple(const done_t *d) {
    PyObject *item = PyTuple_New(5);
    if (item == NULL) return NULL;
    PyObject *fields[5] = {PyLong_FromUnsignedLongLong((unsigned long long)d->id), PyLong_FromLong(d->kind),
                           PyLong_FromLongLong((long long)d->a), PyLong_FromLongLong((long long)d->b),
                           d->data != NULL ? PyBytes_FromStringAndSize(d->data, (Py_ssize_t)d->len)
                                           : Py_NewRef(Py_None)};
    int complete = 1;
    for (Py_ssize_t k = 0; k < 5; k++) {
        if (fields[k] == NULL) complete = 0;
        PyTuple_SET_ITEM(item, k, fields[k]); /* a NULL slot is fine for the tuple's dealloc */
    }
    if (!complete) Py_CLEAR(item);
    return item;
}

static PyObject *Relay_reap(Relay *r, PyObject *Py_UNUSED(ignored)) {
    /* donefd is read before the queue is taken, and only when the queue was signalled (the lane reaps quiet
     * events on its own wake-ups: no read that finds nothing then). Anything queued after the take signals again. */
    pthread_mutex_lock(&r->lock);
    int signalled = r->done_signalled;
    pthread_mutex_unlock(&r->lock);
    size_t count;
    done_t *done = take_queue(r, signalled ? r->donefd : -1, (void **)&r->done, &r->ndone, &r->done_cap,
                              &r->done_signalled, &r->done_waiting, &count);
    PyObject *list = PyList_New((Py_ssize_t)count);
    for (size_t k = 0; k < count; k++) {
        done_t *d = &done[k];
        PyObject *item = list != NULL ? event_tuple(d) : NULL;
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

/* Read without the lock: a stale answer only moves the reap to the next wake-up or the quiet deadline. */
static PyObject *Relay_pending(Relay *r, PyObject *Py_UNUSED(ignored)) {
    return PyBool_FromLong(__atomic_load_n(&r->done_waiting, __ATOMIC_ACQUIRE));
}

static PyObject *Relay_stats(Relay *r, PyObject *Py_UNUSED(ignored)) {
    /* Written by the relay thread without a lock: each value is read whole, not the set at one instant. */
    return Py_BuildValue("{sKsKsKsKsKsK}", "live",
                         (unsigned long long)__atomic_load_n(&r->index_count, __ATOMIC_RELAXED),
                         "lookups", (unsigned long long)__atomic_load_n(&r->lookups, __ATOMIC_RELAXED),
                         "probes", (unsigned long long)__atomic_load_n(&r->probes, __ATOMIC_RELAXED),
                         "sockmap_entered", (unsigned long long)__atomic_load_n(&r->sm.entered, __ATOMIC_RELAXED),
                         "sockmap_left", (unsigned long long)__atomic_load_n(&r->sm.left, __ATOMIC_RELAXED),
                         "sockmap_pauses", (unsigned long long)__atomic_load_n(&r->sm.pauses, __ATOMIC_RELAXED));
}

static PyObject *Relay_sockmap(Relay *r, PyObject *Py_UNUSED(ignored)) {
    return Py_BuildValue("(Os)", r->sm.on ? Py_True : Py_False, r->sm.why);
}

static PyObject *Relay_stop(Relay *r, PyObject *Py_UNUSED(ignored)) {
    stop_thread(r);
    Py_RETURN_NONE;
}

static PyMethodDef Relay_methods[] = {
    {"add", (PyCFunction)(void (*)(void))Relay_add, METH_VARARGS | METH_KEYWORDS, add_doc},
    {"dial", (PyCFunction)(void (*)(void))Relay_dial, METH_VARARGS | METH_KEYWORDS, dial_doc},
    {"dial_fast", (PyCFunction)(void (*)(void))Relay_dial_fast, METH_FASTCALL, dial_fast_doc},
    {"close", (PyCFunction)Relay_close, METH_O, "close(id): flush what is pending to each side, then close both."},
    {"abort", (PyCFunction)Relay_abort, METH_O, "abort(id): close both sides at once."},
    {"reap", (PyCFunction)Relay_reap, METH_NOARGS,
     "reap() -> [(id, kind, a, b, data)]: what happened since the last call. EV_DONE: a tunnel finished, a and b\n"
     "are the bytes the client and the instance sent. EV_UPGRADED: a dial got its 101 and relays. EV_FAILED: a\n"
     "dial failed, a is FAIL_* and b an errno or 0. EV_HEAD: a dial's head is Python's, a is the instance's\n"
     "descriptor (the caller's to close) and data what was read from it."},
    {"fileno", (PyCFunction)Relay_fileno, METH_NOARGS, "The eventfd that becomes readable when tunnels finish."},
    {"pending", (PyCFunction)Relay_pending, METH_NOARGS,
     "pending() -> whether events wait for reap(): quiet ones (the lane's own dials) do not make fileno()\n"
     "readable until QUIET_REPORT_MS have passed."},
    {"stats", (PyCFunction)Relay_stats, METH_NOARGS,
     "stats() -> {'live', 'lookups', 'probes', 'sockmap_entered', 'sockmap_left'}: live tunnels, id lookups and\n"
     "the index slots they examined, tunnels handed to the kernel and those it gave back to the thread."},
    {"sockmap", (PyCFunction)Relay_sockmap, METH_NOARGS,
     "sockmap() -> (on, why): whether the kernel relays plain tunnels (_relay_sockmap.c), and why not."},
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
    PyObject *api = relay_api_capsule(&RelayType);
    if (api == NULL || PyModule_AddObject(module, "_dial_api", api) < 0) {
        Py_XDECREF(api);
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
