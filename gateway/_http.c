/* gateway._http: plain HTTP/1.1 requests proxied below Python, on the event loop's own thread.
 *
 * Why: a proxied request on the Python path costs about 440k instructions (two uvloop transports, a coroutine
 * with its futures and timers, head parsing and serialising), 20 times nginx's. Here one epoll set per worker
 * (`Lane.fileno()`, watched with `loop.add_reader`) holds the client connections and a pool of keep-alive
 * connections to instances, and the event loop watches the listening socket itself (`Lane.run(True)` accepts);
 * `Lane.run()` does the I/O of every ready descriptor in C, and calls
 * Python once per request head: `decide(head, remote)`, which routes and applies the filters and returns a tuple
 * (token, request head bytes for the instance, IPv4 address as an int in network order, port, body length,
 * keep the client connection, the response has no body (HEAD), connect timeout ms, response timeout ms[, rate
 * limit, upgrade]), or None. With `upgrade` true the rest is unused: the connection goes back at once as K_UPGRADE
 * (Python gives the descriptor to the relay thread's dial, gateway/proxy/lane_upgrades.py), or as K_NEW when
 * bytes follow the head.
 *
 * What the lane does: read a head, send it with its body (a Content-Length body already read whole) to a
 * pooled or new connection, read the response head, pass on a response whose body has a Content-Length (hop-by-
 * hop headers removed, as the Python path does), pool the instance's connection, read the next head.
 * Everything else goes back to Python whole (`run()`'s hand-backs: kind, token, client fd, bytes read from the
 * client and not used, instance fd or -1, bytes read from the instance, when the head was complete in
 * time.monotonic() seconds), and the Python path serves that
 * connection from then on with its own rules, statuses and bodies:
 *   K_NEW: decide said None (no route, actuator, upgrade, a filter needing I/O, chunked body ...), a bad or too
 *          large head, or an EOF inside one;
 *   K_FORWARD: nothing was sent yet (the connect failed or timed out, the body was not all there): forward it;
 *   K_RESPONSE: a response head the lane does not relay (1xx, chunked, until close, malformed, too large);
 *   K_TIMEOUT, K_CLOSED: the instance did not answer in time, or closed without answering (a pooled connection
 *          is first dialed afresh once, as Python does);
 *   K_HEAD_TIMEOUT: no complete head in time (408); K_LINGER: answered, close lingering (input left unread);
 *   K_UPGRADE: decide said it is a WebSocket upgrade the relay thread dials (the client's bytes are the head, the
 *          instance's the client's Sec-WebSocket-Key: decide saw WS_KEY_MARK in its place, see _http.h).
 * Finished requests are reported by `run()` as (token, status, body bytes, failed: 0, 1 timeout inside the
 * body, 2 instance closed inside the body, 3 client gone; when the head was complete) for the counters and the
 * access log. The token may be the same object for many requests (decide caches them).
 *
 * Files: this one is the Python type; _http_io.c the connections; _http_util.c buffers, descriptors, the pool
 * and response heads; _http.h what they share.
 */
#include "_http.h"

#include <errno.h>
#include <structmember.h>
#include <sys/epoll.h>
#include <sys/timerfd.h>
#include <unistd.h>

#define TICK_MS 50  /* how often deadlines are looked at */

static PyObject *Lane_new(PyTypeObject *type, PyObject *args, PyObject *kwargs) {
    static char *keywords[] = {"decide", "head_timeout_ms", "max_head_bytes", NULL};
    PyObject *decide;
    unsigned long long head_timeout_ms = 0;
    Py_ssize_t max_head_bytes = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O$Kn:Lane", keywords, &decide, &head_timeout_ms,
                                     &max_head_bytes))
        return NULL;
    Lane *l = (Lane *)type->tp_alloc(type, 0);
    if (l == NULL) return NULL;
    l->epfd = l->listenfd = l->timerfd = l->redis_fd = -1;
    Py_INCREF(decide);
    l->decide = decide;
    l->head_timeout_ms = head_timeout_ms;
    l->max_head_bytes = (size_t)max_head_bytes;
    l->done = PyList_New(0);
    l->handbacks = PyList_New(0);
    if (l->done == NULL || l->handbacks == NULL) {
        Py_DECREF(l);
        return NULL;
    }
    l->epfd = epoll_create1(EPOLL_CLOEXEC);
    l->timerfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    struct itimerspec tick = {.it_interval = {0, TICK_MS * 1000000L}, .it_value = {0, TICK_MS * 1000000L}};
    if (l->epfd < 0 || l->timerfd < 0 || timerfd_settime(l->timerfd, 0, &tick, NULL) != 0
        || lane_watch(l, l->timerfd, SLOT_TIMER, NULL) != 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        Py_DECREF(l);
        return NULL;
    }
    return (PyObject *)l;
}

static void close_all(Lane *l) {
    while (l->live != NULL) lane_close_conn(l, l->live);
    redis_close(l);
    lane_pool_clear(l);
    if (l->listenfd >= 0) {
        lane_forget(l, l->listenfd);
        close(l->listenfd);
        l->listenfd = -1;
    }
}

