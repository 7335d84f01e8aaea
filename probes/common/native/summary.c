/* Hash and statistics of a float array in one pass over memory (see probes/common/native_summary.py).
 *
 * The array is read in blocks small enough for the L1 cache: each block is fed to XXH3-128 and reduced
 * right after, so a tensor that is not in cache is read from memory once instead of once per statistic.
 * Reductions keep LANES independent accumulators, which the compiler turns into SIMD registers without
 * -ffast-math: each lane is summed in order (and, built with -ffp-contract=off, without fused
 * multiply-adds), so the result is the same on every run and machine.
 * Float lanes are folded into double totals after every block, which keeps float32 sums accurate.
 * Comparisons are written as `v < lo ? v : lo` (the semantics of the SIMD min instruction): NaN never
 * wins, and is reported by its count instead. NaN and Inf are not counted in the hot loop: either makes
 * the block's sum non-finite, and only such a block is read again to count them.
 *
 * An array of more than CHUNK bytes is read as CHUNK-byte chunks, each on whichever thread has it
 * (contiguous runs of chunks per thread, as the framework splits its own loops: each core mostly reads
 * what it just wrote, from its own cache). Its hash is XXH3-128 of the prefix then every chunk's
 * XXH3-128 (canonical, 16 bytes) in order, its sums those of the chunks added in order: the results do not
 * depend on the number of threads. An array of at most CHUNK bytes is hashed whole, XXH3-128 of the prefix
 * then its bytes. probes/common/hashing.py computes the same hashes in Python.
 */
#include <math.h>
#include <pthread.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define XXH_INLINE_ALL
#include "xxhash.h"

#define BLOCK 4096 /* elements per block: 16 KiB of float32; divides CHUNK for float32 and float64 */
#define CHUNK (64 * 1024) /* bytes: hashing.CHUNK_BYTES */
#define LANES 16
#define MAX_THREADS 64

/* What one range of an array (the whole array, or one chunk) holds. */
typedef struct {
    double lo, hi, sum, sumsq;
    int64_t zeros, nans, infs;
    unsigned char digest[16];
} part_t;

/* The hot loop over one block's whole rows of LANES values; ZEROS is a constant, so each copy is lean. */
#define REDUCE_ROWS(T, ACC, ZEROS)                                                                      \
    for (; i < whole; i += LANES) {                                                                     \
        for (int j = 0; j < LANES; j++) {                                                               \
            T v = x[i + j];                                                                             \
            lo[j] = v < lo[j] ? v : lo[j];                                                              \
            hi[j] = v > hi[j] ? v : hi[j];                                                              \
            s[j] += v;                                                                                  \
            ss[j] += (ACC)v * v;                                                                        \
            if (ZEROS) z[j] += v == 0;                                                                  \
        }                                                                                               \
    }

/* One range [x, x + n), n > 0: `state` (when not NULL) takes its bytes; `p` its statistics (when
   want_stats). Returns 0, or 1 on failure. */
