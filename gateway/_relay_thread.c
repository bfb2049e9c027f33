/* gateway._relay: the relay thread. Its epoll loop, the byte relaying between the two sockets of a tunnel with
 * paired backpressure, the lingering close and the sweeps (idle timeout, flush timeout, linger timeout, dial
 * deadlines). See _relay.c for the rules and _relay_dial.c for the dialed upgrades it also carries. */
#include "_relay.h"

uint64_t now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

int grow(void **items, size_t *cap, size_t need, size_t size) {
    if (need <= *cap) return 0;
    size_t cap2 = *cap ? *cap * 2 : 16;
    while (cap2 < need) cap2 *= 2;
    void *bigger = realloc(*items, cap2 * size);
    if (bigger == NULL) return -1;
    *items = bigger, *cap = cap2;
    return 0;
}

/* Wake whoever waits on the eventfd `fd`. */
void signal_fd(int fd) {
    uint64_t one = 1;
    ssize_t unused = write(fd, &one, sizeof(one));
    (void)unused;
}

static void collect(tunnel_t *t) {
    if (t->collected) return;
    t->collected = 1;
    for (int i = 0; i < 2; i++) {
        int64_t value = t->ends[i].fd >= 0 ? tcp_bytes_received(t->ends[i].fd) : -1;
        t->received[i] = value >= 0 ? value : (int64_t)t->ends[i].read_bytes;
    }
}

void close_end(Relay *r, end_t *e) {
    if (e->fd < 0) return;
    if (!e->borrowed) epoll_ctl(r->epfd, EPOLL_CTL_DEL, e->fd, NULL), close(e->fd); /* borrowed: never watched */
    e->fd = -1;
    free(e->pending);
    e->pending = NULL;
    e->pending_len = e->pending_off = 0;
}

static void free_tunnel(tunnel_t *t) { free(t->head); free(t); }

/* Free tunnels only after the current batch of epoll events: a later event may still point at them. */
void maybe_finish(Relay *r, tunnel_t *t) {
    if (t->finished || t->ends[0].fd >= 0 || t->ends[1].fd >= 0) return;
    t->finished = 1;
    sockmap_release(r, t);
    if (t->linked) {
        if (t->prev) t->prev->next = t->next; else r->live = t->next;
        if (t->next) t->next->prev = t->prev;
        index_del(r, t->id);
    }
    if (t->state == ST_RELAY)
        report_quiet(r, t, EV_DONE, t->received[0], t->received[1]);
    else if (!t->outcome_reported)
        report_event(r, t->id, EV_FAILED, FAIL_ABORTED, 0, NULL, 0);
    if (grow((void **)&r->freelater, &r->freelater_cap, r->nfreelater + 1, sizeof(tunnel_t *)) == 0)
        r->freelater[r->nfreelater++] = t;
    /* else, out of memory: leak one small struct rather than risk a use after free */
}

void abort_tunnel(Relay *r, tunnel_t *t) {
    collect(t);
    close_end(r, &t->ends[0]);
    close_end(r, &t->ends[1]);
    maybe_finish(r, t);
}

void set_interest(Relay *r, end_t *e, uint32_t want) {
    if (e->tunnel->sm_state) want = sockmap_interest(e, want);
    if (want == e->events) return;
    struct epoll_event ev = {.events = want, .data.ptr = e};
    if (epoll_ctl(r->epfd, EPOLL_CTL_MOD, e->fd, &ev) == 0) e->events = want;
}

/* What epoll should watch on end i: reading while nothing waits to go the other way (while closing: until its EOF,
 * to drop what it still sends), writing while bytes wait. */
static void update_interest(Relay *r, tunnel_t *t, int i) {
    end_t *e = &t->ends[i];
    if (e->fd < 0) return;
    end_t *other = &t->ends[1 - i];
    uint32_t want = 0;
    if (t->closing ? !e->eof : other->pending_len == 0) want |= EPOLLIN;
    if (e->pending_len) want |= EPOLLOUT;
    set_interest(r, e, want);
}

