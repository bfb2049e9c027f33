/* gateway._relay: the sockmap relay. The kernel moves a tunnel's bytes from one socket to the other, so no recv or
 * send runs per message (issue 20): an sk_skb stream-verdict program, attached to a SOCKMAP, redirects each skb
 * a tunnel's socket receives to the egress of its peer (bpf_sk_redirect_map).
 *
 * Why it looks the way it does (each point checked on Linux 6.18; docs/gateway.md has the figures):
 * - Two sockmaps. `targets` holds every handed-over socket and is what the program redirects to; `sources` holds
 *   the same sockets and carries the program. A socket stays in both until it closes: taking one out of
 *   `sources` while an skb is on its way through the verdict drops that skb (the kernel clears the program under
 *   the running verdict: lost bytes, counted in sk_drops), so redirecting stops through a flag instead.
 * - The kernel does not push back on its own: a redirect to a peer that does not read is queued in the peer's
 *   psock without bound (131 MB measured, outside the TCP memory accounting) while the sender's window stays
 *   open. So the program counts what it redirected from each socket in a shared (mmap'ed) array, and once that
 *   runs SM_CREDIT ahead of what the peer's send queue took (the sweep moves `limit` along) it stops
 *   redirecting that socket's input for good (`passing`): it passes the skb to the socket itself, where it waits
 *   for a recv under the TCP window, and the socket wakes the thread. The thread relays that direction from then
 *   on (SM_HALF until the kernel's queue for it is flushed, then SM_MIXED), with its paired backpressure; the
 *   other direction stays the kernel's, so that what the peer still sends (a close frame, then a reset) goes the
 *   way it went.
 * - Data never wakes the thread while the kernel relays: the ends it redirects are watched for EPOLLRDHUP, not
 *   EPOLLIN (each redirect still runs the socket's EPOLLIN wake-up). FIN, a reset or an error still wake it
 *   (RDHUP, ERR, HUP); input the program passed is found by the sweep.
 *   These, a close command or the idle timeout take the tunnel back to the thread (SM_DRAIN): both `passing`,
 *   then, once the bytes the kernel redirected are all in the peers' send queues (the array's counters against
 *   TCP_INFO acked + SIOCOUTQ), the thread's ordinary rules run (flush, EOF, lingering close, salvage) on what
 *   is left, with recv and send on the same sockets. Without that wait the thread's own sends could overtake
 *   bytes still queued in the kernel. A tunnel that went back stays with the thread: switching to redirects
 *   again cannot be ordered against an skb the program passes meanwhile.
 * - Bytes that reach a socket between the thread's last read and its entry into `sources` stay in its receive
 *   queue until the next skb: setting SO_RCVLOWAT makes TCP call the (replaced) data_ready at once. That first
 *   verdict run (tcp_read_skb) takes each queued skb whole, ignoring what recv already read of it, so before the
 *   entry the thread reads each socket until a short read (the queue is empty then; what comes later are whole
 *   skbs): otherwise the bytes read with the 101 went to the client twice.
 * - Byte counts still come from TCP_INFO (tcpi_bytes_received counts what the kernel redirected); the idle sweep
 *   reads the array's counters, without a syscall.
 * - What a socket was passed and the thread has not read yet is lost if that socket is reset: a reset takes it
 *   out of the sockmaps and the kernel drops its sockmap state. Only a direction the thread relays has such
 *   bytes, and only while its peer is too slow to take them (the relay thread alone would deliver them).
 */
#include "_relay.h"

#include <linux/sockios.h>
#include <sys/ioctl.h>

#define SM_CREDIT (4u << 20)          /* bytes a peer's send queue may lag what was redirected to it */
#define SM_REFRESH_MS 50              /* how often a moving tunnel's limits follow its peers (4 syscalls each): a
                                       * direction faster than SM_CREDIT per SM_REFRESH_MS (80 MB/s) goes back to
                                       * the thread, correct but slower */
#define TCP_INFO_BYTES_ACKED_AT 120   /* u64 tcpi_bytes_acked, Linux >= 4.1 */
/* SM_CREDIT bounds the kernel's queue per direction: per tunnel at most 2 x SM_CREDIT beyond the socket buffers,
 * plus what arrives between the program's signal and the thread's reaction. */

