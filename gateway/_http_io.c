/* The native HTTP lane's connections: read a head, ask Python once, send upstream, relay a Content-Length answer.
 *
 * Every descriptor is registered once, edge-triggered, for input and output; readiness is remembered per side
 * (crd/cwr, urd/uwr) and cleared by EAGAIN, so nothing is re-registered per request (nginx does the same).
 * Anything this file does not handle the way the Python path would goes back to Python whole (hand_back): the
 * Python path then answers it with its own rules, statuses and bodies, and serves the connection from then on.
 */
#include "_http.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <unistd.h>

/* ---- connections ---------------------------------------------------------------------------------------- */

void lane_unlink(Lane *l, hconn_t *c) {
    if (c->state == H_LIMIT) redis_forget_conn(l, c);
    if (c->prev) c->prev->next = c->next; else l->live = c->next;
    if (c->next) c->next->prev = c->prev;
    l->nlive--;
    free(c->cin.data);
    free(c->cout.data);
    free(c->uin.data);
    free(c->req.data);
    free(c->extra.data);
    Py_XDECREF(c->limit);
    Py_XDECREF(c->remote);
    Py_XDECREF(c->decision);
    free(c);
}

void lane_close_conn(Lane *l, hconn_t *c) {
    close_fd(l, c->cfd);
    close_fd(l, c->ufd);
    lane_unlink(l, c);
}

static PyObject *bytes_of(buf_t *b, size_t from) {
    return PyBytes_FromStringAndSize(b->data ? b->data + from : "", from < b->len ? (Py_ssize_t)(b->len - from) : 0);
}

/* Give the connection (and the instance's, if any) back to Python: (kind, decision, cfd, bytes, ufd, bytes, started,
 * the X-RateLimit-* lines of a request Redis allowed). */
void hand_back(Lane *l, hconn_t *c, int kind, size_t cin_from) {
    if (kind != K_RESPONSE) {  /* only a response head to judge needs the instance's connection */
        close_fd(l, c->ufd);
        c->ufd = -1;
        c->uin.len = 0;
    }
    lane_forget(l, c->cfd);
    lane_forget(l, c->ufd);
    /* K_UPGRADE: the instance's bytes are the client's WebSocket key (decide saw the mark). */
    PyObject *udata = kind == K_UPGRADE ? PyBytes_FromStringAndSize(c->wskey, (Py_ssize_t)c->wskey_len)
                                        : bytes_of(&c->uin, 0);
    PyObject *fields[8] = {PyLong_FromLong(kind), Py_NewRef(c->decision ? c->decision : Py_None),
                           PyLong_FromLong(c->cfd), bytes_of(&c->cin, cin_from), PyLong_FromLong(c->ufd), udata,
                           PyFloat_FromDouble(c->started), bytes_of(&c->extra, 0)};
    PyObject *item = tuple_of(fields, 8);
    if (item == NULL || PyList_Append(l->handbacks, item) != 0) {
        PyErr_Clear();  /* out of memory: the connection is lost, not leaked */
        close(c->cfd);
        if (c->ufd >= 0) close(c->ufd);
    }
    Py_XDECREF(item);
    l->handed_back++;
    lane_unlink(l, c);
}

void finish_request(Lane *l, hconn_t *c, int failed) {
    PyObject *fields[5] = {Py_XNewRef(c->decision), PyLong_FromLong(c->status),
                           PyLong_FromUnsignedLongLong((unsigned long long)c->nbytes), PyLong_FromLong(failed),
                           PyFloat_FromDouble(c->started)};
    PyObject *item = tuple_of(fields, 5);
    if (item == NULL || PyList_Append(l->done, item) != 0) PyErr_Clear();
    Py_XDECREF(item);
    Py_CLEAR(c->decision);
    c->extra.len = 0;
    l->requests++;
}