/* Send what waits for end i; returns -1 on a fatal error. */
int flush(end_t *e) {
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
void want_sweep(Relay *r, uint64_t ms) {
    if (ms < 5) ms = 5;
    if (ms > 1000) ms = 1000;
    if (r->sweep_ms == 0 || ms < r->sweep_ms) r->sweep_ms = ms;
}

/* The lingering close of an end whose pending bytes are all sent. One that said EOF closes now. Any other has its
 * write side shut down (its peer reads our EOF after the last bytes) and is read until its EOF, dropping what
 * comes, for at most linger_ms: closing a socket with unread input makes the kernel send a reset, and a reset can
 * overtake the last bytes (a WebSocket close frame) on their way and destroy them. */
static void end_flushed(Relay *r, end_t *e) {
    if (e->fd < 0 || e->shut) return;
    if (e->eof || r->linger_ms == 0 || shutdown(e->fd, SHUT_WR) != 0) {
        close_end(r, e);
        return;
    }
    e->shut = 1;
    e->linger_until_ms = now_ms() + r->linger_ms;
}

/* Stop relaying: each end still open gets what is pending for it, then its lingering close. */
void begin_close(Relay *r, tunnel_t *t) {
    if (t->arming) t->arming = 2; /* its 101 has not gone out yet: arm_upgrades calls again after */
    if (t->arming || sockmap_leave(r, t, 1)) return; /* the kernel's queues drain first; it calls again after */
    if (!t->closing) {
        t->closing = 1;
        t->closing_at_ms = now_ms();
        collect(t);
    }
    for (int i = 0; i < 2; i++)
        if (t->ends[i].pending_len == 0) end_flushed(r, &t->ends[i]);
    for (int i = 0; i < 2; i++) update_interest(r, t, i);
    if (t->ends[0].fd >= 0 || t->ends[1].fd >= 0)
        want_sweep(r, (r->linger_ms && r->linger_ms < r->flush_timeout_ms ? r->linger_ms : r->flush_timeout_ms) / 4);
    maybe_finish(r, t);
}

/* A closing end is readable: drop what it sends until its EOF. At EOF it closes once flushed; after an error or a
 * hang-up at once (nothing can be sent to it any more). A few reads per event, so that no tunnel holds the thread. */
static void on_lingering(Relay *r, tunnel_t *t, int i, uint32_t got) {
    end_t *e = &t->ends[i];
    int hung_up = (got & (EPOLLHUP | EPOLLERR)) != 0;
    for (int k = 0; k < 16; k++) {
        ssize_t n = recv(e->fd, r->buffer, CHUNK_BYTES, 0);
        if (n > 0 || (n < 0 && errno == EINTR)) continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) && !hung_up) return;
        if (n == 0 && e->pending_len && !hung_up) {
            e->eof = 1;
            update_interest(r, t, i);
            return;
        }
        close_end(r, e);
        maybe_finish(r, t);
        return;
    }
}

/* Append to what waits for `dst` (rare: an end that hung up while the other was backpressured). */
int append_pending(end_t *dst, const char *data, size_t len) {
    char *joined = malloc(dst->pending_len + len);
    if (joined == NULL) return -1;
    if (dst->pending_len) memcpy(joined, dst->pending + dst->pending_off, dst->pending_len);
    memcpy(joined + dst->pending_len, data, len);
    free(dst->pending);
    dst->pending = joined;
    dst->pending_len += len;
    dst->pending_off = 0;
    return 0;
}

/* Take everything end i sent that is still queued in the kernel (until its EOF, an error or EAGAIN) for the
 * other end. Needed when end i fails or hangs up while it is not read (the other end was backpressured), or when
 * writing to it fails first: its last bytes (a close frame, often) came before the reset and must not be lost with
 * it. Returns the last recv's result (0: EOF). */
static ssize_t salvage(Relay *r, tunnel_t *t, int i) {
    end_t *src = &t->ends[i], *dst = &t->ends[1 - i];
    for (;;) {
        ssize_t n = recv(src->fd, r->buffer, CHUNK_BYTES, 0);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return n;
        src->read_bytes += (uint64_t)n;
        if (dst->fd >= 0 && append_pending(dst, r->buffer, (size_t)n) != 0) return -1;
    }
}

/* End i failed (a reset, an error): nothing more can be sent to it. What it sent before goes to the other end, then
 * it closes and the other end gets its lingering close. */
static void end_failed(Relay *r, tunnel_t *t, int i) {
    collect(t);
    if (!t->closing) salvage(r, t, i);
    close_end(r, &t->ends[i]);
    begin_close(r, t);
}

/* End i hung up while it was not read (the other end was backpressured). */
static void on_hangup(Relay *r, tunnel_t *t, int i) {
    if (salvage(r, t, i) == 0) {
        t->ends[i].eof = 1;
        begin_close(r, t);
    } else {
        end_failed(r, t, i);
    }
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
    /* A tunnel that kept talking goes to the kernel now: sockmap_enter relays what is queued, the kernel the rest.
     * Tried or not, this event is done (epoll is level-triggered: input left here is reported again). */
    if (r->sm.on && !t->sm_tried && t->reads >= r->sm_after_reads && sockmap_enter(r, t)) return;
    ssize_t n;
    do {
        n = recv(src->fd, r->buffer, CHUNK_BYTES, 0);
    } while (n < 0 && errno == EINTR);
    if (n < 0) {
        if (errno != EAGAIN && errno != EWOULDBLOCK) end_failed(r, t, i);
        return;
    }
    if (n == 0) {
        src->eof = 1;
        begin_close(r, t);
        return;
    }
    src->read_bytes += (uint64_t)n;
    t->moved += (uint64_t)n;
    t->reads++;
    if (dst->fd < 0) return;
    size_t sent = 0;
    while (sent < (size_t)n) {
        ssize_t w = send(dst->fd, r->buffer + sent, (size_t)n - sent, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) break;
            end_failed(r, t, 1 - i);
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
        end_failed(r, t, i);
        return;
    }
    if (e->pending_len == 0 && t->closing) {
        end_flushed(r, e);
        update_interest(r, t, i);
        maybe_finish(r, t);
        return;
    }
    update_interest(r, t, i);
    update_interest(r, t, 1 - i);
}