/* ---- TCP_INFO ------------------------------------------------------------------------------------- */

static int tcp_info_u64(int fd, size_t at, uint64_t *value, uint8_t *state) {
    unsigned char info[TCP_INFO_BYTES_RECEIVED_AT + 8];
    socklen_t len = sizeof(info);
    if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, info, &len) != 0 || len < sizeof(info)) return -1;
    memcpy(value, info + at, sizeof(*value));
    if (state) *state = info[0];
    return 0;
}

int64_t tcp_bytes_received(int fd) {
    uint64_t value;
    return tcp_info_u64(fd, TCP_INFO_BYTES_RECEIVED_AT, &value, NULL) == 0 ? (int64_t)value : -1;
}

/* Bytes the send queue of `fd` has taken so far (acknowledged + still queued), up to a constant; -1: the socket
 * can take no more (reset, closed), so nothing is waiting for it either, or (`open`) its peer's FIN came. */
static int64_t taken(int fd, int open) {
    uint64_t acked;
    uint8_t state;
    int outq = 0;
    if (fd < 0 || tcp_info_u64(fd, TCP_INFO_BYTES_ACKED_AT, &acked, &state) != 0) return -1;
    if (state != TCP_ESTABLISHED && (open || state != TCP_CLOSE_WAIT)) return -1;
    if (ioctl(fd, SIOCOUTQ, &outq) != 0) return -1;
    return (int64_t)(acked + (uint64_t)outq);
}

/* ---- tunnels ------------------------------------------------------------------------------------- */

static struct sm_value *value_of(Relay *r, tunnel_t *t, int i) { return &r->sm.values[2 * t->sm_slot + i]; }
static uint32_t key_of(tunnel_t *t, int i) { return (uint32_t)(2 * t->sm_slot + i); }

/* Bytes redirected from end i that end 1-i's send queue has not taken yet; 0 when it can take no more. */
static uint64_t backlog(Relay *r, tunnel_t *t, int i) {
    int64_t now_taken = taken(t->ends[1 - i].fd, 0);
    if (now_taken < 0) return 0;
    uint64_t redirected = __atomic_load_n(&value_of(r, t, i)->bytes, __ATOMIC_ACQUIRE);
    uint64_t moved = (uint64_t)now_taken - t->sm_base[1 - i];
    return redirected > moved ? redirected - moved : 0;
}

/* End i may redirect up to SM_CREDIT beyond what its peer's send queue has taken. */
static void set_limit(Relay *r, tunnel_t *t, int i) {
    int64_t now_taken = taken(t->ends[1 - i].fd, 0);
    if (now_taken >= 0)
        __atomic_store_n(&value_of(r, t, i)->limit, (uint64_t)now_taken - t->sm_base[1 - i] + SM_CREDIT,
                         __ATOMIC_RELEASE);
}

/* An end whose input the kernel redirects is watched for EPOLLRDHUP, not EPOLLIN: every skb the program redirects
 * still runs the socket's EPOLLIN wake-up, which woke the thread for nothing about once per message (0.5-0.7
 * wake-ups per message, bench/relay_counts.py). FIN, resets and errors still wake it (RDHUP, HUP, ERR); input the
 * program passes to the socket is found by sockmap_sweep. */
uint32_t sockmap_interest(end_t *e, uint32_t want) {
    tunnel_t *t = e->tunnel;
    int redirected = t->sm_state == SM_ON || ((t->sm_state == SM_HALF || t->sm_state == SM_MIXED) &&
                                              e != &t->ends[t->sm_half]);
    return redirected && (want & EPOLLIN) ? (want & ~(uint32_t)EPOLLIN) | EPOLLRDHUP : want;
}

/* Stop the redirects (both ends pass from now on: what arrives waits in the sockets for the thread's recv, under
 * the TCP window) and take the ends out of epoll (that input would wake the thread in a loop); SM_DRAIN until
 * sockmap_sweep sees the kernel's queues empty. The sockets stay in the maps until they close: taking one out
 * of `sources` while an skb is on its way through the program drops that skb (the kernel clears the program
 * under the running verdict; seen here as lost bytes and sk_drops). */
