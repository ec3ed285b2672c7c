// The memalign shim: an LD_PRELOAD library (glibc, Linux) that serves aligned allocations of at most 64-byte
// alignment from plain malloc: malloc(n + alignment + 16), the pointer rounded up, the raw pointer and a check word
// kept in the 16 bytes below it. `yoso train` runs under it (yoso_attention/heap.py).
//
// Why: torch's CPU tensors come from posix_memalign(64, n). glibc's memalign (2.36 here) asks for n + 64 + 32 bytes,
// cuts the aligned block out and frees the slivers before and after it into the per-thread cache and the fast bins,
// where they never merge again (glibc bug 30723). A freed tensor's hole is then a few bytes too small for the next
// tensor of its size, and the heap grows instead: a quarter of a training process's resident memory, and more for
// some sequences of tensor sizes than for others (docs/studies.md, "The resident gap is glibc's memalign"). Here a
// freed block is exactly what the next request of its size asks for.
//
// Never mixed with another allocator: heap.py preloads it only where LD_PRELOAD is empty.
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

extern void* __libc_malloc(size_t);
extern void __libc_free(void*);
extern void* __libc_realloc(void*, size_t);
extern void* __libc_memalign(size_t, size_t);

#define CHECK 0x59a50a11a1f0ab1eULL  // header word 2 is CHECK ^ raw pointer
#define MAX_ALIGN 64

static int is_shimmed(const void* p) {
    if (!p || ((uintptr_t)p & (MAX_ALIGN - 1)) != 0) return 0;
    const uint64_t* h = (const uint64_t*)p;  // p - 16 is a chunk header (glibc) or our header: readable either way
    return h[-2] == (CHECK ^ h[-1]);
}

static void* aligned(size_t align, size_t n) {
    if (align <= 16) return __libc_malloc(n);  // malloc's own alignment
    if (align > MAX_ALIGN || (align & (align - 1)) != 0) return __libc_memalign(align, n);
    if (n > SIZE_MAX - align - 16) {
        errno = ENOMEM;
        return NULL;
    }
    char* raw = __libc_malloc(n + align + 16);
    if (!raw) return NULL;
    uint64_t* p = (uint64_t*)(((uintptr_t)raw + 16 + align - 1) & ~(uintptr_t)(align - 1));
    p[-1] = (uint64_t)(uintptr_t)raw;
    p[-2] = CHECK ^ p[-1];
    return p;
}

static char* raw_of(void* p) { return (char*)(uintptr_t)((uint64_t*)p)[-1]; }

void free(void* p) {
    if (!is_shimmed(p)) {
        __libc_free(p);
        return;
    }
    char* raw = raw_of(p);
    ((uint64_t*)p)[-2] = 0;  // a stale header must not match after the memory is reused
    __libc_free(raw);
}

size_t malloc_usable_size(void* p) {
    static size_t (*next)(void*) = NULL;
    if (!next) next = (size_t (*)(void*))dlsym(RTLD_NEXT, "malloc_usable_size");
    if (!is_shimmed(p)) return next(p);
    char* raw = raw_of(p);
    return next(raw) - (size_t)((char*)p - raw);
}

void* realloc(void* p, size_t n) {
    if (!is_shimmed(p)) return __libc_realloc(p, n);
    size_t old = malloc_usable_size(p);
    void* out = __libc_malloc(n);
    if (out) {
        memcpy(out, p, old < n ? old : n);
        free(p);
    }
    return out;
}

int posix_memalign(void** out, size_t align, size_t n) {
    if (align == 0 || align % sizeof(void*) != 0 || (align & (align - 1)) != 0) return EINVAL;
    void* p = aligned(align, n);
    if (!p) return ENOMEM;
    *out = p;
    return 0;
}

void* aligned_alloc(size_t align, size_t n) { return aligned(align, n); }
void* memalign(size_t align, size_t n) { return aligned(align, n); }