/* Returns -1 when the tunnel cannot be indexed (out of memory): the caller drops it. */
int link_live(Relay *r, tunnel_t *t) {
    t->linked = 1;
    t->prev = NULL;
    t->next = r->live;
    if (r->live) r->live->prev = t;
    r->live = t;
    t->active_at_ms = now_ms();
    if (t->idle_ms) want_sweep(r, t->idle_ms / 4);
    if (index_put(r, t) != 0) {
        t->linked = 0;  /* not in the index: maybe_finish must not look for it there */
        r->live = t->next;
        if (t->next) t->next->prev = NULL;
        return -1;
    }
    return 0;
}

/* Send what each side has pending (bytes that came with the heads), then watch both with their final interest.
 * `registered` tells which ends are in the epoll set already. */
void arm_relay(Relay *r, tunnel_t *t, const int registered[2]) {
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
    if (r->sm_after_reads == 0) sockmap_enter(r, t); /* from now on the kernel relays, when it can */
}

static void start_tunnel(Relay *r, tunnel_t *t) {
    if (t->state != ST_RELAY) {
        start_dial(r, t);
        return;
    }
    if (link_live(r, t) != 0) {
        abort_tunnel(r, t);
        return;
    }
    const int registered[2] = {0, 0};
    arm_relay(r, t, registered);
}

static void sweep_idle(Relay *r, uint64_t now) {
    tunnel_t *t = r->live;
    while (t) {
        tunnel_t *next = t->next;
        if (t->state != ST_RELAY) {
            /* `>`: now_ms() truncates to the millisecond, so `>=` could end a dial up to 1 ms before its time. */
            if (t->deadline_ms && now > t->deadline_ms)
                fail_dial(r, t, t->state == ST_DIAL ? FAIL_CONNECT_TIMEOUT : FAIL_RESPONSE_TIMEOUT, 0);
        } else if (t->sm_state && sockmap_sweep(r, t, now)) {
            /* leaving the kernel: sockmap_sweep did what there was to do */
        } else if (t->closing) {
            int flushing = 0;
            for (int i = 0; i < 2; i++) {
                end_t *e = &t->ends[i];
                if (e->fd >= 0 && e->shut && now >= e->linger_until_ms) close_end(r, e);
                flushing |= e->fd >= 0 && !e->shut;
            }
            if (flushing && now - t->closing_at_ms >= r->flush_timeout_ms) abort_tunnel(r, t); else maybe_finish(r, t);
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
    size_t count;
    command_t *commands = take_queue(r, woken ? r->wakefd : -1, (void **)&r->commands, &r->ncommands,
                                     &r->commands_cap, &r->signalled, &r->queued, &count);
    int stop = 0;
    for (size_t k = 0; k < count; k++) {
        command_t *c = &commands[k];
        if (c->kind == CMD_ADD) {
            start_tunnel(r, c->tunnel);
        } else if (c->kind == CMD_STOP) {
            stop = 1;
        } else {
            tunnel_t *t = index_get(r, c->id);
            if (t == NULL) continue;
            /* Closing a tunnel still dialing leaves nothing to flush: it is aborted. */
            if (c->kind == CMD_CLOSE && t->state == ST_RELAY) begin_close(r, t); else abort_tunnel(r, t);
        }
    }
    free(commands);
    return stop;
}

void *relay_main(void *arg) {
    Relay *r = (Relay *)arg;
    pthread_setname_np(pthread_self(), "wsgate-relay"); /* shown by top -H and /proc/<pid>/task/<tid>/comm */
    struct sched_param batch = {.sched_priority = 0};
    pthread_setschedparam(pthread_self(), SCHED_BATCH, &batch);
    struct epoll_event events[MAX_EVENTS];
    int stop = 0;
    while (!stop) {
        /* Dials are queued without waking the thread: it looks at the queue at least every LAZY_MAX_MS. */
        int timeout = r->sweep_ms && r->sweep_ms < LAZY_MAX_MS ? (int)r->sweep_ms : LAZY_MAX_MS;
        int n = epoll_wait(r->epfd, events, MAX_EVENTS, quiet_timeout(r, timeout));
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
            if (t->sm_state && sockmap_event(r, t, i, got)) continue;
            if (got & EPOLLOUT) {
                on_writable(r, t, i);
                if (e->fd < 0 || t->finished) continue;
            }
            if (!(got & (EPOLLIN | EPOLLHUP | EPOLLERR))) continue;
            if (t->closing) on_lingering(r, t, i, got);
            else if (t->ends[1 - i].pending_len == 0) on_readable(r, t, i);
            else if (got & (EPOLLHUP | EPOLLERR)) on_hangup(r, t, i);
        }
        arm_upgrades(r);
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
        wake_python(r);
    }
    while (r->live) abort_tunnel(r, r->live);
    for (size_t k = 0; k < r->nfreelater; k++) free_tunnel(r->freelater[k]);
    r->nfreelater = 0;
    if (r->quiet_since_ms) r->done_owed = 1; /* the last events, quiet ones too, are signalled now */
    wake_python(r);
    return NULL;
}