/* How much of a client's input H_IDLE reads ahead: a head, and a body decide lets the lane carry. */
static size_t idle_read_limit(Lane *l) { return l->max_head_bytes + LANE_READ_BYTES + 2 * 65536; }

/* Read what the client sent while it is readable; -1 on an error (EOF sets ceof). `head_first`: stop at a short
 * read that completes a head, with `unread` set and crd still 1: an upgrade then goes to the relay with no read
 * that says EAGAIN (one system call of about 30 per upgrade); start_request reads the rest for anything else. */
static int read_client(Lane *l, hconn_t *c, size_t limit, int head_first) {
    while (c->crd && !c->ceof && c->cin.len < limit) {
        ssize_t n = recv(c->cfd, l->scratch, sizeof(l->scratch), 0);
        if (n > 0) {
            size_t from = c->cin.len >= 3 ? c->cin.len - 3 : 0;
            if (buf_add(&c->cin, l->scratch, (size_t)n) != 0) return -1;
            if (head_first && (size_t)n < sizeof(l->scratch)
                && find_head_end(c->cin.data + from, c->cin.len - from) != NULL) {
                c->unread = 1;
                return 0;
            }
        } else if (n == 0) {
            c->ceof = 1;
        } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
            c->crd = 0;
        } else if (errno != EINTR) {
            return -1;
        }
    }
    return 0;
}

static int flush_client(hconn_t *c) {
    size_t off = 0;
    int rc = flush_to(c->cfd, &c->cwr, &c->cout, &off);
    buf_drop(&c->cout, off);
    return rc;
}

static void sent_request(Lane *l, hconn_t *c) {
    (void)l;
    c->deadline_ms = c->response_ms ? lane_now_ms() + c->response_ms : 0;
}

/* The connection to the instance is up: the body (read whole with the head) joins the request, and the response
 * timeout starts. -1 when the request went back to Python (out of memory). */
static int queue_body(Lane *l, hconn_t *c) {
    if (buf_add(&c->req, c->cin.data + c->head_used, c->body_len) != 0) {
        hand_back(l, c, K_FORWARD, c->head_used);
        return -1;
    }
    buf_drop(&c->cin, c->head_used + c->body_len);
    sent_request(l, c);
    return 0;
}