#define DEFINE_RANGE(NAME, T, ACC)                                                                      \
    static int NAME(const T *x, int64_t n, XXH3_state_t *state, int want_stats, int want_zeros,         \
                    part_t *p) {                                                                        \
        T lo[LANES], hi[LANES];                                                                         \
        ACC s[LANES], ss[LANES];                                                                        \
        int32_t z[LANES];                                                                               \
        T first = x[0];                                                                                 \
        for (int j = 0; j < LANES; j++) {                                                               \
            lo[j] = first; hi[j] = first; s[j] = 0; ss[j] = 0; z[j] = 0;                                \
        }                                                                                               \
        double sum = 0, sumsq = 0;                                                                      \
        int64_t zeros = 0, nans = 0, infs = 0;                                                          \
        for (int64_t start = 0; start < n; start += BLOCK) {                                            \
            int64_t end = start + BLOCK < n ? start + BLOCK : n;                                        \
            if (state && XXH3_128bits_update(state, x + start, (size_t)(end - start) * sizeof(T))       \
                             != XXH_OK)                                                                 \
                return 1;                                                                               \
            if (!want_stats) continue;                                                                  \
            int64_t i = start, whole = start + (end - start) / LANES * LANES;                           \
            if (want_zeros) {                                                                           \
                REDUCE_ROWS(T, ACC, 1)                                                                  \
            } else {                                                                                    \
                REDUCE_ROWS(T, ACC, 0)                                                                  \
            }                                                                                           \
            for (; i < end; i++) {                                                                      \
                T v = x[i];                                                                             \
                lo[0] = v < lo[0] ? v : lo[0];                                                          \
                hi[0] = v > hi[0] ? v : hi[0];                                                          \
                s[0] += v;                                                                              \
                ss[0] += (ACC)v * v;                                                                    \
                z[0] += v == 0;                                                                         \
            }                                                                                           \
            ACC block = 0;                                                                              \
            for (int j = 0; j < LANES; j++) {                                                           \
                block += s[j];                                                                          \
                sum += s[j]; sumsq += ss[j]; zeros += z[j];                                             \
                s[j] = 0; ss[j] = 0; z[j] = 0;                                                          \
            }                                                                                           \
            if (!(block - block == 0)) { /* NaN or Inf in this block (or a float overflow): count */    \
                for (int64_t q = start; q < end; q++) {                                                 \
                    nans += x[q] != x[q];                                                               \
                    infs += x[q] == (T)INFINITY || x[q] == -(T)INFINITY;                                \
                }                                                                                       \
            }                                                                                           \
        }                                                                                               \
        if (!want_stats) return 0;                                                                      \
        T low = first, high = first;                                                                    \
        for (int j = 0; j < LANES; j++) {                                                               \
            low = lo[j] < low ? lo[j] : low;                                                            \
            high = hi[j] > high ? hi[j] : high;                                                         \
        }                                                                                               \
        p->lo = (double)low; p->hi = (double)high; p->sum = sum; p->sumsq = sumsq;                      \
        p->zeros = want_zeros ? zeros : 0; p->nans = nans; p->infs = infs;                              \
        return 0;                                                                                       \
    }

DEFINE_RANGE(range_f32, float, float)
DEFINE_RANGE(range_f64, double, double)

/* Kinds of an item: float32 and float64 values with statistics, any other array's bytes hashed only. */
enum { KIND_F32 = 0, KIND_F64 = 1, KIND_BYTES = 2 };

static int64_t item_bytes(int kind, int64_t numel) {
    return kind == KIND_F32 ? numel * 4 : kind == KIND_F64 ? numel * 8 : numel;
}

static int64_t chunks_of(int64_t nbytes) { return nbytes > CHUNK ? (nbytes + CHUNK - 1) / CHUNK : 1; }

/* Bytes [from, to) of an item into `state` and, for floats, its statistics into `p` (to > from). */
static int read_range(int kind, const char *data, int64_t from, int64_t to, XXH3_state_t *state,
                      int want_stats, int want_zeros, part_t *p) {
    if (kind == KIND_F32)
        return range_f32((const float *)(data + from), (to - from) / 4, state, want_stats, want_zeros, p);
    if (kind == KIND_F64)
        return range_f64((const double *)(data + from), (to - from) / 8, state, want_stats, want_zeros, p);
    return state && XXH3_128bits_update(state, data + from, (size_t)(to - from)) != XXH_OK;
}

static void canonical(XXH3_state_t *state, unsigned char *digest) {
    XXH128_canonical_t c;
    XXH128_canonicalFromHash(&c, XXH3_128bits_digest(state));
    memcpy(digest, c.digest, 16);
}

