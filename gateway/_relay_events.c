/* gateway._relay: what the relay thread tells Python, and the queues both take. Events (a tunnel's end, how a
 * dial ended) go on a queue under the lock and `donefd` is written once per turn of the thread's loop for them;
 * the 101 and the end of the HTTP lane's own dials are quiet: they wait for Python's next wake-up for anything
 * else, or QUIET_REPORT_MS. */
#include "_relay.h"

/* Reset the eventfd `fd` (-1: none to reset), then take a queue (items, count, capacity) under the lock and clear
 * its `signalled` and `waiting` flags with it. The order matters: anything queued after the take signals again.
 * Returns the items (the caller frees them). */
void *take_queue(Relay *r, int fd, void **items, size_t *count, size_t *cap, int *signalled, int *waiting,
                 size_t *taken) {
    if (fd >= 0) {
        uint64_t value;
        ssize_t unused = read(fd, &value, sizeof(value));
        (void)unused;
    }
    pthread_mutex_lock(&r->lock);
    void *out = *items;
    *taken = *count;
    *items = NULL;
    *count = *cap = 0;
    *signalled = 0;
    __atomic_store_n(waiting, 0, __ATOMIC_RELEASE);
    pthread_mutex_unlock(&r->lock);
    return out;
}

/* ---- the thread's side --------------------------------------------------------------------------- */

/* Queue an event for Python (the thread only); `data` (malloc'ed) passes to the event. The loop writes the eventfd
 * once, at the end of its turn: written per event, Python took the queue between two events of one turn and each
 * event woke it again (a context switch and two epoll waits each). */
static void queue_event(Relay *r, uint64_t id, int kind, int64_t a, int64_t b, char *data, size_t len, int quiet) {
    pthread_mutex_lock(&r->lock);
    /* Relay_reap reads donefd, then takes the queue and clears `done_signalled` together: a queue with an event
     * that is not quiet in it is signalled already, or will be at the end of this turn. */
    int wake = !quiet && !r->done_signalled;
    if (wake) r->done_signalled = 1;
    int failed = grow((void **)&r->done, &r->done_cap, r->ndone + 1, sizeof(done_t));
    if (!failed) {
        r->done[r->ndone++] = (done_t){.id = id, .kind = kind, .a = a, .b = b, .data = data, .len = len};
        __atomic_store_n(&r->done_waiting, 1, __ATOMIC_RELEASE);
    }
    pthread_mutex_unlock(&r->lock);
    if (failed) {
        /* Out of memory: what the event carried cannot reach Python. */
        free(data);
        if (kind == EV_HEAD) close((int)a);
        return;
    }
    r->done_owed |= wake;
    if (quiet && !r->quiet_since_ms) r->quiet_since_ms = now_ms();
}

void report_event(Relay *r, uint64_t id, int kind, int64_t a, int64_t b, char *data, size_t len) {
    queue_event(r, id, kind, a, b, data, len, 0);
}

/* A 101 or an end of a tunnel nobody waits on (the HTTP lane's own dials): queued without waking Python, which
 * takes it on its next wake-up for anything else (the lane looks at the queue each time: `Relay.pending`), or
 * QUIET_REPORT_MS later at the latest. Waking Python once for each was two of its wake-ups per upgrade. */
void report_quiet(Relay *r, tunnel_t *t, int kind, int64_t a, int64_t b) {
    queue_event(r, t->id, kind, a, b, NULL, 0, t->quiet);
}

int quiet_timeout(Relay *r, int timeout) {
    if (!r->quiet_since_ms) return timeout;
    uint64_t now = now_ms(), due = r->quiet_since_ms + QUIET_REPORT_MS;
    int left = due > now ? (int)(due - now) : 0;
    return left < timeout ? left : timeout;
}

/* Write donefd for the events signalled this turn, or for quiet events that waited QUIET_REPORT_MS. */
void wake_python(Relay *r) {
    if (r->quiet_since_ms && (r->done_owed || now_ms() >= r->quiet_since_ms + QUIET_REPORT_MS)) {
        pthread_mutex_lock(&r->lock);
        if (r->ndone && !r->done_signalled) r->done_signalled = r->done_owed = 1;
        pthread_mutex_unlock(&r->lock);
        r->quiet_since_ms = 0;
    }
    if (r->done_owed) signal_fd(r->donefd);
    r->done_owed = 0;
}