/* Take a complete head off cin and start its request; 0 when it needs more input, -1 when it went back. */
static int start_request(Lane *l, hconn_t *c) {
    size_t start = 0;
    while (c->cin.len >= start + 2 && c->cin.data[start] == '\r' && c->cin.data[start + 1] == '\n') start += 2;
    const char *head = c->cin.len > start ? find_head_end(c->cin.data + start, c->cin.len - start) : NULL;
    if (head == NULL) {
        size_t pending = c->cin.len - start;
        if (pending > l->max_head_bytes || bare_cr_or_lf(c->cin.data + start, pending) || (c->ceof && pending)) {
            hand_back(l, c, K_NEW, 0);
            return -1;
        }
        return 0;
    }
    size_t head_len = (size_t)(head - (c->cin.data + start));
    if (head_len + 4 > l->max_head_bytes) {  /* whole but too long: Python answers 431, as httpparse.split_head */
        hand_back(l, c, K_NEW, 0);
        return -1;
    }
    c->head_used = start + head_len + 4;
    if (c->decision == NULL) {
        c->started = lane_now_s();
        PyObject *raw = head_for_decide(c, c->cin.data + start, head_len);
        PyObject *decision = raw ? PyObject_CallFunctionObjArgs(l->decide, raw, c->remote, NULL) : NULL;
        Py_XDECREF(raw);
        if (decision == NULL) PyErr_WriteUnraisable(l->decide);
        decision_t d;
        if (decision == NULL || decision == Py_None || read_decision(decision, &d) != 0) {
            PyErr_Clear();
            Py_XDECREF(decision);
            hand_back(l, c, K_NEW, 0);
            return -1;
        }
        Py_INCREF(d.token);
        c->decision = d.token;  /* what finished requests and hand-backs report */
        if (d.upgrade || c->wskey_len) {
            /* The relay thread dials it (Python's `lane_upgrades`); bytes after the head need the Python path, and
             * so does a plain request whose head carried a key (its request for the instance has the mark). */
            int whole = d.upgrade && c->wskey_len && c->cin.len == c->head_used;
            if (whole && d.plan != Py_None && lane_upgrade(l, c, d.plan, d.token) == 0) {
                Py_DECREF(decision);  /* after lane_upgrade: the plan and the token are borrowed from it */
                return -1;
            }
            Py_DECREF(decision);
            hand_back(l, c, whole ? K_UPGRADE : K_NEW, 0);
            return -1;
        }
        Py_CLEAR(c->limit);
        if (d.limit != Py_None) {
            Py_INCREF(d.limit);
            c->limit = d.limit;
        }
        c->ip = d.ip;
        c->port = (uint16_t)d.port;
        c->body_len = d.body_len;
        c->keep_client = d.keep;
        c->no_body = d.no_body;
        c->connect_ms = d.connect_ms;
        c->response_ms = d.response_ms;
        c->req.len = 0;
        c->req_off = 0;
        c->extra.len = 0;
        int failed = buf_add(&c->req, PyBytes_AS_STRING(d.request), (size_t)PyBytes_GET_SIZE(d.request));
        Py_DECREF(decision);
        if (failed) {
            hand_back(l, c, K_FORWARD, c->head_used);
            return -1;
        }
    }
    if (c->unread) {  /* not an upgrade: a body, or the next request, may wait in the socket */
        c->unread = 0;
        if (read_client(l, c, idle_read_limit(l), 0) != 0) {
            lane_close_conn(l, c);
            return -1;
        }
    }
    if (c->limit != NULL) {
        /* (command before ARGV[3], after it, allowed's headers, refusal's head and tail, its status, timeout ms) */
        const char *before, *after;
        Py_ssize_t before_len, after_len;
        unsigned long long timeout_ms = 0;
        if (!PyArg_ParseTuple(c->limit, "y#y#SSSiK", &before, &before_len, &after, &after_len, &(PyObject *){0},
                              &(PyObject *){0}, &(PyObject *){0}, &(int){0}, &timeout_ms)
            || redis_submit(l, c, before, (size_t)before_len, after, (size_t)after_len) != 0) {
            PyErr_Clear();
            hand_back(l, c, K_NEW, 0);
            return -1;
        }
        c->state = H_LIMIT;
        c->deadline_ms = timeout_ms ? lane_now_ms() + timeout_ms : 0;
        return 1;
    }
    return lane_dispatch(l, c);
}

/* Send the request whose head (and body) cin holds to the instance; -1 when it went back. */
int lane_dispatch(Lane *l, hconn_t *c) {
    if (c->cin.len < c->head_used + c->body_len) {
        /* A body still on its way goes the Python way, which streams it (decide took only <= 64 KiB ones). */
        if (c->crd && !c->ceof) return 0;
        hand_back(l, c, K_FORWARD, c->head_used);
        return -1;
    }
    c->state = H_UPSTREAM;
    c->status = 0;
    c->nbytes = 0;
    c->retried = c->got_response_bytes = 0;
    c->uin.len = 0;
    c->ufd = pool_take(l, c->ip, c->port);
    if (c->ufd >= 0) {
        l->slots[c->ufd] = SLOT_UPSTREAM;
        l->owners[c->ufd] = c;
        c->connecting = 0;
        c->reused = 1;
        c->urd = 0;  /* an idle pooled connection had nothing to read */
        c->uwr = 1;
    } else if (lane_dial(l, c) != 0) {
        hand_back(l, c, K_FORWARD, c->head_used);
        return -1;
    }
    if (!c->connecting && queue_body(l, c) != 0) return -1;
    return 1;
}

