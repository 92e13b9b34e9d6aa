/*
 * put_get: store an array on this node's dimstore server, read it back (into a buffer, as a
 * zero-copy view), write one in place (create/seal), and show what bad input returns.
 *
 *   make && dimstore-launch run --local 1 -- ./put_get
 */
#include <dimstore.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define N 100000

static int check(int rc, const char *what) {
    if (rc != DIMSTORE_OK) {
        fprintf(stderr, "put_get: %s: %s (%s)\n", what, dimstore_status_name(rc),
                dimstore_last_error());
        exit(1);
    }
    return rc;
}

static void expect(int rc, int status, const char *what) {
    if (rc != status) {
        fprintf(stderr, "put_get: %s returned %s, expected %s: %s\n", what,
                dimstore_status_name(rc), dimstore_status_name(status), dimstore_last_error());
        exit(1);
    }
    printf("  %-34s -> %s: %s\n", what, dimstore_status_name(rc), dimstore_last_error());
}

int main(void) {
    dimstore_t *s = NULL;
    char key[DIMSTORE_KEY_MAX];
    double *data = malloc(N * sizeof *data);
    double *back = malloc(N * sizeof *back);
    size_t len = 0, size = 0;
    int exists = 0;
    dimstore_view_t view;
    char small_key[8];
    int i;

    if (data == NULL || back == NULL)
        return 1;
    for (i = 0; i < N; i++)
        data[i] = i * 0.5;

    check(dimstore_open_env(&s), "open");
    check(dimstore_put(s, data, N * sizeof *data, key, sizeof key), "put");
    printf("put %zu bytes: %s\n", N * sizeof *data, key);

    check(dimstore_size(key, &size), "size");
    check(dimstore_get_into(s, key, back, N * sizeof *back, &len), "get_into");
    if (size != len || len != N * sizeof *data || memcmp(data, back, len) != 0) {
        fprintf(stderr, "put_get: the bytes read back differ\n");
        return 1;
    }
    printf("get_into: %zu bytes, identical\n", len);

    check(dimstore_get_view(s, key, &view), "get_view");
    if (view.len != len || memcmp(view.data, data, len) != 0) {
        fprintf(stderr, "put_get: the view differs\n");
        return 1;
    }
    printf("get_view: %zu bytes, %s\n", view.len, view.mapped ? "mapped (no copy)" : "copied");
    dimstore_view_release(&view);
    dimstore_view_release(&view); /* a second release is ignored */

    {   /* In place: write straight into the reservation (the server's memory on its node). */
        dimstore_reservation_t r;
        char sealed[DIMSTORE_KEY_MAX];
        int mapped;
        check(dimstore_create(s, N * sizeof *data, &r), "create");
        mapped = r.mapped;
        memcpy(r.data, data, N * sizeof *data);
        check(dimstore_seal(&r, N * sizeof *data, sealed, sizeof sealed), "seal");
        check(dimstore_get_into(s, sealed, back, N * sizeof *back, &len), "get_into (sealed)");
        if (len != N * sizeof *data || memcmp(data, back, len) != 0) {
            fprintf(stderr, "put_get: the sealed object differs\n");
            return 1;
        }
        printf("create/seal: %zu bytes written %s, identical\n", len,
               mapped ? "in the server's memory" : "in a buffer, then put");
        check(dimstore_evict(s, sealed), "evict (sealed)");
    }

    check(dimstore_exists(s, key, &exists), "exists");
    printf("exists: %d\n", exists);

    printf("bad input:\n");
    expect(dimstore_get_into(s, key, back, 16, &len), DIMSTORE_E_TOO_SMALL, "get_into, 16-byte buffer");
    if (len != N * sizeof *data) {
        fprintf(stderr, "put_get: TOO_SMALL gave %zu as the size needed\n", len);
        return 1;
    }
    expect(dimstore_put(s, data, 8, small_key, sizeof small_key), DIMSTORE_E_TOO_SMALL, "put, 8-byte key buffer");
    expect(dimstore_get_into(s, "dim://nonsense", back, 16, &len), DIMSTORE_E_BAD_ARGUMENT, "get_into, malformed key");
    expect(dimstore_get_into(s, NULL, back, 16, &len), DIMSTORE_E_BAD_ARGUMENT, "get_into, NULL key");
    expect(dimstore_get_into(NULL, key, back, 16, &len), DIMSTORE_E_BAD_ARGUMENT, "get_into, NULL handle");

    check(dimstore_evict(s, key), "evict");
    expect(dimstore_get_into(s, key, back, N * sizeof *back, &len), DIMSTORE_E_NOT_FOUND, "get_into after evict");
    dimstore_close(s);
    expect(dimstore_exists(s, key, &exists), DIMSTORE_E_CLOSED, "exists on a closed handle");

    free(data);
    free(back);
    printf("put_get: ok\n");
    return 0;
}