/* Chunk c of an item of more than CHUNK bytes: its own hash (no prefix) and statistics, into `p`. */
static int read_chunk(int kind, const char *data, int64_t nbytes, int64_t c, int want_stats, int want_zeros,
                      part_t *p) {
    XXH3_state_t state;
    if (XXH3_128bits_reset(&state) != XXH_OK) return 1;
    int64_t from = c * CHUNK, to = from + CHUNK < nbytes ? from + CHUNK : nbytes;
    if (read_range(kind, data, from, to, &state, want_stats, want_zeros, p)) return 1;
    canonical(&state, p->digest);
    return 0;
}

/* out: min, max, sum, sum of squares; counts: zeros, NaN, +-Inf (float kinds); digest: the hash. */
static void write_stats(const part_t *p, double *out, int64_t *counts) {
    out[0] = p->nans ? NAN : p->lo; /* as torch.aminmax: NaN anywhere makes both NaN */
    out[1] = p->nans ? NAN : p->hi;
    out[2] = p->sum;
    out[3] = p->sumsq;
    counts[0] = p->zeros; counts[1] = p->nans; counts[2] = p->infs;
}

/* A whole item of at most CHUNK bytes (one pass, prefix first) into digest, out and counts. */
static int read_whole(int kind, const char *data, int64_t nbytes, const char *prefix, int64_t prefix_len,
                      int want_zeros, double *out, int64_t *counts, unsigned char *digest) {
    XXH3_state_t state;
    part_t p = {0, 0, 0, 0, 0, 0, 0, {0}};
    if (XXH3_128bits_reset(&state) != XXH_OK) return 1;
    if (prefix_len && XXH3_128bits_update(&state, prefix, (size_t)prefix_len) != XXH_OK) return 1;
    if (nbytes && read_range(kind, data, 0, nbytes, &state, kind != KIND_BYTES, want_zeros, &p)) return 1;
    canonical(&state, digest);
    if (kind != KIND_BYTES) write_stats(&p, out, counts);
    return 0;
}

/* An item's chunk parts, in order, into its hash and statistics. */
static int combine(int kind, const part_t *parts, int64_t n, const char *prefix, int64_t prefix_len,
                   double *out, int64_t *counts, unsigned char *digest) {
    XXH3_state_t state;
    if (XXH3_128bits_reset(&state) != XXH_OK) return 1;
    if (prefix_len && XXH3_128bits_update(&state, prefix, (size_t)prefix_len) != XXH_OK) return 1;
    part_t total = parts[0];
    for (int64_t c = 0; c < n; c++) {
        const part_t *p = parts + c;
        if (XXH3_128bits_update(&state, p->digest, 16) != XXH_OK) return 1;
        if (c == 0) continue;
        total.lo = p->lo < total.lo ? p->lo : total.lo;
        total.hi = p->hi > total.hi ? p->hi : total.hi;
        total.sum += p->sum; total.sumsq += p->sumsq;
        total.zeros += p->zeros; total.nans += p->nans; total.infs += p->infs;
    }
    canonical(&state, digest);
    if (kind != KIND_BYTES) write_stats(&total, out, counts);
    return 0;
}

/* Set by the Python side: OpenMP threads are used only where they are the framework's own (one OpenMP
   runtime in the process); a second runtime's threads would spin beside the framework's after every call. */
static int use_openmp = 0;

void summary_use_openmp(int on) { use_openmp = on; }

/* Many arrays at once, on `threads` threads (the caller's among them; the framework's OpenMP threads where
   use_openmp is set, else threads started here): the probes summarise every module output as it is made,
   and every gradient, parameter and optimizer state tensor at points of the step where training waits.
   kinds[i]: KIND_F32 and KIND_F64 (numels[i] values, with statistics), KIND_BYTES (numels[i] bytes,
   hashed only). Item i's prefix is prefixes[prefix_offsets[i]:prefix_offsets[i + 1]].
   The work is a list of tasks, an item of at most CHUNK bytes or one chunk of a larger one, in item
   order; each thread takes one contiguous run of tasks, about as many bytes as the others (so a large
   array is read half by each of two threads, as the framework wrote it). Returns the number of items that
   failed (0), or -1 when out of memory. */