/* The instance failed before answering: a pooled connection is dialed afresh once (Python's rule), else back. */
static int upstream_failed(Lane *l, hconn_t *c) {
    if (c->reused && !c->retried && !c->got_response_bytes && c->body_len == 0) {
        close_fd(l, c->ufd);
        c->ufd = -1;
        c->retried = 1;
        c->req_off = 0;
        if (lane_dial(l, c) == 0) return 0;
        hand_back(l, c, K_FORWARD, 0);
        return -1;
    }
    hand_back(l, c, K_CLOSED, 0);
    return -1;
}

/* The request's way to the instance and its response head; -1 when the connection is gone or went back. */
static int step_upstream(Lane *l, hconn_t *c) {
    if (c->connecting) {
        if (!c->uwr) return 0;
        int err = 0;
        socklen_t len = sizeof(err);
        if (getsockopt(c->ufd, SOL_SOCKET, SO_ERROR, &err, &len) != 0 || err != 0) {
            if (c->retried) {  /* the fresh dial after a pooled failure: nothing was answered, Python dials */
                hand_back(l, c, K_FORWARD, 0);
                return -1;
            }
            hand_back(l, c, K_FORWARD, c->head_used);
            return -1;
        }
        c->connecting = 0;
        if (c->retried) sent_request(l, c);  /* the body is in `req` since the first try */
        else if (queue_body(l, c) != 0) return -1;
    }
    if (flush_to(c->ufd, &c->uwr, &c->req, &c->req_off) != 0) return upstream_failed(l, c);
    for (;;) {
        if (c->uin.len) {
            const char *end = find_head_end(c->uin.data, c->uin.len);
            if (end != NULL) {
                size_t len = (size_t)(end - c->uin.data);
                if (take_response(c, len) != 0) {
                    hand_back(l, c, K_RESPONSE, 0);
                    return -1;
                }
                buf_drop(&c->uin, len + 4);
                c->state = H_BODY;
                return 0;
            }
            if (c->uin.len > RESPONSE_HEAD_LIMIT) {
                hand_back(l, c, K_RESPONSE, 0);
                return -1;
            }
        }
        if (!c->urd) return 0;
        ssize_t n = recv(c->ufd, l->scratch, sizeof(l->scratch), 0);
        if (n > 0) {
            c->got_response_bytes = 1;
            if (buf_add(&c->uin, l->scratch, (size_t)n) != 0) return upstream_failed(l, c);
        } else if (n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
            return upstream_failed(l, c);
        } else if (errno != EINTR) {
            c->urd = 0;
        }
    }
}

/* Relay the response body (cout holds the head first); -1 when the connection is gone. */
static int step_body(Lane *l, hconn_t *c) {
    for (;;) {
        if (flush_client(c) != 0) {
            finish_request(l, c, 3);  /* the client went away: not the instance's fault */
            lane_close_conn(l, c);
            return -1;
        }
        if (c->cout.len) return 0;  /* the client takes its time: the instance waits (paired backpressure) */
        if (c->remaining == 0) break;
        if (c->uin.len) {
            size_t n = c->uin.len < c->remaining ? c->uin.len : (size_t)c->remaining;
            if (buf_add(&c->cout, c->uin.data, n) != 0) return -1;
            buf_drop(&c->uin, n);
            c->remaining -= n;
            continue;
        }
        if (!c->urd) return 0;
        ssize_t n = recv(c->ufd, l->scratch, sizeof(l->scratch), 0);
        if (n > 0) {
            if (buf_add(&c->uin, l->scratch, (size_t)n) != 0) return -1;
            c->deadline_ms = c->response_ms ? lane_now_ms() + c->response_ms : 0;
        } else if (n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
            /* the client has the head already: close both (Python's rule) */
            finish_request(l, c, 2);
            lane_close_conn(l, c);
            return -1;
        } else if (errno != EINTR) {
            c->urd = 0;
        }
    }
    finish_request(l, c, 0);
    if (c->upstream_keep && c->uin.len == 0) pool_put(l, c);
    else close_fd(l, c->ufd);
    c->ufd = -1;
    c->uin.len = 0;
    c->first = 0;
    c->state = c->keep_client && !l->draining ? H_IDLE : H_CLOSE;
    c->deadline_ms = c->state == H_IDLE ? lane_now_ms() + l->head_timeout_ms : 0;
    return 0;
}

