// Record and replay a process's malloc traffic (glibc, Linux): what benchmarks/heap_trace.py builds twice.
//
// -DHEAP_TRACE_RECORD: an LD_PRELOAD library that wraps malloc, calloc, realloc, free and the aligned allocators and,
// while heap_trace_enable(1) holds, records each allocation (address, bytes, thread, alignment) and the free of each
// recorded address into a static buffer that heap_trace_dump(path) writes out. No allocation of its own.
// -DHEAP_TRACE_REPLAY: heap_trace_replay(records, n, ...) makes the same calls, in order, in the calling process,
// touching every page, and reports the most heap glibc held (arena + mapped bytes) and the most bytes in use.
#define _GNU_SOURCE
#include <malloc.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    uint64_t addr;  // an address (recorded traces) or a unique id (replayed traces); frees repeat it
    int64_t bytes;  // > 0 allocation, -1 free
    int32_t tid;
    int32_t align;  // 0: malloc; else the alignment asked for
} Rec;

#ifdef HEAP_TRACE_RECORD
#include <fcntl.h>
#include <sys/syscall.h>
#include <unistd.h>

extern void* __libc_malloc(size_t);
extern void __libc_free(void*);
extern void* __libc_calloc(size_t, size_t);
extern void* __libc_realloc(void*, size_t);
extern void* __libc_memalign(size_t, size_t);

#define CAPACITY (1 << 25)  // records (1 GB of address space, touched as used)
#define LIVE (1 << 23)      // open-addressing set of recorded live addresses
static Rec records[CAPACITY];
static long n_records = 0;
static uint64_t live[LIVE];
static volatile int enabled = 0, lock_word = 0;

static void lock(void) { while (__sync_lock_test_and_set(&lock_word, 1)) {} }
static void unlock(void) { __sync_lock_release(&lock_word); }
static unsigned slot(uint64_t a) { return (unsigned)((a >> 4) * 2654435761u) & (LIVE - 1); }

static void record(void* p, size_t bytes, int align) {
    if (!p || !enabled) return;
    lock();
    unsigned h = slot((uint64_t)p);
    while (live[h]) h = (h + 1) & (LIVE - 1);
    live[h] = (uint64_t)p;
    if (n_records < CAPACITY) records[n_records++] = (Rec){(uint64_t)p, (int64_t)bytes, (int32_t)syscall(SYS_gettid), align};
    unlock();
}

static void record_free(void* p) {
    if (!p) return;
    lock();
    for (unsigned h = slot((uint64_t)p); live[h]; h = (h + 1) & (LIVE - 1)) {
        if (live[h] != (uint64_t)p) continue;
        live[h] = 0;  // backward-shift deletion keeps every probe chain whole
        for (unsigned i = h, j = (h + 1) & (LIVE - 1); live[j]; j = (j + 1) & (LIVE - 1)) {
            unsigned k = slot(live[j]);
            if ((j > i && (k <= i || k > j)) || (j < i && k <= i && k > j)) {
                live[i] = live[j];
                live[j] = 0;
                i = j;
            }
        }
        if (n_records < CAPACITY) records[n_records++] = (Rec){(uint64_t)p, -1, (int32_t)syscall(SYS_gettid), 0};
        break;
    }
    unlock();
}

void* malloc(size_t n) { void* p = __libc_malloc(n); record(p, n, 0); return p; }
void free(void* p) { record_free(p); __libc_free(p); }
void* calloc(size_t a, size_t b) { void* p = __libc_calloc(a, b); record(p, a * b, 0); return p; }
void* realloc(void* old, size_t n) { record_free(old); void* p = __libc_realloc(old, n); record(p, n, 0); return p; }
void* memalign(size_t al, size_t n) { void* p = __libc_memalign(al, n); record(p, n, (int)al); return p; }
void* aligned_alloc(size_t al, size_t n) { void* p = __libc_memalign(al, n); record(p, n, (int)al); return p; }
int posix_memalign(void** out, size_t al, size_t n) {
    void* p = __libc_memalign(al, n);
    if (!p) return 12;  // ENOMEM
    *out = p;
    record(p, n, (int)al);
    return 0;
}

void heap_trace_enable(int on) { enabled = on; }

long heap_trace_dump(const char* path) {
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) return -1;
    const char* data = (const char*)records;
    size_t left = n_records * sizeof(Rec);
    while (left > 0) {
        ssize_t k = write(fd, data, left);
        if (k <= 0) break;
        data += k;
        left -= (size_t)k;
    }
    close(fd);
    return left == 0 ? n_records : -1;
}
#endif

#ifdef HEAP_TRACE_REPLAY
// records: ids from 1 .. max_id (heap_trace.py numbers them); out[0]: most heap held, out[1]: most bytes in use,
// both over the replay and beyond what was held or in use when it began, out[2]: the record at which the most was
// held; addrs (or NULL): each allocation's address, by record.
int heap_trace_replay(const Rec* records, long n, long max_id, double* out, uint64_t* addrs) {
    void** ptr = calloc((size_t)max_id + 1, sizeof(void*));
    if (!ptr) return -1;
    struct mallinfo2 start = mallinfo2();
    const double held0 = (double)(start.arena + start.hblkhd), used0 = (double)(start.uordblks + start.hblkhd);
    double held = 0, used = 0;
    for (long i = 0; i < n; ++i) {
        const Rec r = records[i];
        if (r.bytes > 0) {
            void* p = NULL;
            if (r.align > 0) {
                if (posix_memalign(&p, (size_t)r.align, (size_t)r.bytes) != 0) p = NULL;
            } else {
                p = malloc((size_t)r.bytes);
            }
            if (!p) return -2;
            for (int64_t o = 0; o < r.bytes; o += 4096) ((volatile char*)p)[o] = 1;  // resident, as a tensor is
            ptr[r.addr] = p;
            if (addrs) addrs[i] = (uint64_t)p;
        } else if (ptr[r.addr]) {
            free(ptr[r.addr]);
            ptr[r.addr] = NULL;
        }
        if ((i & 15) == 0 || r.bytes >= 65536) {
            struct mallinfo2 m = mallinfo2();
            if ((double)(m.arena + m.hblkhd) - held0 > held) {
                held = (double)(m.arena + m.hblkhd) - held0;
                out[2] = (double)i;
            }
            if ((double)(m.uordblks + m.hblkhd) - used0 > used) used = (double)(m.uordblks + m.hblkhd) - used0;
        }
    }
    out[0] = held;
    out[1] = used;
    return 0;
}
#endif