static void Lane_dealloc(Lane *l) {
    close_all(l);
    if (l->timerfd >= 0) close(l->timerfd);
    if (l->epfd >= 0) close(l->epfd);
    free(l->slots);
    free(l->owners);
    free(l->pool);
    Py_XDECREF(l->decide);
    Py_XDECREF(l->last_remote);
    Py_XDECREF(l->done);
    Py_XDECREF(l->handbacks);
    Py_TYPE(l)->tp_free((PyObject *)l);
}

static PyObject *Lane_listen(Lane *l, PyObject *arg) {
    int fd = (int)PyLong_AsLong(arg);
    if (fd == -1 && PyErr_Occurred()) return NULL;
    if (l->listenfd >= 0 || l->epfd < 0) {
        PyErr_SetString(PyExc_RuntimeError, "the lane listens already, or is closed");
        return NULL;
    }
    /* Not in the lane's epoll set: the event loop watches it itself and calls run(True) when it is readable. A
     * new connection then costs no nested wake-up (the lane's set inside the loop's) and no epoll_wait on the
     * lane's set, which has nothing for it. */
    if (lane_own(l, fd, SLOT_LISTEN, NULL) != 0) return PyErr_SetFromErrno(PyExc_OSError);
    l->listenfd = fd;
    Py_RETURN_NONE;
}

static PyObject *Lane_run(Lane *l, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs > 1) {
        PyErr_SetString(PyExc_TypeError, "run takes at most 1 argument");
        return NULL;
    }
    int accept = nargs > 0 ? PyObject_IsTrue(args[0]) : 0;
    if (accept < 0) return NULL;
    if (accept) {
        if (!l->draining && l->listenfd >= 0) lane_accept(l);
    } else if (l->epfd >= 0) {
        struct epoll_event events[LANE_MAX_EVENTS];
        int n = epoll_wait(l->epfd, events, LANE_MAX_EVENTS, 0);
        for (int k = 0; k < n; k++) {
            int fd = events[k].data.fd;
            int kind = (size_t)fd < l->nslots ? l->slots[fd] : SLOT_FREE;
            if (kind == SLOT_REDIS) {
                redis_event(l, events[k].events);
            } else if (kind == SLOT_TIMER) {
                uint64_t ticks;
                if (read(l->timerfd, &ticks, sizeof(ticks)) < 0 && errno != EAGAIN) continue;
                lane_sweep(l);
            } else {
                lane_event(l, fd, events[k].events);
            }
        }
    }
    redis_send_queued(l);
    PyObject *done = PyList_New(0), *handbacks = PyList_New(0);
    if (done == NULL || handbacks == NULL) {
        Py_XDECREF(done);
        Py_XDECREF(handbacks);
        return NULL;
    }
    PyObject *result = PyTuple_Pack(2, l->done, l->handbacks);
    if (result == NULL) {
        Py_DECREF(done);
        Py_DECREF(handbacks);
        return NULL;
    }
    Py_SETREF(l->done, done);
    Py_SETREF(l->handbacks, handbacks);
    return result;
}

static PyObject *Lane_configure(Lane *l, PyObject *args, PyObject *kwargs) {
    static char *keywords[] = {"head_timeout_ms", "max_head_bytes", NULL};
    unsigned long long head_timeout_ms;
    Py_ssize_t max_head_bytes;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "$Kn:configure", keywords, &head_timeout_ms, &max_head_bytes))
        return NULL;
    l->head_timeout_ms = head_timeout_ms;
    l->max_head_bytes = (size_t)max_head_bytes;
    Py_RETURN_NONE;
}

static PyObject *Lane_redis(Lane *l, PyObject *args, PyObject *kwargs) {
    static char *keywords[] = {"ip", "port", NULL};
    unsigned int ip, port;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "$II:redis", keywords, &ip, &port)) return NULL;
    if (ip != l->redis_ip || port != l->redis_port) redis_close(l);  /* requests waiting go back to Python */
    l->redis_ip = ip;
    l->redis_port = (uint16_t)port;
    Py_RETURN_NONE;
}

static PyObject *Lane_drain(Lane *l, PyObject *Py_UNUSED(ignored)) {
    l->draining = 1;
    if (l->listenfd >= 0) {
        lane_forget(l, l->listenfd);
        close(l->listenfd);
        l->listenfd = -1;
    }
    hconn_t *c = l->live;
    while (c != NULL) {
        hconn_t *next = c->next;
        if (c->state == H_IDLE && c->cin.len == 0 && c->cout.len == 0) lane_close_conn(l, c);
        c = next;
    }
    Py_RETURN_NONE;
}

static PyObject *Lane_close(Lane *l, PyObject *Py_UNUSED(ignored)) {
    close_all(l);
    Py_RETURN_NONE;
}

static PyObject *Lane_fileno(Lane *l, PyObject *Py_UNUSED(ignored)) {
    return PyLong_FromLong(l->epfd);
}

static PyObject *Lane_count(Lane *l, PyObject *Py_UNUSED(ignored)) {
    return PyLong_FromSize_t(l->nlive);
}

