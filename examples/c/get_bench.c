/*
 * get_bench: latency and bandwidth of dimstore_get_into, per object size, as CSV
 * (bindings/c/src/bin/get_bench.rs measures the Rust client the same way; scripts/bench-c.sh
 * runs both in one fleet and prints the ratio).
 *
 *   get_bench [ITERATIONS] [SECONDS]      (defaults 200 and 3: per size, whichever ends first)
 *
 * Output: api,size,iterations,median_us,mean_us,mib_per_s  (bandwidth from the median)
 */
#include <dimstore.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now_us(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e6 + t.tv_nsec / 1e3;
}

static int by_value(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static void check(int rc, const char *what) {
    if (rc != DIMSTORE_OK) {
        fprintf(stderr, "get_bench: %s: %s (%s)\n", what, dimstore_status_name(rc),
                dimstore_last_error());
        exit(1);
    }
}

int main(int argc, char **argv) {
    static const size_t sizes[] = {64, 4096, 65536, 1 << 20, 16 << 20};
    int iterations = argc > 1 ? atoi(argv[1]) : 200;
    double seconds = argc > 2 ? atof(argv[2]) : 3.0;
    dimstore_t *s = NULL;
    size_t k;

    if (iterations < 1 || iterations > 1000000 || seconds <= 0) {
        fprintf(stderr, "usage: get_bench [ITERATIONS 1..1000000] [SECONDS > 0]\n");
        return 2;
    }
    check(dimstore_open_env(&s), "open");
    printf("api,size,iterations,median_us,mean_us,mib_per_s\n");
    for (k = 0; k < sizeof sizes / sizeof *sizes; k++) {
        size_t size = sizes[k], len = 0;
        char key[DIMSTORE_KEY_MAX];
        /* Page-aligned buffers (as the Rust side's): a copy's speed depends on alignment. */
        void *src = NULL, *dst = NULL;
        double *times = malloc((size_t)iterations * sizeof *times);
        double start, total = 0;
        int i, n = 0;
        if (posix_memalign(&src, 4096, size) != 0 || posix_memalign(&dst, 4096, size) != 0 ||
            times == NULL)
            return 1;
        memset(src, (int)k + 1, size);
        check(dimstore_put(s, src, size, key, sizeof key), "put");
        check(dimstore_get_into(s, key, dst, size, &len), "warm-up get"); /* connect, map */
        start = now_us();
        for (i = 0; i < iterations && now_us() - start < seconds * 1e6; i++) {
            double t0 = now_us();
            check(dimstore_get_into(s, key, dst, size, &len), "get_into");
            times[n] = now_us() - t0;
            total += times[n++];
        }
        if (len != size || memcmp(src, dst, size) != 0) {
            fprintf(stderr, "get_bench: wrong bytes for size %zu\n", size);
            return 1;
        }
        qsort(times, (size_t)n, sizeof *times, by_value);
        printf("c_get_into,%zu,%d,%.2f,%.2f,%.1f\n", size, n, times[n / 2], total / n,
               size / (times[n / 2] / 1e6) / (1 << 20));
        check(dimstore_evict(s, key), "evict");
        free(src);
        free(dst);
        free(times);
    }
    dimstore_close(s);
    return 0;
}
