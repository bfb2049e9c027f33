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
 * - Data never wakes the thread while the kernel relays; FIN, a reset or an error still do (EPOLLIN, ERR, HUP).
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

#include <linux/bpf.h>
#include <linux/sockios.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>

#define SM_TUNNELS 16384              /* tunnels the kernel carries at once; more stay on the thread */
#define SM_CREDIT (4u << 20)          /* bytes a peer's send queue may lag what was redirected to it */
#define SM_REFRESH_MS 50              /* how often a moving tunnel's limits follow its peers (4 syscalls each): a
                                       * direction faster than SM_CREDIT per SM_REFRESH_MS (80 MB/s) goes back to
                                       * the thread, correct but slower */
#define TCP_INFO_BYTES_ACKED_AT 120   /* u64 tcpi_bytes_acked, Linux >= 4.1 */
#define SM_STALE 256                  /* finished tunnels' cookies deleted per call (never reused: none matches) */
/* SM_CREDIT bounds the kernel's queue per direction: per tunnel at most 2 x SM_CREDIT beyond the socket buffers,
 * plus what arrives between the program's signal and the thread's reaction. */

struct sm_value {                     /* one per socket, shared with the program (offsets are in the program) */
    uint64_t bytes;                   /* redirected so far (written by the program only) */
    uint64_t limit;                   /* past it the program stops redirecting (written by the thread) */
    uint64_t passing;                 /* no more redirects: set by the program past the limit, or by the thread */
};

static long sys_bpf(int cmd, union bpf_attr *attr) { return syscall(__NR_bpf, cmd, attr, sizeof(*attr)); }

#define INSN(c, d, s, o, i) ((struct bpf_insn){.code = (c), .dst_reg = (d), .src_reg = (s), .off = (o), .imm = (i)})
#define LD_MAP(reg, fd) INSN(BPF_LD | BPF_IMM | BPF_DW, reg, BPF_PSEUDO_MAP_FD, 0, fd), INSN(0, 0, 0, 0, 0)

static int load_program(sockmap_t *sm) {
    /* r6 = skb; key = cookies[socket cookie]; v = values[key]; unless v.passing or out of credit:
     * v.bytes += len, redirect to targets[key ^ 1] (egress). Out of credit it sets v.passing for good. Passing:
     * SK_PASS, the socket keeps the skb (for its own recv) and wakes its reader. */
    struct bpf_insn prog[] = {
        INSN(BPF_ALU64 | BPF_MOV | BPF_X, 6, 1, 0, 0),
        INSN(BPF_JMP | BPF_CALL, 0, 0, 0, BPF_FUNC_get_socket_cookie),
        INSN(BPF_STX | BPF_MEM | BPF_DW, 10, 0, -8, 0),
        INSN(BPF_ALU64 | BPF_MOV | BPF_X, 2, 10, 0, 0),
        INSN(BPF_ALU64 | BPF_ADD | BPF_K, 2, 0, 0, -8),
        LD_MAP(1, sm->cookies),                                  /* 5, 6 */
        INSN(BPF_JMP | BPF_CALL, 0, 0, 0, BPF_FUNC_map_lookup_elem),
        INSN(BPF_JMP | BPF_JEQ | BPF_K, 0, 0, 27, 0),           /* 8: not ours -> pass (36) */
        INSN(BPF_LDX | BPF_MEM | BPF_W, 8, 0, 0, 0),            /* r8 = key */
        INSN(BPF_STX | BPF_MEM | BPF_W, 10, 8, -12, 0),
        INSN(BPF_ALU64 | BPF_MOV | BPF_X, 2, 10, 0, 0),
        INSN(BPF_ALU64 | BPF_ADD | BPF_K, 2, 0, 0, -12),
        LD_MAP(1, sm->vals),                                     /* 13, 14 */
        INSN(BPF_JMP | BPF_CALL, 0, 0, 0, BPF_FUNC_map_lookup_elem),
        INSN(BPF_JMP | BPF_JEQ | BPF_K, 0, 0, 19, 0),           /* 16 -> 36 */
        INSN(BPF_ALU64 | BPF_MOV | BPF_X, 7, 0, 0, 0),
        INSN(BPF_LDX | BPF_MEM | BPF_W, 1, 6, 0, 0),            /* r1 = skb->len */
        INSN(BPF_LDX | BPF_MEM | BPF_DW, 2, 7, 16, 0),          /* passing */
        INSN(BPF_JMP | BPF_JNE | BPF_K, 2, 0, 15, 0),           /* 20 -> 36 */
        INSN(BPF_LDX | BPF_MEM | BPF_DW, 2, 7, 0, 0),
        INSN(BPF_ALU64 | BPF_ADD | BPF_X, 2, 1, 0, 0),          /* bytes + len */
        INSN(BPF_LDX | BPF_MEM | BPF_DW, 3, 7, 8, 0),
        INSN(BPF_JMP | BPF_JGT | BPF_X, 2, 3, 9, 0),            /* 24: over the limit -> stop (34) */
        INSN(BPF_STX | BPF_MEM | BPF_DW, 7, 2, 0, 0),
        INSN(BPF_ALU64 | BPF_MOV | BPF_X, 3, 8, 0, 0),
        INSN(BPF_ALU64 | BPF_XOR | BPF_K, 3, 0, 0, 1),          /* the peer's key */
        INSN(BPF_ALU64 | BPF_MOV | BPF_X, 1, 6, 0, 0),
        LD_MAP(2, sm->targets),                                  /* 29, 30 */
        INSN(BPF_ALU64 | BPF_MOV | BPF_K, 4, 0, 0, 0),          /* flags 0: the peer's egress */
        INSN(BPF_JMP | BPF_CALL, 0, 0, 0, BPF_FUNC_sk_redirect_map),
        INSN(BPF_JMP | BPF_EXIT, 0, 0, 0, 0),
        INSN(BPF_ALU64 | BPF_MOV | BPF_K, 2, 0, 0, 1),          /* 34: stop redirecting */
        INSN(BPF_STX | BPF_MEM | BPF_DW, 7, 2, 16, 0),
        INSN(BPF_ALU64 | BPF_MOV | BPF_K, 0, 0, 0, SK_PASS),    /* 36 */
        INSN(BPF_JMP | BPF_EXIT, 0, 0, 0, 0),
    };
    union bpf_attr attr;
    memset(&attr, 0, sizeof(attr));
    attr.prog_type = BPF_PROG_TYPE_SK_SKB;
    attr.insns = (uint64_t)(uintptr_t)prog;
    attr.insn_cnt = sizeof(prog) / sizeof(prog[0]);
    attr.license = (uint64_t)(uintptr_t)"GPL"; /* bpf_sk_redirect_map is GPL-only */
    return (int)sys_bpf(BPF_PROG_LOAD, &attr);
}

