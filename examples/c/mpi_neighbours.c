/*
 * mpi_neighbours: every rank puts an array into dimstore (on its own node's server), the
 * keys are exchanged with MPI_Allgather, and every rank fetches and verifies its two
 * neighbours' arrays, then its neighbours check that the objects are still there.
 *
 *   make && dimstore-launch run --local 2 -- mpirun -n 4 ./mpi_neighbours --local-nodes 2
 *
 * --local-nodes N: the fleet is N simulated nodes on this machine (dimstore-launch run
 * --local N), rank r acts as node r % N (DIMSTORE_NODE), so neighbours' gets cross servers.
 * On a real cluster, leave it out: each rank uses its own node's server.
 */
#include <dimstore.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define N (1 << 18) /* doubles per rank: 2 MiB */

static double value(int rank, int i) { return rank * 1e6 + i; }

static void check(int rc, int rank, const char *what) {
    if (rc != DIMSTORE_OK) {
        fprintf(stderr, "rank %d: %s: %s (%s)\n", rank, what, dimstore_status_name(rc),
                dimstore_last_error());
        MPI_Abort(MPI_COMM_WORLD, 1);
    }
}

int main(int argc, char **argv) {
    int rank, size, i, step, errors = 0, total = 0;
    dimstore_t *s = NULL;
    char key[DIMSTORE_KEY_MAX];
    char *keys;
    double *mine, *theirs;
    size_t len;

    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    if (argc == 3 && strcmp(argv[1], "--local-nodes") == 0) {
        char node[32];
        snprintf(node, sizeof node, "%d", rank % atoi(argv[2]));
        setenv("DIMSTORE_NODE", node, 1);
    }

    mine = malloc(N * sizeof *mine);
    theirs = malloc(N * sizeof *theirs);
    keys = calloc((size_t)size, DIMSTORE_KEY_MAX);
    if (mine == NULL || theirs == NULL || keys == NULL)
        MPI_Abort(MPI_COMM_WORLD, 1);
    for (i = 0; i < N; i++)
        mine[i] = value(rank, i);

    check(dimstore_open_env(&s), rank, "open");
    memset(key, 0, sizeof key);
    check(dimstore_put(s, mine, N * sizeof *mine, key, sizeof key), rank, "put");
    MPI_Allgather(key, DIMSTORE_KEY_MAX, MPI_CHAR, keys, DIMSTORE_KEY_MAX, MPI_CHAR, MPI_COMM_WORLD);

    for (step = -1; step <= 1; step += 2) {
        int peer = (rank + step + size) % size;
        const char *their_key = keys + (size_t)peer * DIMSTORE_KEY_MAX;
        check(dimstore_get_into(s, their_key, theirs, N * sizeof *theirs, &len), rank, "get_into");
        if (len != N * sizeof *theirs) {
            fprintf(stderr, "rank %d: rank %d's array has %zu bytes\n", rank, peer, len);
            errors++;
        }
        for (i = 0; i < N; i++)
            if (theirs[i] != value(peer, i)) {
                fprintf(stderr, "rank %d: rank %d's array differs at %d\n", rank, peer, i);
                errors++;
                break;
            }
    }
    /* Everyone has read; each rank evicts its own object. */
    MPI_Barrier(MPI_COMM_WORLD);
    check(dimstore_evict(s, key), rank, "evict");
    dimstore_close(s);

    MPI_Reduce(&errors, &total, 1, MPI_INT, MPI_SUM, 0, MPI_COMM_WORLD);
    if (rank == 0)
        printf("mpi_neighbours: %d ranks each verified 2 neighbours' %zu-byte arrays: %s\n",
               size, N * sizeof *mine, total == 0 ? "ok" : "FAILED");
    free(mine);
    free(theirs);
    free(keys);
    MPI_Finalize();
    return total == 0 ? 0 : 1;
}
