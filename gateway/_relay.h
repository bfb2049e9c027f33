/* gateway._relay's shared definitions: the tunnel and relay structures, and what its files share.
 *
 * _relay.c is the Python type (see its comment for the design), _relay_thread.c the relay thread's loop and
 * byte relaying, _relay_dial.c the dialed upgrades (Relay.dial, and the thread's side of them), _relay_index.c the
 * live tunnels by id, _relay_sockmap.c the kernel's redirect of a tunnel's bytes (Relay(sockmap=True)),
 * _relay_bpf.c its program and maps.
 */
#ifndef WSGATE_RELAY_H
#define WSGATE_RELAY_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "_relay_api.h"

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
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#include "_scan.h"

#define CHUNK_BYTES 65536
#define MAX_EVENTS 256
#define TCP_INFO_BYTES_RECEIVED_AT 128 /* u64 tcpi_bytes_received, Linux >= 4.1 */
#define HEAD_LIMIT (65536 + 4096)     /* a response head not complete by then goes back to Python (its 64 KiB rule) */
#define HEAD_FIRST_BYTES 2048
#define LAZY_MAX_MS 100               /* the longest the thread sleeps without looking at its command queue */
#define QUIET_REPORT_MS 10            /* the longest a quiet tunnel's 101 or end waits before Python is woken */

/* A dialed tunnel's life: connecting, then sending the request and reading the response head, then relaying. */
enum { ST_RELAY, ST_DIAL, ST_HEAD };

/* What the thread reports (Relay.reap): a finished tunnel, or how a dial ended. */
enum { EV_DONE, EV_UPGRADED, EV_FAILED, EV_HEAD };
enum { FAIL_CONNECT = 1, FAIL_CONNECT_TIMEOUT, FAIL_RESPONSE_TIMEOUT, FAIL_CLOSED, FAIL_ABORTED };

struct tunnel;

typedef struct {
    struct tunnel *tunnel;
    int fd;              /* -1 once closed */
    int borrowed;        /* the caller's until the 101 (dial_fast's client): forgotten, not closed, before it */
    uint32_t events;     /* what epoll watches now */
    char *pending;       /* bytes waiting to be sent to this fd */
    size_t pending_len, pending_off;
    uint64_t read_bytes; /* bytes read from this fd by the thread */
    int eof;             /* this fd said EOF: nothing more will come from it */
    int shut;            /* lingering: its write side is shut down, what it still sends is dropped */
    uint64_t linger_until_ms; /* a lingering fd is closed at its EOF or then, whichever comes first */
} end_t;

typedef struct tunnel {
    uint64_t id;
    end_t ends[2];               /* 0: client, 1: upstream */
    int closing;                 /* no more relaying; each fd gets its pending bytes, then a lingering close */
    uint64_t closing_at_ms;      /* when closing began: a peer that never reads is cut off after flush_timeout_ms */
    int collected;
    int64_t received[2];         /* bytes each side sent (TCP_INFO), -1 until known */
    uint64_t idle_ms;            /* 0: no idle timeout */
    uint64_t moved, moved_seen;  /* activity, for the idle sweep */
    uint64_t reads;              /* reads the thread relayed (on_readable): the sockmap takes a tunnel after a few */
    uint64_t active_at_ms;
    int finished;
    struct tunnel *prev, *next;  /* the live list (sweeps and shutdown) */
    /* the sockmap relay (_relay_sockmap.c): the kernel moves the bytes while sm_state is SM_ON */
    int sm_state;                /* SM_OFF, SM_ON, SM_HALF, SM_MIXED, SM_DRAIN (see _relay_sockmap.c) */
    int sm_half;                 /* SM_HALF, SM_MIXED: the end whose input the thread relays */
    int sm_tried;                /* handed to the kernel once at most: a tunnel that leaves stays on the thread */
    int sm_then_close;           /* the drain was started by a close: begin_close follows it */
    int sm_slot;                 /* its two sockets' keys are 2*slot and 2*slot+1; -1: none */
    uint64_t sm_cookie[2];       /* SO_COOKIE of each end, the keys of the cookie map */
    int sm_cookies;              /* bit i: sm_cookie[i] went into the cookie map */
    int sm_mapped;               /* 1 << i: end i went into `targets`, 4 << i: into `sources` */
    uint64_t sm_base[2];         /* bytes each end's send queue had taken (TCP_INFO acked + SIOCOUTQ) at the start */
    uint64_t sm_seen[2];         /* redirected bytes each way at the last sweep */
    uint64_t sm_drain_at_ms;
    uint64_t sm_limit_at_ms;     /* when the sweep last moved the limits */
    /* dialed tunnels (Relay.dial) before the relay starts */
    int state;
    int linked;                  /* in the live list (a dialed tunnel is registered by Python before that) */
    uint64_t created_ms;         /* when Python handed it over: its connect and response deadlines count from here */
    int forward_101;             /* relay a 101 head as it came; any other head goes back to Python */
    int quiet;                   /* its 101 and its end wake Python late (the HTTP lane's own dials, see report_event) */
    int arming;                  /* its 101 waits for the end of the turn (arm_upgrades); 2: and then a close */
    int outcome_reported;        /* the dial's end (failure or hand-back) has been reported */
    uint64_t deadline_ms;        /* connect, then response deadline; 0: none */
    uint64_t connect_timeout_ms, response_timeout_ms;
    char *head;                  /* what the instance sent so far */
    size_t head_len, head_cap;
} tunnel_t;

