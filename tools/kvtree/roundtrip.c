/* roundtrip.c: KVTree's own reader and writer, for tools/kvtree/differential.py.
 * For each path on stdin (one a line): kvtree_read_file(path), then kvtree_write_file(path + ".c");
 * prints "RC 0" (read and written), "RC 2" (KVTree refused to read it) or "RC 3" (the write failed),
 * a line each (KVTree prints its own errors on stdout too).
 * Built against the KVTree sources (github.com/ECP-VeloC/KVTree, v1.5.0) by differential.py. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "kvtree.h"

int main(void)
{
    char line[8192], out[8200];
    while (fgets(line, sizeof(line), stdin)) {
        line[strcspn(line, "\n")] = '\0';
        kvtree* t = kvtree_new();
        int code = 0;
        if (kvtree_read_file(line, t) != KVTREE_SUCCESS) {
            code = 2;
        } else {
            snprintf(out, sizeof(out), "%s.c", line);
            if (kvtree_write_file(out, t) != KVTREE_SUCCESS) {
                code = 3;
            }
        }
        kvtree_delete(&t);
        printf("RC %d\n", code);
        fflush(stdout);
    }
    return 0;
}