static int create_map(uint32_t type, uint32_t key_size, uint32_t value_size, uint32_t entries, uint32_t flags) {
    union bpf_attr attr;
    memset(&attr, 0, sizeof(attr));
    attr.map_type = type;
    attr.key_size = key_size;
    attr.value_size = value_size;
    attr.max_entries = entries;
    attr.map_flags = flags;
    return (int)sys_bpf(BPF_MAP_CREATE, &attr);
}

static int map_update(int map, const void *key, const void *value) {
    union bpf_attr attr;
    memset(&attr, 0, sizeof(attr));
    attr.map_fd = (uint32_t)map;
    attr.key = (uint64_t)(uintptr_t)key;
    attr.value = (uint64_t)(uintptr_t)value;
    attr.flags = BPF_ANY;
    return (int)sys_bpf(BPF_MAP_UPDATE_ELEM, &attr);
}

static void map_delete(int map, const void *key) {
    union bpf_attr attr;
    memset(&attr, 0, sizeof(attr));
    attr.map_fd = (uint32_t)map;
    attr.key = (uint64_t)(uintptr_t)key;
    sys_bpf(BPF_MAP_DELETE_ELEM, &attr); /* ENOENT: a closed socket leaves the sockmaps by itself */
}

/* Several entries in one call (BPF_MAP_*_BATCH, Linux >= 5.6); 0 when every one went. */
static int batch(int cmd, int map, const void *keys, const void *values, uint32_t count) {
    union bpf_attr attr;
    memset(&attr, 0, sizeof(attr));
    attr.batch.keys = (uint64_t)(uintptr_t)keys;
    attr.batch.values = (uint64_t)(uintptr_t)values;
    attr.batch.count = count;
    attr.batch.map_fd = (uint32_t)map;
    return sys_bpf(cmd, &attr) == 0 && attr.batch.count == count ? 0 : -1;
}

/* A tunnel's two cookies in one call, else one by one; bit i of `in`: entry i went in. */
static int update_pair(int map, const uint64_t keys[2], const uint32_t values[2], int *in) {
    *in = batch(BPF_MAP_UPDATE_BATCH, map, keys, values, 2) == 0 ? 3 : 0;
    for (int i = 0; i < 2 && *in != 3; i++) {
        if (map_update(map, &keys[i], &values[i]) != 0) return -1;
        *in |= 1 << i;
    }
    return 0;
}

/* The stale cookies in one call, else one by one. */
static void delete_stale(sockmap_t *sm) {
    if (batch(BPF_MAP_DELETE_BATCH, sm->cookies, sm->stale, NULL, (uint32_t)sm->nstale) != 0)
        for (size_t k = 0; k < sm->nstale; k++) map_delete(sm->cookies, &sm->stale[k]);
    sm->nstale = 0;
}

void sockmap_free(sockmap_t *sm) {
    if (sm->values != NULL) munmap(sm->values, sm->values_len);
    sm->values = NULL;
    int *fds[] = {&sm->prog, &sm->cookies, &sm->vals, &sm->targets, &sm->sources};
    for (size_t k = 0; k < sizeof(fds) / sizeof(fds[0]); k++) {
        if (*fds[k] >= 0) close(*fds[k]);
        *fds[k] = -1;
    }
    free(sm->free_slots);
    sm->free_slots = NULL;
    sm->nfree = 0;
    free(sm->stale);
    sm->stale = NULL;
    sm->nstale = 0;
    sm->on = 0;
}