typedef struct {
    int64_t n, tasks;
    const int64_t *addresses, *numels, *prefix_offsets;
    const int32_t *kinds;
    const char *prefixes;
    int want_zeros;
    double *out;
    int64_t *counts;
    unsigned char *digests;
    int64_t *first_task; /* of each item; first_task[n] = tasks */
    int64_t *task_start; /* bytes before each task, over all items; task_start[tasks] = all bytes */
    part_t *parts;       /* one per task (used for chunks of items of more than CHUNK bytes) */
    int threads;
    int64_t failed;
} batch_t;

static int64_t first_at_or_after(const int64_t *starts, int64_t count, int64_t bytes) {
    int64_t low = 0, high = count; /* the first task whose start >= bytes */
    while (low < high) {
        int64_t middle = low + (high - low) / 2;
        if (starts[middle] < bytes) low = middle + 1; else high = middle;
    }
    return low;
}

static void run_tasks(batch_t *b, int thread) {
    int64_t all = b->task_start[b->tasks];
    int64_t from = first_at_or_after(b->task_start, b->tasks, all / b->threads * thread);
    int64_t to = thread == b->threads - 1 ? b->tasks
                                          : first_at_or_after(b->task_start, b->tasks, all / b->threads * (thread + 1));
    int64_t item = 0, failed = 0;
    for (int64_t t = from; t < to; t++) {
        while (b->first_task[item + 1] <= t) item++;
        const char *data = (const char *)(intptr_t)b->addresses[item];
        int kind = b->kinds[item];
        int64_t nbytes = item_bytes(kind, b->numels[item]);
        if (b->first_task[item + 1] - b->first_task[item] == 1) {
            const char *prefix = b->prefixes + b->prefix_offsets[item];
            int64_t prefix_len = b->prefix_offsets[item + 1] - b->prefix_offsets[item];
            failed += read_whole(kind, data, nbytes, prefix, prefix_len, b->want_zeros, b->out + 4 * item,
                                 b->counts + 3 * item, b->digests + 16 * item);
        } else {
            failed += read_chunk(kind, data, nbytes, t - b->first_task[item], kind != KIND_BYTES,
                                 b->want_zeros, b->parts + t);
        }
    }
    if (failed) __atomic_fetch_add(&b->failed, failed, __ATOMIC_RELAXED);
}

typedef struct { batch_t *batch; int thread; } helper_t;

static void *run_helper(void *arg) {
    helper_t *h = (helper_t *)arg;
    run_tasks(h->batch, h->thread);
    return NULL;
}