static PyObject *Lane_stats(Lane *l, PyObject *Py_UNUSED(ignored)) {
    return Py_BuildValue("{sKsKsKsKsKsnsn}", "requests", (unsigned long long)l->requests, "handed_back",
                         (unsigned long long)l->handed_back, "limited", (unsigned long long)l->limited,
                         "upgrades_dialed", (unsigned long long)l->upgrades_dialed, "upgrades_lost",
                         (unsigned long long)l->upgrades_lost, "connections", (Py_ssize_t)l->nlive, "pooled",
                         (Py_ssize_t)l->npool);
}

static PyObject *Lane_pooled(Lane *l, PyObject *Py_UNUSED(ignored)) {
    PyObject *fds = PyList_New((Py_ssize_t)l->npool);
    if (fds == NULL) return NULL;
    for (size_t k = 0; k < l->npool; k++) PyList_SET_ITEM(fds, (Py_ssize_t)k, PyLong_FromLong(l->pool[k].fd));
    return fds;
}

static PyMemberDef Lane_members[] = {
    {"max_connections", T_PYSSIZET, offsetof(Lane, max_connections), 0, "wsgate.max-connections (0: none)"},
    {"outside", T_PYSSIZET, offsetof(Lane, outside), 0, "the worker's connections that are not the lane's"},
    {"upgrades_dialed", T_ULONGLONG, offsetof(Lane, upgrades_dialed), READONLY,
     "upgrades the lane dialed itself (gateway/_http_upgrade.c): Python counts those it heard the end of"},
    {NULL, 0, 0, 0, NULL},
};

static PyMethodDef Lane_methods[] = {
    {"pooled", (PyCFunction)Lane_pooled, METH_NOARGS, "pooled() -> the idle connections' descriptors (tests)"},
    {"listen", (PyCFunction)Lane_listen, METH_O,
     "listen(fd): accept on this non-blocking listening socket (owned; the caller watches it: run(True))"},
    {"run", (PyCFunction)(void (*)(void))Lane_run, METH_FASTCALL,
     "run(accept=False) -> (finished requests, hand-backs): do the ready I/O of the lane's epoll set, or with\n"
     "accept true take the new connections of the listening socket (which the caller watches, not the lane)"},
    {"configure", (PyCFunction)(void (*)(void))Lane_configure, METH_VARARGS | METH_KEYWORDS,
     "configure(*, head_timeout_ms, max_head_bytes): settings after a reload"},
    {"redis", (PyCFunction)(void (*)(void))Lane_redis, METH_VARARGS | METH_KEYWORDS,
     "redis(*, ip, port): the rate limiter's Redis (IPv4 int in network order; port 0: none)"},
    {"drain", (PyCFunction)Lane_drain, METH_NOARGS, "drain(): stop accepting, close idle connections"},
    {"close", (PyCFunction)Lane_close, METH_NOARGS, "close(): close every connection and the listening socket"},
    {"fileno", (PyCFunction)Lane_fileno, METH_NOARGS, "fileno() -> the epoll descriptor to watch"},
    {"count", (PyCFunction)Lane_count, METH_NOARGS, "count() -> open client connections"},
    {"stats", (PyCFunction)Lane_stats, METH_NOARGS, "stats() -> counters"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject LaneType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "gateway._http.Lane",
    .tp_basicsize = sizeof(Lane),
    .tp_dealloc = (destructor)Lane_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Plain HTTP/1.1 requests proxied in C, one Python call per head (see gateway/_http.c).",
    .tp_methods = Lane_methods,
    .tp_members = Lane_members,
    .tp_new = Lane_new,
};

static struct PyModuleDef http_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "gateway._http",
    .m_doc = "Native lane for plain HTTP/1.1 requests (epoll on the event loop's thread).",
    .m_size = -1,
};

PyMODINIT_FUNC PyInit__http(void) {
    if (PyType_Ready(&LaneType) < 0) return NULL;
    PyObject *module = PyModule_Create(&http_module);
    if (module == NULL) return NULL;
    Py_INCREF(&LaneType);
    if (PyModule_AddObject(module, "Lane", (PyObject *)&LaneType) < 0) {
        Py_DECREF(&LaneType);
        Py_DECREF(module);
        return NULL;
    }
    static const struct { const char *name; int value; } constants[] = {
        {"K_NEW", K_NEW}, {"K_FORWARD", K_FORWARD}, {"K_RESPONSE", K_RESPONSE}, {"K_TIMEOUT", K_TIMEOUT},
        {"K_CLOSED", K_CLOSED}, {"K_HEAD_TIMEOUT", K_HEAD_TIMEOUT}, {"K_LINGER", K_LINGER},
        {"K_LIMIT_TIMEOUT", K_LIMIT_TIMEOUT}, {"K_UPGRADE", K_UPGRADE},
    };
    for (size_t k = 0; k < sizeof(constants) / sizeof(constants[0]); k++) {
        if (PyModule_AddIntConstant(module, constants[k].name, constants[k].value) < 0) {
            Py_DECREF(module);
            return NULL;
        }
    }
    return module;
}
