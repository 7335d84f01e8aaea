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
 */
#include <math.h>
#include <pthread.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#include <stdint.h>
#include <string.h>

#define XXH_INLINE_ALL
#include "xxhash.h"

#define BLOCK 4096 /* elements per block: 16 KiB of float32 */
/* From this many bytes on, an array summarised alone (a module output) is hashed on one thread while the
   statistics are taken on another: it was just written by the framework's threads, so half of it sits in
   the other core's cache, and the two passes each run at about the speed of the combined one. */
#define SPLIT_BYTES (64 * 1024)
#define LANES 16

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

/* out: min, max, sum, sum of squares; counts: zeros (when want_zeros), NaN, +-Inf; digest: XXH3-128 of
   prefix then the data (canonical, big-endian). want_stats = 0 only hashes, want_hash = 0 leaves the
   digest alone; either part alone gives what it gives in the combined pass. Returns 0, or 1 on failure. */
#define DEFINE_SUMMARY(NAME, T, ACC)                                                                    \
    static int NAME(const T *x, int64_t n, const char *prefix, int64_t prefix_len, int want_hash,      \
                    int want_stats, int want_zeros, double *out, int64_t *counts, unsigned char *digest) { \
        XXH3_state_t state;                                                                             \
        if (XXH3_128bits_reset(&state) != XXH_OK) return 1;                                             \
        if (want_hash && prefix_len && XXH3_128bits_update(&state, prefix, (size_t)prefix_len) != XXH_OK) \
            return 1;                                                                                   \
        T lo[LANES], hi[LANES];                                                                         \
        ACC s[LANES], ss[LANES];                                                                        \
        int32_t z[LANES];                                                                               \
        T first = n > 0 ? x[0] : (T)0;                                                                  \
        for (int j = 0; j < LANES; j++) {                                                               \
            lo[j] = first; hi[j] = first; s[j] = 0; ss[j] = 0; z[j] = 0;                                \
        }                                                                                               \
        double sum = 0, sumsq = 0;                                                                      \
        int64_t zeros = 0, nans = 0, infs = 0;                                                          \
        for (int64_t start = 0; start < n; start += BLOCK) {                                            \
            int64_t end = start + BLOCK < n ? start + BLOCK : n;                                        \
            if (want_hash && XXH3_128bits_update(&state, x + start, (size_t)(end - start) * sizeof(T))  \
                                 != XXH_OK)                                                             \
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
        if (want_hash) {                                                                                \
            XXH128_canonical_t canonical;                                                               \
            XXH128_canonicalFromHash(&canonical, XXH3_128bits_digest(&state));                          \
            memcpy(digest, canonical.digest, 16);                                                       \
        }                                                                                               \
        if (!want_stats) return 0;                                                                      \
        T low = first, high = first;                                                                    \
        for (int j = 0; j < LANES; j++) {                                                               \
            low = lo[j] < low ? lo[j] : low;                                                            \
            high = hi[j] > high ? hi[j] : high;                                                         \
        }                                                                                               \
        out[0] = nans ? NAN : (double)low; /* as torch.aminmax: NaN anywhere makes both NaN */          \
        out[1] = nans ? NAN : (double)high;                                                             \
        out[2] = sum;                                                                                   \
        out[3] = sumsq;                                                                                 \
        counts[0] = want_zeros ? zeros : 0; counts[1] = nans; counts[2] = infs;                         \
        return 0;                                                                                       \
    }

DEFINE_SUMMARY(pass_f32, float, float)
DEFINE_SUMMARY(pass_f64, double, double)

/* Set by the Python side: OpenMP threads are used only where they are the framework's own (one OpenMP
   runtime in the process); a second runtime's threads would spin beside the framework's after every call. */
static int use_openmp = 0;

void summary_use_openmp(int on) { use_openmp = on; }

/* One array's hash and statistics (want_stats = 0: the hash only). With threads >= 2 and an array of at
   least SPLIT_BYTES, the hash and the statistics are two OpenMP sections: in a torch process they run on
   torch's own OpenMP threads, which are idle (spinning) between its ops, so nothing is started or woken.
   The results are those of the single pass, whichever way it ran. */
#ifdef _OPENMP
#define SPLIT_SECTIONS(PASS, T)                                                                         \
    if (use_openmp && threads >= 2 && want_stats && n * (int64_t)sizeof(T) >= SPLIT_BYTES) {            \
        int hashed = 0, reduced = 0;                                                                    \
        _Pragma("omp parallel sections num_threads(2)")                                                 \
        {                                                                                               \
            _Pragma("omp section")                                                                      \
            hashed = PASS(x, n, prefix, prefix_len, 1, 0, 0, out, counts, digest);                      \
            _Pragma("omp section")                                                                      \
            reduced = PASS(x, n, prefix, prefix_len, 0, 1, want_zeros, out, counts, digest);            \
        }                                                                                               \
        return hashed | reduced;                                                                        \
    }
#else
#define SPLIT_SECTIONS(PASS, T) (void)threads;
#endif

int summary_f32(const float *x, int64_t n, const char *prefix, int64_t prefix_len, int want_stats, int want_zeros,
                int threads, double *out, int64_t *counts, unsigned char *digest) {
    SPLIT_SECTIONS(pass_f32, float)
    return pass_f32(x, n, prefix, prefix_len, 1, want_stats, want_zeros, out, counts, digest);
}

int summary_f64(const double *x, int64_t n, const char *prefix, int64_t prefix_len, int want_stats,
                int want_zeros, int threads, double *out, int64_t *counts, unsigned char *digest) {
    SPLIT_SECTIONS(pass_f64, double)
    return pass_f64(x, n, prefix, prefix_len, 1, want_stats, want_zeros, out, counts, digest);
}

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
   tensor with a Python number. out: saturated, dead, units. column_max: scratch of cols values. */
#define DEFINE_COUNTS(NAME, T)                                                                          \
    void NAME(const T *x, int64_t rows, int64_t cols, int kind, double low, double high, T *column_max, \
              int64_t *out) {                                                                           \
        int64_t n = rows * cols, saturated = 0, dead = 0;                                               \
        T lo = (T)low, hi = (T)high;                                                                    \
        if (kind == 0) {                                                                                \
            for (int64_t i = 0; i < n; i++) saturated += (x[i] > hi) | (-x[i] > hi);                    \
        } else if (kind == 1) {                                                                         \
            for (int64_t i = 0; i < n; i++) saturated += (x[i] < lo) | (x[i] > hi);                     \
        } else if (rows > 0) {                                                                          \
            memcpy(column_max, x, (size_t)cols * sizeof(T));                                            \
            for (int64_t r = 1; r < rows; r++) {                                                        \
                const T *row = x + r * cols;                                                            \
                for (int64_t c = 0; c < cols; c++) {                                                    \
                    T v = row[c], m = column_max[c];                                                    \
                    column_max[c] = (v > m) | (v != v) ? v : m;                                         \
                }                                                                                       \
            }                                                                                           \
            for (int64_t c = 0; c < cols; c++) dead += column_max[c] <= 0;                              \
        }                                                                                               \
        out[0] = saturated; out[1] = dead; out[2] = kind == 2 ? cols : 0;                               \
    }

DEFINE_COUNTS(activation_counts_f32, float)
DEFINE_COUNTS(activation_counts_f64, double)

/* XXH3-128 of prefix then nbytes bytes: the hash of an array of any dtype, without statistics. */
static int summary_bytes(const void *data, int64_t nbytes, const char *prefix, int64_t prefix_len,
                         unsigned char *digest) {
    XXH3_state_t state;
    if (XXH3_128bits_reset(&state) != XXH_OK) return 1;
    if (prefix_len && XXH3_128bits_update(&state, prefix, (size_t)prefix_len) != XXH_OK) return 1;
    if (nbytes && XXH3_128bits_update(&state, data, (size_t)nbytes) != XXH_OK) return 1;
    XXH128_canonical_t canonical;
    XXH128_canonicalFromHash(&canonical, XXH3_128bits_digest(&state));
    memcpy(digest, canonical.digest, 16);
    return 0;
}

/* Many arrays at once, on `threads` threads (the caller's among them; the framework's OpenMP threads where
   use_openmp is set, else threads started here): the probes summarise every gradient, parameter and
   optimizer state tensor at points of the step where training itself waits for them.
   kinds[i]: 0 float32 and 1 float64 (numels[i] values, with statistics), 2 any other array (numels[i]
   bytes, hashed only). Item i's prefix is prefixes[prefix_offsets[i]:prefix_offsets[i + 1]]. Returns the
   number of items that failed (0). */
typedef struct {
    int64_t n;
    const int64_t *addresses, *numels, *prefix_offsets;
    const int32_t *kinds;
    const char *prefixes;
    int want_zeros;
    double *out;
    int64_t *counts;
    unsigned char *digests;
    int64_t next; /* the next item to take, shared by the threads */
    int64_t failed;
} batch_t;

static void *run_batch(void *arg) {
    batch_t *b = (batch_t *)arg;
    for (;;) {
        int64_t i = __atomic_fetch_add(&b->next, 1, __ATOMIC_RELAXED);
        if (i >= b->n) return NULL;
        const char *prefix = b->prefixes + b->prefix_offsets[i];
        int64_t prefix_len = b->prefix_offsets[i + 1] - b->prefix_offsets[i];
        const void *data = (const void *)(intptr_t)b->addresses[i];
        int status;
        if (b->kinds[i] == 0)
            status = pass_f32((const float *)data, b->numels[i], prefix, prefix_len, 1, 1, b->want_zeros,
                              b->out + 4 * i, b->counts + 3 * i, b->digests + 16 * i);
        else if (b->kinds[i] == 1)
            status = pass_f64((const double *)data, b->numels[i], prefix, prefix_len, 1, 1, b->want_zeros,
                              b->out + 4 * i, b->counts + 3 * i, b->digests + 16 * i);
        else
            status = summary_bytes(data, b->numels[i], prefix, prefix_len, b->digests + 16 * i);
        if (status) __atomic_fetch_add(&b->failed, 1, __ATOMIC_RELAXED);
    }
}

int64_t summary_many(int64_t n, const int64_t *addresses, const int64_t *numels, const int32_t *kinds,
                     const char *prefixes, const int64_t *prefix_offsets, int want_zeros, int threads,
                     double *out, int64_t *counts, unsigned char *digests) {
    batch_t b = {n, addresses, numels, prefix_offsets, kinds, prefixes, want_zeros, out, counts, digests, 0, 0};
#ifdef _OPENMP
    if (use_openmp && threads > 1 && n > 1) { /* the framework's OpenMP threads take the items */
        _Pragma("omp parallel num_threads(threads)") run_batch(&b);
        return b.failed;
    }
#endif
    pthread_t helpers[64];
    int started = 0;
    if (threads > 64) threads = 64;
    for (int t = 1; t < threads && t < n; t++)
        if (pthread_create(&helpers[started], NULL, run_batch, &b) == 0) started++;
    run_batch(&b);
    for (int t = 0; t < started; t++) pthread_join(helpers[t], NULL);
    return b.failed;
}