static void stop_redirect(Relay *r, tunnel_t *t) {
    for (int i = 0; i < 2; i++) {
        __atomic_store_n(&value_of(r, t, i)->passing, 1, __ATOMIC_RELEASE);
        end_t *e = &t->ends[i];
        if (e->fd >= 0) epoll_ctl(r->epfd, EPOLL_CTL_DEL, e->fd, NULL);
        e->events = 0;
    }
    t->sm_state = SM_DRAIN;
    t->sm_drain_at_ms = now_ms();
    r->sm.left++;
    want_sweep(r, 5);
}

/* Relay all end i holds to its peer, until a short read: the kernel's first verdict run (tcp_read_skb) takes every
 * skb of the receive queue whole, so one the thread (or Python, or the head's read) has read part of would be
 * redirected again from its start (the 101 and the bytes after it, twice). A short read leaves the queue empty:
 * what comes after it are whole skbs. Returns 0 when all of it was sent; -1 (the tunnel stays on the thread, with
 * what the peer did not take pending) on EOF, an error, a full peer or a sender faster than 16 reads; -1 with the
 * tunnel aborted when out of memory. */
static int empty_receive_queue(Relay *r, tunnel_t *t, int i) {
    end_t *src = &t->ends[i], *dst = &t->ends[1 - i];
    for (int k = 0; k < 16; k++) {
        ssize_t n = recv(src->fd, r->buffer, CHUNK_BYTES, MSG_DONTWAIT);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) return errno == EAGAIN || errno == EWOULDBLOCK ? 0 : -1;
        if (n == 0) return -1; /* the thread's epoll finds the EOF again */
        src->read_bytes += (uint64_t)n;
        t->moved += (uint64_t)n;
        size_t sent = 0;
        while (sent < (size_t)n) {
            ssize_t w = send(dst->fd, r->buffer + sent, (size_t)n - sent, MSG_NOSIGNAL | MSG_DONTWAIT);
            if (w < 0 && errno == EINTR) continue;
            if (w < 0) break;
            sent += (size_t)w;
        }
        if (sent < (size_t)n) {
            /* The thread's own backpressure from here: end i is not read until its peer took these. */
            if (append_pending(dst, r->buffer + sent, (size_t)n - sent) != 0) {
                abort_tunnel(r, t); /* out of memory: as on_readable does */
                return -1;
            }
            set_interest(r, src, 0);
            set_interest(r, dst, EPOLLIN | EPOLLOUT);
            return -1;
        }
        if ((size_t)n < CHUNK_BYTES) return 0;
    }
    return -1;
}

/* Hand a tunnel to the kernel (once; on failure it stays on the thread). Returns 0 when it was not tried: the
 * sockmap is off, the tunnel had its try, is closing, has bytes pending (tried later) or no slot is free. */
int sockmap_enter(Relay *r, tunnel_t *t) {
    if (!r->sm.on || t->sm_tried || t->finished || t->closing || t->state != ST_RELAY || r->sm.nfree == 0
        || t->ends[0].pending_len || t->ends[1].pending_len)
        return 0;
    t->sm_tried = 1;
    int fds[2] = {t->ends[0].fd, t->ends[1].fd};
    if (fds[0] < 0 || fds[1] < 0) return 1;
    if (empty_receive_queue(r, t, 0) != 0 || empty_receive_queue(r, t, 1) != 0) return 1;
    for (int i = 0; i < 2; i++) {
        socklen_t len = sizeof(t->sm_cookie[i]);
        int64_t base = taken(fds[i], 1); /* the sockmap refuses a socket past ESTABLISHED: no calls in vain */
        if (base < 0 || getsockopt(fds[i], SOL_SOCKET, SO_COOKIE, &t->sm_cookie[i], &len) != 0) return 1;
        t->sm_base[i] = (uint64_t)base;
    }
    t->sm_slot = r->sm.free_slots[--r->sm.nfree];
    t->sm_cookies = t->sm_mapped = 0;
    for (int i = 0; i < 2; i++) {
        uint32_t key = key_of(t, i);
        struct sm_value *v = &r->sm.values[key];
        v->bytes = 0;
        v->limit = SM_CREDIT;
        v->passing = 0;
        t->sm_seen[i] = 0;
        if (map_update(r->sm.targets, &key, &fds[i]) != 0) goto undo;
        t->sm_mapped |= 1 << i;
    }
    const uint32_t keys[2] = {key_of(t, 0), key_of(t, 1)};
    if (update_pair(r->sm.cookies, t->sm_cookie, keys, &t->sm_cookies) != 0) goto undo;
    /* From here the tunnel is the kernel's, even if only one end made it into `sources`. */
    t->sm_state = SM_ON;
    r->sm.entered++;
    for (int i = 0; i < 2; i++) set_interest(r, &t->ends[i], t->ends[i].events); /* EPOLLIN -> EPOLLRDHUP */
    for (int i = 0; i < 2; i++) {
        uint32_t key = key_of(t, i);
        if (map_update(r->sm.sources, &key, &fds[i]) != 0) {
            stop_redirect(r, t);
            return 1;
        }
        t->sm_mapped |= 4 << i;
    }
    /* Bytes that arrived since the thread's last read wait in the receive queue: make TCP offer them now. */
    int one = 1;
    for (int i = 0; i < 2; i++) setsockopt(fds[i], SOL_SOCKET, SO_RCVLOWAT, &one, sizeof(one));
    t->sm_limit_at_ms = now_ms();
    want_sweep(r, SM_REFRESH_MS);
    return 1;
undo:
    sockmap_release(r, t);
    return 1;
}

