/* gateway._relay: the sockmap relay's kernel side. Loads the sk_skb stream-verdict program, creates its maps
 * (cookies -> keys, the mmap'ed per-socket array, the two sockmaps) and wraps the bpf(2) calls that
 * _relay_sockmap.c makes per tunnel. The program is written out in instructions so that the extension needs no
 * clang, libbpf or BTF at build or run time. */
#include "_relay.h"

#include <linux/bpf.h>
#include <sys/mman.h>
#include <sys/syscall.h>

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

int map_update(int map, const void *key, const void *value) {
    union bpf_attr attr;
    memset(&attr, 0, sizeof(attr));
    attr.map_fd = (uint32_t)map;
    attr.key = (uint64_t)(uintptr_t)key;
    attr.value = (uint64_t)(uintptr_t)value;
    attr.flags = BPF_ANY;
    return (int)sys_bpf(BPF_MAP_UPDATE_ELEM, &attr);
}

void map_delete(int map, const void *key) {
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
int update_pair(int map, const uint64_t keys[2], const uint32_t values[2], int *in) {
    *in = batch(BPF_MAP_UPDATE_BATCH, map, keys, values, 2) == 0 ? 3 : 0;
    for (int i = 0; i < 2 && *in != 3; i++) {
        if (map_update(map, &keys[i], &values[i]) != 0) return -1;
        *in |= 1 << i;
    }
    return 0;
}

/* The stale cookies in one call, else one by one. */
void delete_stale(sockmap_t *sm) {
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

