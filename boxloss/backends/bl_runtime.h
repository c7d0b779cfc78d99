/* boxloss: what every compiled CPU kernel library shares, the hand-written classic.c and the C generated from the
 * formulas alike (classic.c includes this file; boxloss/backends/cpu.py and variants.py put its text in front of the
 * sources they compile, so that the kernel cache's key covers it). */
#include <math.h>
#include <stddef.h>
#include <stdlib.h>

/* the weighted sum is added up per chunk, then over chunks in order: the same total for every thread count and
 * schedule. bl_partials: one slot per chunk (NULL when not reducing, or when memory is short: then one thread
 * and one running sum, acc1); bl_total: their sum, in chunk order, into *total */
static double *bl_partials(const double *total, long chunks, int *threads) {
    double *partial = total ? (double *)malloc(sizeof(double) * (size_t)(chunks > 0 ? chunks : 1)) : NULL;
    if (total && !partial) *threads = 1;
    return partial;
}
static void bl_total(double *total, double *partial, long chunks, double acc1) {
    if (!total) return;
    double sum = 0;
    if (partial) { for (long c = 0; c < chunks; ++c) sum += partial[c]; free(partial); }
    else sum = acc1;
    *total = sum;
}

/* The vectorised loops. GCC's cost model rejects them (it counts the selects as if they were branches), so they
 * are compiled with it switched off, and without partial redundancy elimination, which would turn a NaN test of
 * a maximum into a select between two NaN tests (a form GCC 12 cannot vectorise). Vectorising changes no
 * result: the same IEEE operations on each box, in the same order, without contraction
 * (tests/backends/test_dispatch.py compares the vectorised builds bit for bit with scalar ones). */
#if defined(__GNUC__) && !defined(__clang__)
#define BL_VECTOR_LOOP __attribute__((noinline, optimize("vect-cost-model=unlimited", "no-tree-pre")))
#else
#define BL_VECTOR_LOOP __attribute__((noinline))
#endif

/* How long the calling thread waited at the end of its last parallel call, and that call's duration (read by
 * cpu.py through boxloss_last_wait after a call on several threads): a long wait means a thread the machine had
 * descheduled held the call up, and cpu.py then runs the kernels on the calling thread alone for a while. */
#ifdef _OPENMP
#include <omp.h>
static __thread double bl_watch[2];
#define BL_WATCH_START double bl_t0 = omp_get_wtime(), bl_done = bl_t0
#define BL_CHUNK_DONE if (omp_get_thread_num() == 0) bl_done = omp_get_wtime()
#define BL_WATCH_END { const double bl_t1 = omp_get_wtime(); bl_watch[0] = bl_t1 - bl_done; bl_watch[1] = bl_t1 - bl_t0; }
#else
static double bl_watch[2];
#define BL_WATCH_START (void)0
#define BL_CHUNK_DONE (void)0
#define BL_WATCH_END (void)0
#endif
void boxloss_last_wait(double *out) { out[0] = bl_watch[0]; out[1] = bl_watch[1]; }