int64_t summary_many(int64_t n, const int64_t *addresses, const int64_t *numels, const int32_t *kinds,
                     const char *prefixes, const int64_t *prefix_offsets, int want_zeros, int threads,
                     double *out, int64_t *counts, unsigned char *digests) {
    if (n <= 0) return 0;
    int64_t tasks = 0;
    for (int64_t i = 0; i < n; i++) tasks += chunks_of(item_bytes(kinds[i], numels[i]));
    int64_t *first_task = malloc((size_t)(n + 1) * sizeof(int64_t));
    int64_t *task_start = malloc((size_t)(tasks + 1) * sizeof(int64_t));
    part_t *parts = tasks > n ? malloc((size_t)tasks * sizeof(part_t)) : NULL;
    if (!first_task || !task_start || (tasks > n && !parts)) {
        free(first_task); free(task_start); free(parts);
        return -1;
    }
    int64_t t = 0, bytes = 0;
    for (int64_t i = 0; i < n; i++) {
        int64_t nbytes = item_bytes(kinds[i], numels[i]), k = chunks_of(nbytes);
        first_task[i] = t;
        for (int64_t c = 0; c < k; c++, t++) {
            task_start[t] = bytes;
            bytes += k == 1 ? nbytes : (c + 1 < k ? CHUNK : nbytes - c * CHUNK);
        }
    }
    first_task[n] = tasks;
    task_start[tasks] = bytes;
    if (threads < 1) threads = 1;
    if (threads > MAX_THREADS) threads = MAX_THREADS;
    if (threads > tasks) threads = (int)tasks;
    batch_t b = {n, tasks, addresses, numels, prefix_offsets, kinds, prefixes, want_zeros, out, counts, digests,
                 first_task, task_start, parts, threads, 0};
#ifdef _OPENMP
    if (use_openmp && threads > 1) { /* the framework's OpenMP threads, each its run of tasks */
        _Pragma("omp parallel num_threads(threads)") {
            /* fewer threads than asked (a nested region, a limit): some take more than one run */
            for (int run = omp_get_thread_num(); run < threads; run += omp_get_num_threads()) run_tasks(&b, run);
        }
    } else
#endif
    {
        pthread_t handles[MAX_THREADS];
        helper_t helpers[MAX_THREADS];
        int started[MAX_THREADS] = {0};
        for (int h = 1; h < threads; h++) {
            helpers[h].batch = &b; helpers[h].thread = h;
            started[h] = pthread_create(&handles[h], NULL, run_helper, &helpers[h]) == 0;
        }
        run_tasks(&b, 0);
        for (int h = 1; h < threads; h++) {
            if (started[h]) pthread_join(handles[h], NULL);
            else run_tasks(&b, h); /* no thread: its run here */
        }
    }
    for (int64_t i = 0; i < n; i++) {
        int64_t k = first_task[i + 1] - first_task[i];
        if (k > 1)
            b.failed += combine(kinds[i], parts + first_task[i], k, prefixes + prefix_offsets[i],
                                prefix_offsets[i + 1] - prefix_offsets[i], out + 4 * i, counts + 3 * i,
                                digests + 16 * i);
    }
    free(first_task); free(task_start); free(parts);
    return b.failed;
}

/* One array's hash and statistics (a module output, as it is made): read whole, or as a batch of one. */
#define DEFINE_SINGLE(NAME, T, KIND)                                                                    \
    int NAME(const T *x, int64_t n, const char *prefix, int64_t prefix_len, int want_zeros, int threads,  \
             double *out, int64_t *counts, unsigned char *digest) {                                     \
        int32_t kind = KIND;                                                                            \
        if (item_bytes(kind, n) <= CHUNK)                                                               \
            return read_whole(kind, (const char *)x, item_bytes(kind, n), prefix, prefix_len, want_zeros, \
                              out, counts, digest);                                                     \
        int64_t address = (int64_t)(intptr_t)x, offsets[2] = {0, prefix_len};                           \
        return (int)summary_many(1, &address, &n, &kind, prefix, offsets, want_zeros, threads, out, counts, \
                                 digest);                                                               \
    }

DEFINE_SINGLE(summary_f32, float, KIND_F32)
DEFINE_SINGLE(summary_f64, double, KIND_F64)

/* Whether this build can use OpenMP threads at all. */
int summary_openmp(void) {
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}

/* Training-health counts of an activation output seen as rows x cols (cols: the last dimension, units).
   kind 0: values with |v| > high (tanh saturation); kind 1: values below low or above high (sigmoid);
   kind 2: units never positive in any row (dead ReLU-like units; a NaN makes its unit not dead, as
   torch.amax propagates it). Thresholds are compared in the array's own type, as torch compares a
   tensor with a Python number. out: saturated, dead, units. column_max: scratch of cols values.
   From CHUNK bytes on, with threads >= 2, each thread counts its own run of rows (as the framework wrote
   them) into its own column maxima, merged in thread order: the counts are those of one thread. */
