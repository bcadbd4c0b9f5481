/* Plain C reference for `ddp bench allreduce`: the same procedure (refill, barrier, one timed in-place
 * MPI_Allreduce of floats, exact check, slowest rank's time, median), so the two bandwidths compare the
 * Swift layer's overhead and nothing else. Built and run by Launch/bench-allreduce.sh.
 *   mpicc -O2 -o allreduce_ref allreduce_ref.c && mpirun -np 2 ./allreduce_ref SIZE_MB ITERATIONS WARMUP */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static int compare(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    int rank, size;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    double size_mb = argc > 1 ? atof(argv[1]) : 64;
    int iterations = argc > 2 ? atoi(argv[2]) : 20;
    int warmup = argc > 3 ? atoi(argv[3]) : 3;
    long count = (long)(size_mb * 1048576) / 4;
    float *buffer = malloc(count * sizeof(float));
    double *times = malloc(iterations * sizeof(double));
    float rank_factor = (float)(rank + 1), sum_factors = (float)(size * (size + 1) / 2);
    long wrong = 0;
    for (int it = 0; it < warmup + iterations; it++) {
        for (long i = 0; i < count; i++) buffer[i] = rank_factor * (float)(((i + it) & 7) + 1);
        MPI_Barrier(MPI_COMM_WORLD);
        double start = now();
        MPI_Allreduce(MPI_IN_PLACE, buffer, (int)count, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
        double elapsed = now() - start;
        if (it >= warmup) times[it - warmup] = elapsed;
        for (long i = 0; i < count; i++)
            if (buffer[i] != sum_factors * (float)(((i + it) & 7) + 1)) wrong++;
    }
    MPI_Allreduce(MPI_IN_PLACE, times, iterations, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
    MPI_Allreduce(MPI_IN_PLACE, &wrong, 1, MPI_LONG, MPI_SUM, MPI_COMM_WORLD);
    qsort(times, iterations, sizeof(double), compare);
    double median = iterations % 2 ? times[iterations / 2] : (times[iterations / 2 - 1] + times[iterations / 2]) / 2;
    double algbw = (double)count * 4 / median / 1e9;
    if (rank == 0)
        printf("{\"ranks\":%d,\"bytes\":%ld,\"median_seconds\":%.9f,\"algbw_gbps\":%.6f,\"busbw_gbps\":%.6f,\"verified\":%s}\n",
               size, count * 4, median, algbw, algbw * 2 * (size - 1) / size, wrong == 0 ? "true" : "false");
    free(buffer);
    free(times);
    MPI_Finalize();
    return wrong == 0 ? 0 : 1;
}
