/* The floor: the least a finalizer must do, in C, with one thread.
 *
 * Walks the tree below ROOT through directory descriptors (openat O_NOFOLLOW, getdents) and for every
 * name holding "._AXL" makes exactly: openat(O_NOFOLLOW|O_NONBLOCK), fstat, fchmod (mode from the
 * name's ".m" field), futimens (mtime from the name's ".t" field), renameat (to the part before the
 * last "._AXL"), close. No verification beyond fstat, no reporting: any real finalizer does more.
 *
 *   gcc -O2 -o floor floor.c && ./floor ROOT    # prints "<files> <seconds>"
 *
 * "floor --state FILE" models the state-file design's post-stage, one process per rank: it reads the
 * rank's state file (one temporary's path a line) and settles those temporaries the same way.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static long done;

static char *last_marker(char *name) {
    char *at = NULL, *p = name;
    while ((p = strstr(p, "._AXL")) != NULL) at = p++;
    return at;
}

static void settle(int dfd, const char *name, char *marker) {
    char final[256];
    size_t n = (size_t)(marker - name);
    memcpy(final, name, n);
    final[n] = 0;
    char *m = strstr(marker, ".m"), *t = strstr(marker, ".t");
    if (!m || !t) return;
    mode_t mode = (mode_t)strtol(m + 2, NULL, 8);
    long long mtime = strtoll(t + 2, NULL, 10);
    int fd = openat(dfd, name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
    if (fd < 0) { perror(name); return; }
    struct stat st;
    if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && st.st_nlink == 1) {
        struct timespec ts[2] = {st.st_atim, {mtime / 1000000000LL, mtime % 1000000000LL}};
        if (ts[1].tv_nsec < 0) { ts[1].tv_nsec += 1000000000L; ts[1].tv_sec -= 1; }
        if (fchmod(fd, mode) || futimens(fd, ts) || renameat(dfd, name, dfd, final)) perror(name);
        else done++;
    }
    close(fd);
}

static void walk(int dfd) {
    int dup_fd = dup(dfd);
    DIR *d = fdopendir(dup_fd);
    if (!d) { perror("fdopendir"); close(dup_fd); return; }
    /* Collect first: renaming while reading a directory can show an entry twice. */
    size_t cap = 1024, len = 0;
    char **names = malloc(cap * sizeof *names);
    unsigned char *types = malloc(cap);
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        if (e->d_type != DT_DIR && !strstr(e->d_name, "._AXL")) continue;
        if (len == cap) { cap *= 2; names = realloc(names, cap * sizeof *names); types = realloc(types, cap); }
        names[len] = strdup(e->d_name);
        types[len++] = e->d_type;
    }
    closedir(d);
    for (size_t i = 0; i < len; i++) {
        if (types[i] == DT_DIR) {
            int sub = openat(dfd, names[i], O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
            if (sub >= 0) { walk(sub); close(sub); }
        } else {
            char *marker = last_marker(names[i]);
            if (marker) settle(dfd, names[i], marker);
        }
        free(names[i]);
    }
    free(names);
    free(types);
}

static int from_state(const char *file) {
    FILE *f = fopen(file, "r");
    if (!f) { perror(file); return 2; }
    char line[4096];
    while (fgets(line, sizeof line, f)) {
        line[strcspn(line, "\n")] = 0;
        char *slash = strrchr(line, '/');
        if (!slash) continue;
        *slash = 0;
        int dfd = open(line, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (dfd < 0) { perror(line); continue; }
        char *marker = last_marker(slash + 1);
        if (marker) settle(dfd, slash + 1, marker);
        close(dfd);
    }
    fclose(f);
    return 0;
}

int main(int argc, char **argv) {
    if (argc == 3 && !strcmp(argv[1], "--state")) return from_state(argv[2]);
    if (argc != 2) { fprintf(stderr, "usage: floor ROOT\n"); return 2; }
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    int fd = open(argv[1], O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) { perror(argv[1]); return 2; }
    walk(fd);
    close(fd);
    clock_gettime(CLOCK_MONOTONIC, &b);
    printf("%ld %.6f\n", done, (double)(b.tv_sec - a.tv_sec) + (double)(b.tv_nsec - a.tv_nsec) / 1e9);
    return 0;
}