/* Forget the tunnel's keys and free its slot (when it finishes, or could not enter). Its sockets left the
 * sockmaps when they closed; its cookies go later, with others (two system calls fewer per tunnel). */
void sockmap_release(Relay *r, tunnel_t *t) {
    if (t->sm_slot < 0 || !r->sm.on) return;
    for (int i = 0; i < 2; i++) {
        uint32_t key = key_of(t, i);
        if (t->ends[i].fd >= 0 && (t->sm_mapped & (4 << i))) map_delete(r->sm.sources, &key);
        if (t->ends[i].fd >= 0 && (t->sm_mapped & (1 << i))) map_delete(r->sm.targets, &key);
        if (!(t->sm_cookies & (1 << i))) continue;
        r->sm.stale[r->sm.nstale++] = t->sm_cookie[i];
        if (r->sm.nstale == SM_STALE) delete_stale(&r->sm);
    }
    t->sm_cookies = 0;
    r->sm.free_slots[r->sm.nfree++] = t->sm_slot;
    t->sm_slot = -1;
    t->sm_state = SM_OFF;
}

/* Back to the thread: returns 1 when the tunnel was (or still is) the kernel's, so the caller's work waits for
 * the drain; `then_close`: begin_close runs after it. */
int sockmap_leave(Relay *r, tunnel_t *t, int then_close) {
    if (t->sm_state == SM_OFF) return 0;
    t->sm_then_close |= then_close;
    if (t->sm_state != SM_DRAIN) stop_redirect(r, t);
    sockmap_sweep(r, t, now_ms());
    return 1;
}

/* Register the open ends with epoll again after a drain, with the thread's interest (arm_relay's, for ends that
 * may have closed meanwhile). Returns -1 when epoll refuses. */
static int watch_again(Relay *r, tunnel_t *t) {
    for (int i = 0; i < 2; i++) {
        end_t *e = &t->ends[i];
        if (e->fd < 0) continue;
        uint32_t want = (t->ends[1 - i].pending_len ? 0 : EPOLLIN) | (e->pending_len ? EPOLLOUT : 0);
        struct epoll_event ev = {.events = want, .data.ptr = e};
        if (epoll_ctl(r->epfd, EPOLL_CTL_ADD, e->fd, &ev) != 0) return -1;
        e->events = want;
    }
    return 0;
}

/* An epoll event on a tunnel the kernel relays (at least one way). Returns 1 when it is handled here, 0 when the
 * thread's ordinary code takes it (SM_MIXED, on the end whose input the thread relays). What can come:
 * - nothing: bytes that reached end i before it entered `sources` woke the thread, then the kick redirected them
 *   (a peek finds nothing);
 * - input the program passed because end i ran SM_CREDIT ahead of its peer: that direction goes to the thread
 *   (SM_HALF until the kernel's queue for it is flushed, then SM_MIXED) while the other one stays the kernel's,
 *   so that what the peer still sends (a close frame before a reset) keeps going the way it went;
 * - EOF, an error, a hang-up, or any event in SM_HALF: the whole tunnel goes back to the thread. */