enum { CMD_ADD, CMD_CLOSE, CMD_ABORT, CMD_STOP };

enum { SM_OFF, SM_ON, SM_HALF, SM_MIXED, SM_DRAIN };

#define SM_TUNNELS 16384              /* tunnels the kernel carries at once; more stay on the thread */
#define SM_STALE 256                  /* finished tunnels' cookies deleted per call (never reused: none matches) */

struct sm_value {                     /* one per socket, shared with the program (offsets are in the program) */
    uint64_t bytes;                   /* redirected so far (written by the program only) */
    uint64_t limit;                   /* past it the program stops redirecting (written by the thread) */
    uint64_t passing;                 /* no more redirects: set by the program past the limit, or by the thread */
};

/* The kernel side of the sockmap relay: a verdict program, its maps and what tunnels use of them. */
typedef struct {
    int on;                      /* loaded and attached: tunnels are handed to the kernel */
    int prog, cookies, vals, targets, sources; /* descriptors, -1 when not created */
    struct sm_value *values;     /* the per-socket array, mmap'ed: counters read and limits set without syscalls */
    size_t values_len;
    int *free_slots;
    size_t nfree;
    uint64_t *stale;             /* cookies of closed sockets still in the cookie map, deleted SM_STALE at a time */
    size_t nstale;
    uint64_t entered, left;      /* tunnels handed to the kernel, and those that went back to the thread */
    uint64_t pauses;             /* directions handed to the thread because a peer fell SM_CREDIT behind */
    char why[160];               /* why it is off */
} sockmap_t;

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
    int done_signalled; /* donefd is written for the queued events (or will be this turn); under the lock */
    int done_waiting;   /* events are queued: stored under the lock, read by Relay.pending without it */
    uint64_t next_id;
    /* owned by the relay thread */
    tunnel_t *live;
    int done_owed;     /* events queued for Python this turn of the loop: donefd is written once, at its end */
    uint64_t quiet_since_ms; /* quiet events wait unsignalled since then (0: none), see report_quiet */
    tunnel_t **arming; /* tunnels whose 101 goes to the client at the end of the turn, after Python is woken */
    size_t narming, arming_cap;
    tunnel_t **index;  /* the live tunnels by id (open addressing, linear probing): commands find theirs in O(1) */
    size_t index_cap, index_count;
    uint64_t probes;   /* slots examined by id lookups (Relay.stats), to check that a lookup stays O(1) */
    uint64_t lookups;
    tunnel_t **freelater;
    size_t nfreelater, freelater_cap;
    uint64_t sweep_ms;
    uint64_t last_sweep_ms;
    pid_t owner; /* the process that started the thread (a forked child has no thread to stop) */
    uint64_t flush_timeout_ms;  /* how long a closing tunnel may wait for a peer to take its last bytes */
    uint64_t linger_ms;         /* how long a closing fd is drained after its write side is shut down */
    /* Reads the thread relays of a tunnel before it hands it to the kernel (0: at the 101; the gateway's default is
     * `wsgate.sockmap-after-reads`). Entering and leaving the sockmaps costs about 17 system calls, 9 us a tunnel
     * (`python -m bench.handshake_syscalls --perf`): more than relaying a message on the thread, and never earned
     * back by a tunnel that closes after a message each way (a reconnect, a health check). */
    uint64_t sm_after_reads;
    sockmap_t sm;
    char buffer[CHUNK_BYTES];
} Relay;

