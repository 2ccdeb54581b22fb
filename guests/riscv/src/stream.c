/*
 * stream: STREAM-like triad on doubles (memory bandwidth).
 *
 * Three arrays a, b, c of N doubles (N total, split into contiguous
 * per-hart slices; the last hart takes the remainder).  Each hart
 * initialises its own slice of b and c, then runs REPS repetitions of the
 * triad with a barrier after each one (bulk-synchronous, like STREAM's
 * timed kernels).  The source and destination alternate so every
 * repetition depends on the previous one:
 *     even rep: a[i] = b[i] + s*c[i]      odd rep: b[i] = a[i] + s*c[i]
 * checksum = wrapping 64-bit sum of the bit patterns of the array written
 * last (computed per slice, summed by hart 0); independent of the hart count.
 *
 * Parameters: n<elements> (default 262144, i.e. 2 MiB per array),
 * r<repetitions> (default 4).
 * Cost: ~8 insns per element per rep + ~14 per element for init/checksum;
 * defaults with 4 harts: ~13M instructions (scales linearly with n*r).
 */
#include "rt.h"

#ifndef PARAM_n
#define PARAM_n 262144
#endif
#ifndef PARAM_r
#define PARAM_r 4
#endif

#define N    ((uint64_t)PARAM_n)
#define REPS ((uint64_t)PARAM_r)

static double *A, *B, *C;

static void triad(double *restrict dst, const double *restrict src,
                  const double *restrict c, double s, uint64_t lo, uint64_t hi)
{
    for (uint64_t i = lo; i < hi; i++)
        dst[i] = src[i] + s * c[i];
}

int main(int hart, int nharts)
{
    if (hart == 0) {
        A = rt_alloc(N * sizeof(double), 4096);
        B = rt_alloc(N * sizeof(double), 4096);
        C = rt_alloc(N * sizeof(double), 4096);
    }
    barrier();

    uint64_t chunk = N / (uint64_t)nharts;
    uint64_t lo = chunk * (uint64_t)hart;
    uint64_t hi = hart == nharts - 1 ? N : lo + chunk;

    for (uint64_t i = lo; i < hi; i++) {
        B[i] = 1.0 + (double)(i & 1023) * 0.001;
        C[i] = 0.5 + (double)((i * 7) & 511) * 0.0001;
    }
    barrier();

    const double s = 3.0;
    roi_begin();
    for (uint64_t r = 0; r < REPS; r++) {
        if (r & 1)
            triad(B, A, C, s, lo, hi);
        else
            triad(A, B, C, s, lo, hi);
        barrier();
    }
    roi_end();

    const uint64_t *res = (const uint64_t *)((REPS & 1) ? A : B);
    uint64_t sum = 0;
    for (uint64_t i = lo; i < hi; i++)
        sum += res[i];
    sum = sum_over_harts(hart, sum);
    if (hart != 0)
        return 0;

    result_begin("stream", nharts, sum);
    result_dec("n", N);
    result_dec("reps", REPS);
    result_dec("bytes", REPS * N * 3 * sizeof(double));
    result_end();
    return 0;
}