#define DEFINE_COUNTS(NAME, T)                                                                          \
    static void NAME##_fold(T *column_max, const T *row, int64_t cols) { /* NaN wins, as in torch.amax */ \
        for (int64_t c = 0; c < cols; c++) {                                                            \
            T v = row[c], m = column_max[c];                                                            \
            column_max[c] = (v > m) | (v != v) ? v : m;                                                 \
        }                                                                                               \
    }                                                                                                   \
    static int64_t NAME##_rows(const T *x, int64_t from, int64_t to, int64_t cols, int kind, T lo, T hi, \
                               T *column_max) {                                                         \
        int64_t saturated = 0;                                                                          \
        if (kind == 0) {                                                                                \
            for (int64_t i = from * cols; i < to * cols; i++) saturated += (x[i] > hi) | (-x[i] > hi);  \
        } else if (kind == 1) {                                                                         \
            for (int64_t i = from * cols; i < to * cols; i++) saturated += (x[i] < lo) | (x[i] > hi);   \
        } else if (to > from) {                                                                         \
            memcpy(column_max, x + from * cols, (size_t)cols * sizeof(T));                              \
            for (int64_t r = from + 1; r < to; r++) NAME##_fold(column_max, x + r * cols, cols);        \
        }                                                                                               \
        return saturated;                                                                               \
    }                                                                                                   \
    void NAME(const T *x, int64_t rows, int64_t cols, int kind, double low, double high, int threads,   \
              T *column_max, int64_t *out) {                                                            \
        int64_t saturated = 0, dead = 0;                                                                \
        T lo = (T)low, hi = (T)high;                                                                    \
        int parts = use_openmp && threads > 1 && rows > 1 && rows * cols * (int64_t)sizeof(T) > CHUNK  \
                        ? (threads < rows ? threads : (int)rows) : 1;                                   \
        if (parts > MAX_THREADS) parts = MAX_THREADS;                                                   \
        T *maxima = parts > 1 && kind == 2 ? malloc((size_t)(parts - 1) * (size_t)cols * sizeof(T)) : NULL; \
        if (parts > 1 && kind == 2 && !maxima) parts = 1;                                               \
        if (parts == 1) {                                                                               \
            saturated = NAME##_rows(x, 0, rows, cols, kind, lo, hi, column_max);                        \
        } else {                                                                                        \
            int64_t counted[MAX_THREADS];                                                               \
            COUNT_PARALLEL(parts, {                                                                     \
                int64_t from = rows * part / parts, to = rows * (part + 1) / parts;                     \
                counted[part] = NAME##_rows(x, from, to, cols, kind, lo, hi,                            \
                                            part ? maxima + (int64_t)(part - 1) * cols : column_max);   \
            })                                                                                          \
            for (int part = 0; part < parts; part++) saturated += counted[part];                        \
            for (int part = 1; part < parts && kind == 2; part++)                                       \
                NAME##_fold(column_max, maxima + (int64_t)(part - 1) * cols, cols);                     \
        }                                                                                               \
        free(maxima);                                                                                   \
        if (kind == 2 && rows > 0)                                                                      \
            for (int64_t c = 0; c < cols; c++) dead += column_max[c] <= 0;                              \
        out[0] = saturated; out[1] = dead; out[2] = kind == 2 ? cols : 0;                               \
    }

/* The body once per part 0..parts-1 (a variable `part`), on the framework's OpenMP threads; in order on this
   thread where OpenMP is not used (parts is then 1). */
#ifdef _OPENMP
#define COUNT_PARALLEL(parts, ...)                                                                      \
    _Pragma("omp parallel num_threads(parts)") {                                                        \
        for (int part = omp_get_thread_num(); part < parts; part += omp_get_num_threads()) __VA_ARGS__  \
    }
#else
#define COUNT_PARALLEL(parts, ...) for (int part = 0; part < parts; part++) __VA_ARGS__
#endif

DEFINE_COUNTS(activation_counts_f32, float)
DEFINE_COUNTS(activation_counts_f64, double)