/* Shared between the module's files, not exported from it. */
#pragma GCC visibility push(hidden)

/* _relay_thread.c */
uint64_t now_ms(void);
int grow(void **items, size_t *cap, size_t need, size_t size);
void signal_fd(int fd);
void close_end(Relay *r, end_t *e);
void maybe_finish(Relay *r, tunnel_t *t);
void abort_tunnel(Relay *r, tunnel_t *t);
void set_interest(Relay *r, end_t *e, uint32_t want);
int flush(end_t *e);
int append_pending(end_t *dst, const char *data, size_t len);
void want_sweep(Relay *r, uint64_t ms);
int link_live(Relay *r, tunnel_t *t);
void arm_relay(Relay *r, tunnel_t *t, const int registered[2]);
void *relay_main(void *arg);

/* _relay_events.c */
void *take_queue(Relay *r, int fd, void **items, size_t *count, size_t *cap, int *signalled, int *waiting,
                 size_t *taken);
void report_event(Relay *r, uint64_t id, int kind, int64_t a, int64_t b, char *data, size_t len);
void report_quiet(Relay *r, tunnel_t *t, int kind, int64_t a, int64_t b); /* EV_UPGRADED, EV_DONE */
int quiet_timeout(Relay *r, int timeout); /* epoll_wait's timeout, shortened while quiet events wait */
void wake_python(Relay *r);  /* write donefd for the events queued since the last write (the thread only) */

/* _relay_bpf.c */
int sockmap_init(sockmap_t *sm);       /* 0, or -1 with sm->why set (everything released) */
void sockmap_free(sockmap_t *sm);
int map_update(int map, const void *key, const void *value);
void map_delete(int map, const void *key);  /* ENOENT is fine: a closed socket leaves the sockmaps by itself */
int update_pair(int map, const uint64_t keys[2], const uint32_t values[2], int *in);
void delete_stale(sockmap_t *sm);

/* _relay_sockmap.c */
int64_t tcp_bytes_received(int fd);
int sockmap_enter(Relay *r, tunnel_t *t);  /* 1: tried (see there) */
int sockmap_leave(Relay *r, tunnel_t *t, int then_close);
int sockmap_event(Relay *r, tunnel_t *t, int i, uint32_t got);
uint32_t sockmap_interest(end_t *e, uint32_t want); /* what epoll watches on e while the kernel relays */
int sockmap_sweep(Relay *r, tunnel_t *t, uint64_t now);
void sockmap_release(Relay *r, tunnel_t *t);
void begin_close(Relay *r, tunnel_t *t);

/* _relay_index.c */
int index_put(Relay *r, tunnel_t *t);
tunnel_t *index_get(Relay *r, uint64_t id);
void index_del(Relay *r, uint64_t id);

/* _relay_dial.c */
void fail_dial(Relay *r, tunnel_t *t, int reason, int err);
void on_dial_event(Relay *r, tunnel_t *t, uint32_t got);
void start_dial(Relay *r, tunnel_t *t);
void arm_upgrades(Relay *r);
PyObject *Relay_dial(Relay *r, PyObject *args, PyObject *kwargs);
extern const char dial_doc[];
PyObject *Relay_dial_fast(Relay *r, PyObject *const *args, Py_ssize_t nargs);
extern const char dial_fast_doc[];
PyObject *relay_api_capsule(PyTypeObject *type); /* the lane's entry point (_relay_api.h) */

/* _relay.c */
tunnel_t *tunnel_new(int client_fd, int upstream_fd, uint64_t idle_ms); /* calloc'ed; the caller sets the id */
int copy_pending(end_t *e, Py_buffer *data);

#pragma GCC visibility pop

#endif