void lane_progress(Lane *l, hconn_t *c) {
    for (;;) {
        switch (c->state) {
        case H_IDLE:
            if (flush_client(c) != 0) {
                lane_close_conn(l, c);
                return;
            }
            if (c->cout.len) return;
            if (l->draining && c->cin.len == 0) {
                lane_close_conn(l, c);
                return;
            }
            if (read_client(l, c, idle_read_limit(l), 1) != 0) {
                lane_close_conn(l, c);
                return;
            }
            if (c->cin.len == 0 && c->ceof) {
                lane_close_conn(l, c);
                return;
            }
            int started = start_request(l, c);
            if (started == 0 && c->unread) {  /* what ended the read was no head (empty lines): read on */
                c->unread = 0;
                continue;
            }
            if (started <= 0) {
                if (started == 0 && c->ceof) hand_back(l, c, K_NEW, 0);
                return;
            }
            break;
        case H_LIMIT:
            return;  /* lane_limited goes on */
        case H_UPSTREAM:
            if (step_upstream(l, c) != 0 || c->state == H_UPSTREAM) return;
            break;
        case H_BODY:
            if (step_body(l, c) != 0 || c->state == H_BODY) return;
            break;
        case H_CLOSE:
            if (flush_client(c) != 0) {
                lane_close_conn(l, c);
                return;
            }
            if (c->cout.len) return;
            if (read_client(l, c, LANE_READ_BYTES, 0) != 0 || c->cin.len == 0) lane_close_conn(l, c);
            else hand_back(l, c, K_LINGER, 0);  /* unread input: Python's lingering close */
            return;
        }
    }
}

void lane_event(Lane *l, int fd, uint32_t events) {
    if ((size_t)fd >= l->nslots) return;
    int kind = l->slots[fd];
    if (kind == SLOT_POOL) {
        if (events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) pool_event(l, fd);  /* not a late EPOLLOUT */
        return;
    }
    hconn_t *c = l->owners[fd];
    if (c == NULL) return;
    int in = (events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) != 0;
    int out = (events & (EPOLLOUT | EPOLLHUP | EPOLLERR)) != 0;
    if (kind == SLOT_CLIENT) {
        c->crd |= in;
        c->cwr |= out;
    } else if (kind == SLOT_UPSTREAM) {
        c->urd |= in;
        c->uwr |= out;
    }
    lane_progress(l, c);
}

/* Deadlines (head, connect, response), looked at by the lane's timer. */
void lane_sweep(Lane *l) {
    uint64_t now = lane_now_ms();
    lane_trim_after_burst(l, now);
    hconn_t *c = l->live;
    while (c != NULL) {
        hconn_t *next = c->next;
        if (c->deadline_ms && now >= c->deadline_ms) {
            if (c->state == H_IDLE) {
                if (c->first || c->cin.len) hand_back(l, c, K_HEAD_TIMEOUT, 0);
                else lane_close_conn(l, c);  /* an idle keep-alive connection: closed quietly */
            } else if (c->state == H_LIMIT) {
                hand_back(l, c, K_LIMIT_TIMEOUT, 0);
            } else if (c->state == H_UPSTREAM && c->connecting) {
                hand_back(l, c, K_FORWARD, c->retried ? 0 : c->head_used);
            } else if (c->state == H_UPSTREAM) {
                hand_back(l, c, K_TIMEOUT, 0);
            } else {
                finish_request(l, c, 1);
                lane_close_conn(l, c);
            }
        }
        c = next;
    }
}