static int fail(sockmap_t *sm, const char *what) {
    snprintf(sm->why, sizeof(sm->why), "%s: %s", what, strerror(errno));
    sockmap_free(sm);
    return -1;
}

int sockmap_init(sockmap_t *sm) {
    sm->prog = sm->cookies = sm->vals = sm->targets = sm->sources = -1;
    sm->values = NULL;
    sm->free_slots = NULL;
    sm->stale = NULL;
    sm->nstale = 0;
    sm->on = 0;
    uint32_t sockets = 2 * SM_TUNNELS;
    /* Room for the stale cookies too: they must not take the place of a live tunnel's. */
    sm->cookies = create_map(BPF_MAP_TYPE_HASH, sizeof(uint64_t), sizeof(uint32_t), sockets + SM_STALE, 0);
    if (sm->cookies < 0) return fail(sm, "bpf map (hash)");
    sm->vals = create_map(BPF_MAP_TYPE_ARRAY, sizeof(uint32_t), sizeof(struct sm_value), sockets, BPF_F_MMAPABLE);
    if (sm->vals < 0) return fail(sm, "bpf map (mmapable array)");
    sm->targets = create_map(BPF_MAP_TYPE_SOCKMAP, sizeof(uint32_t), sizeof(uint32_t), sockets, 0);
    sm->sources = create_map(BPF_MAP_TYPE_SOCKMAP, sizeof(uint32_t), sizeof(uint32_t), sockets, 0);
    if (sm->targets < 0 || sm->sources < 0) return fail(sm, "bpf map (sockmap)");
    sm->values_len = sockets * sizeof(struct sm_value);
    void *values = mmap(NULL, sm->values_len, PROT_READ | PROT_WRITE, MAP_SHARED, sm->vals, 0);
    if (values == MAP_FAILED) return fail(sm, "mmap of the bpf array");
    sm->values = values;
    sm->prog = load_program(sm);
    if (sm->prog < 0) return fail(sm, "bpf program load (sk_skb)");
    union bpf_attr attr;
    memset(&attr, 0, sizeof(attr));
    attr.target_fd = (uint32_t)sm->sources;
    attr.attach_bpf_fd = (uint32_t)sm->prog;
    attr.attach_type = BPF_SK_SKB_STREAM_VERDICT;
    if (sys_bpf(BPF_PROG_ATTACH, &attr) != 0) return fail(sm, "bpf attach (stream verdict)");
    sm->free_slots = malloc(SM_TUNNELS * sizeof(int));
    sm->stale = malloc(SM_STALE * sizeof(uint64_t));
    if (sm->free_slots == NULL || sm->stale == NULL) return fail(sm, "out of memory");
    for (int k = 0; k < SM_TUNNELS; k++) sm->free_slots[k] = SM_TUNNELS - 1 - k;
    sm->nfree = SM_TUNNELS;
    sm->on = 1;
    sm->why[0] = 0;
    return 0;
}

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

/* Hand a tunnel whose pending bytes are all sent to the kernel (once; on failure it stays on the thread). */
void sockmap_enter(Relay *r, tunnel_t *t) {
    if (!r->sm.on || t->sm_tried || t->finished || t->closing || t->state != ST_RELAY || r->sm.nfree == 0) return;
    t->sm_tried = 1;
    int fds[2] = {t->ends[0].fd, t->ends[1].fd};
    if (fds[0] < 0 || fds[1] < 0 || t->ends[0].pending_len || t->ends[1].pending_len) return;
    if (empty_receive_queue(r, t, 0) != 0 || empty_receive_queue(r, t, 1) != 0) return;
    for (int i = 0; i < 2; i++) {
        socklen_t len = sizeof(t->sm_cookie[i]);
        int64_t base = taken(fds[i], 1); /* the sockmap refuses a socket past ESTABLISHED: no calls in vain */
        if (base < 0 || getsockopt(fds[i], SOL_SOCKET, SO_COOKIE, &t->sm_cookie[i], &len) != 0) return;
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
    for (int i = 0; i < 2; i++) {
        uint32_t key = key_of(t, i);
        if (map_update(r->sm.sources, &key, &fds[i]) != 0) {
            stop_redirect(r, t);
            return;
        }
        t->sm_mapped |= 4 << i;
    }
    /* Bytes that arrived since the thread's last read wait in the receive queue: make TCP offer them now. */
    int one = 1;
    for (int i = 0; i < 2; i++) setsockopt(fds[i], SOL_SOCKET, SO_RCVLOWAT, &one, sizeof(one));
    t->sm_limit_at_ms = now_ms();
    want_sweep(r, SM_REFRESH_MS);
    return;
undo:
    sockmap_release(r, t);
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
    if (t->sm_state == SM_MIXED && (i == t->sm_half || !(got & (EPOLLIN | EPOLLHUP | EPOLLERR)))) return 0;
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