int sockmap_event(Relay *r, tunnel_t *t, int i, uint32_t got) {
    /* The thread's own end, and its writes to the other one (EPOLLOUT alone: input there is the kernel's). */
    if (t->sm_state == SM_MIXED && (i == t->sm_half || !(got & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR))))
        return 0;
    if (t->sm_state == SM_DRAIN) return 1;
    if (t->sm_state == SM_ON && !(got & (EPOLLHUP | EPOLLERR))) {
        char byte;
        ssize_t n = recv(t->ends[i].fd, &byte, 1, MSG_PEEK | MSG_DONTWAIT);
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) && !value_of(r, t, i)->passing) return 1;
        if (n > 0 && value_of(r, t, i)->passing && !value_of(r, t, 1 - i)->passing) {
            t->sm_state = SM_HALF;
            t->sm_half = i;
            t->sm_drain_at_ms = now_ms();
            set_interest(r, &t->ends[i], 0);
            r->sm.pauses++;
            want_sweep(r, 5);
            return 1;
        }
    }
    sockmap_leave(r, t, 0);
    return 1;
}

/* The sweep's part: count activity for the idle timeout, move each direction's limit along with what its peer
 * took, finish a drain. Returns 1 when the tunnel is draining (the idle rules wait). */
int sockmap_sweep(Relay *r, tunnel_t *t, uint64_t now) {
    if (t->sm_state == SM_ON || t->sm_state == SM_MIXED || t->sm_state == SM_HALF) {
        /* Input the program passed (out of credit) does not wake the thread on an end watched for EPOLLRDHUP
         * (set_interest): it is found here, at most SM_REFRESH_MS late, on a direction whose peer is slow anyway. */
        for (int i = 0; i < 2; i++) {
            if (t->sm_state != SM_ON && i == t->sm_half) continue;
            if (!__atomic_load_n(&value_of(r, t, i)->passing, __ATOMIC_ACQUIRE)) continue;
            char byte;
            ssize_t n = recv(t->ends[i].fd, &byte, 1, MSG_PEEK | MSG_DONTWAIT);
            if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
                want_sweep(r, 5); /* the passed skb is on its way into the receive queue */
                continue;
            }
            sockmap_event(r, t, i, EPOLLIN);
            return 1;
        }
        int refresh = now - t->sm_limit_at_ms >= SM_REFRESH_MS;
        for (int i = 0; i < 2; i++) {
            uint64_t bytes = __atomic_load_n(&value_of(r, t, i)->bytes, __ATOMIC_ACQUIRE);
            if (bytes == t->sm_seen[i] || !refresh) continue;
            set_limit(r, t, i);
            t->moved += bytes - t->sm_seen[i];
            t->sm_seen[i] = bytes;
        }
        if (refresh) t->sm_limit_at_ms = now;
        if (t->sm_state != SM_HALF) return 0;
        /* The thread relays end sm_half's input once the kernel has handed its peer all it redirected (the
         * program set `passing` itself, after every earlier redirect of that socket had been queued). A peer
         * that never reads keeps it here, as it would keep the thread's own relaying waiting. */
        if (backlog(r, t, t->sm_half)) return 1;
        t->sm_state = SM_MIXED;
        set_interest(r, &t->ends[t->sm_half], EPOLLIN);
        return 1;
    }
    if (t->sm_state != SM_DRAIN) return 0;
    /* A program run that read `passing` before the thread set it may still be between counting its skb and
     * queueing it: they run in softirq and take microseconds, so a drain is judged from the next millisecond on. */
    if (now - t->sm_drain_at_ms < 2 || backlog(r, t, 0) || backlog(r, t, 1)) {
        if (now - t->sm_drain_at_ms >= r->flush_timeout_ms) abort_tunnel(r, t);
        return 1;
    }
    /* The thread's rules from here on (the sockets' recv works as ever while they stay in the maps): it finds
     * what is left (input, EOF, errors) as epoll reports it. */
    t->sm_state = SM_OFF;
    if (watch_again(r, t) != 0) {
        abort_tunnel(r, t);
        return 1;
    }
    if (t->sm_then_close && !t->finished) begin_close(r, t);
    return 1;
}
