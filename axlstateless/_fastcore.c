/* axlstateless._fastcore: the native accelerator for finalize's common case (docs/performance.md).

   The rules live in the Python engine (axlstateless/engine.py). This file makes the engine's own calls,
   in the engine's order, for the one case that is nearly all of a run: a v1 file temporary owned by the
   user running finalize, whose transfer Python judged "commit if the size verifies", with the extras
   pre-stage writes. Anything else, and every error, is *deferred*: given back to the engine, which
   checks everything again from the start. A deferral after a failed step leaves what a killed finalize
   would leave (a mode or times already applied), which the engine's rerun path repairs. So a deferral
   costs time, never an outcome; only what the engine would also do is ever done here.

   The GIL is held only to read the names and write the outcomes: the system calls of a whole chunk of
   a directory run without it, so --jobs threads use every core on a local disk too.

   Every file operation goes through the directory descriptor (openat, renameat, unlinkat, fstatat
   without following) or the opened descriptor (fstat, fgetxattr, fchmod, futimens, fsync). */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <unistd.h>

/* ---- the name, format version 1 (docs/format.md); must agree with nameformat.parse on every input ---- */

#define NAME_MAX_BYTES 255
#define MARKER "._AXL"
#define MARKER_LEN 5

enum kind { K_NONE, K_UNRECOGNISED, K_FILE, K_DIR, K_LEGACY };

struct tempname {
    size_t final_len;
    unsigned mode;
    int64_t size;
    int64_t mtime_ns;
    int has_handle;
    uint64_t handle;
};

/* 20 decimal digits overflow 64 bits; the grammar allows 20, and a value is range-checked after. */
typedef unsigned __int128 u128;

#define LIMIT63 ((u128)1 << 63)
#define LIMIT64 ((u128)1 << 64)

static const char *last_marker(const char *s, size_t n)
{
    if (n < MARKER_LEN)
        return NULL;
    for (size_t i = n - MARKER_LEN + 1; i-- > 0;)
        if (s[i] == '.' && memcmp(s + i, MARKER, MARKER_LEN) == 0)
            return s + i;
    return NULL;
}

static int literal(const char **p, const char *end, const char *lit)
{
    size_t n = strlen(lit);
    if ((size_t)(end - *p) < n || memcmp(*p, lit, n) != 0)
        return 0;
    *p += n;
    return 1;
}

/* The run of at most `max` digits at *p. A number in the grammar is always followed by '.' or the
   end, never a digit, so the longest run is the only one the regex could match. */
static size_t digits(const char **p, const char *end, size_t max, u128 *value)
{
    const char *s = *p;
    size_t n = 0;
    u128 v = 0;
    while (s + n < end && s[n] >= '0' && s[n] <= '9') {
        if (n == max)
            return 0;
        v = v * 10 + (unsigned)(s[n] - '0');
        n++;
    }
    *p = s + n;
    *value = v;
    return n;
}

/* `0|[1-9][0-9]{0,19}`: canonical, no leading zero. */
static int uint_canonical(const char **p, const char *end, u128 *value)
{
    const char *start = *p;
    size_t n = digits(p, end, 20, value);
    return n > 0 && !(start[0] == '0' && n > 1);
}

/* `0|-?[1-9][0-9]{0,19}`, within [-2^63, 2^63): no "-0", no leading zero. */
static int int_canonical(const char **p, const char *end, int *in_range, int64_t *value)
{
    int negative = *p < end && **p == '-';
    u128 mag;
    if (negative) {
        (*p)++;
        if (*p >= end || **p == '0')
            return 0;
    }
    if (!uint_canonical(p, end, &mag))
        return 0;
    *in_range = negative ? mag <= LIMIT63 : mag < LIMIT63;
    *value = !*in_range ? 0 : negative ? (int64_t)(-(mag - 1)) - 1 : (int64_t)mag;
    return 1;
}

static int mode_digits(const char **p, const char *end, unsigned *mode)
{
    if (end - *p < 4)
        return 0;
    unsigned m = 0;
    for (int i = 0; i < 4; i++) {
        char c = (*p)[i];
        if (c < '0' || c > '7')
            return 0;
        m = m * 8 + (unsigned)(c - '0');
    }
    *p += 4;
    *mode = m;
    return 1;
}

static enum kind classify(const char *s, size_t n, struct tempname *tn);

/* Any name: not empty, ".", "..", no '/' or NUL. */
static int name_ok(const char *f, size_t n)
{
    if (n == 0 || (n == 1 && f[0] == '.') || (n == 2 && f[0] == '.' && f[1] == '.'))
        return 0;
    return !memchr(f, '/', n) && !memchr(f, '\0', n);
}

/* nameformat.final_problem: the final part of one of ours must not itself parse as anything. Recursion is
   bounded: each level is at least MARKER_LEN shorter, below NAME_MAX_BYTES. */
static int final_ok(const char *f, size_t n)
{
    if (!name_ok(f, n))
        return 0;
    enum kind inner = classify(f, n, NULL);
    return inner == K_NONE || inner == K_UNRECOGNISED;
}

static enum kind classify(const char *s, size_t n, struct tempname *tn)
{
    const char *at = last_marker(s, n);
    if (!at)
        return K_NONE;
    if (n > NAME_MAX_BYTES)
        return K_UNRECOGNISED;
    const char *p = at + MARKER_LEN, *end = s + n, *q = p;
    unsigned mode;
    int in_range;
    int64_t mtime;
    u128 v = 0;
    /* Legacy AXL: nothing or up to 20 digits (leading zeros allowed: AXL's own printf), a uint64. The
       final is whatever precedes the last marker, as AXL itself splits a name. */
    digits(&q, end, 20, &v);
    if (q == end)
        return name_ok(s, (size_t)(at - s)) && v < LIMIT64 ? K_LEGACY : K_UNRECOGNISED;
    if (!final_ok(s, (size_t)(at - s)))
        return K_UNRECOGNISED;
    if (literal(&p, end, ".v1.m")) {
        u128 size, handle = 0;
        int has_handle = 0;
        if (!mode_digits(&p, end, &mode) || !literal(&p, end, ".s") || !uint_canonical(&p, end, &size)
            || !literal(&p, end, ".t") || !int_canonical(&p, end, &in_range, &mtime))
            return K_UNRECOGNISED;
        if (p < end) {
            if (!literal(&p, end, ".h") || !uint_canonical(&p, end, &handle) || p != end)
                return K_UNRECOGNISED;
            has_handle = 1;
        }
        if (size >= LIMIT63 || !in_range || handle >= LIMIT64)
            return K_UNRECOGNISED;
        if (tn) {
            tn->final_len = (size_t)(at - s);
            tn->mode = mode;
            tn->size = (int64_t)size;
            tn->mtime_ns = mtime;
            tn->has_handle = has_handle;
            tn->handle = (uint64_t)handle;
        }
        return K_FILE;
    }
    if (literal(&p, end, ".v1.dir.m")) {
        if (!mode_digits(&p, end, &mode) || !literal(&p, end, ".t") || !int_canonical(&p, end, &in_range, &mtime)
            || p != end || !in_range)
            return K_UNRECOGNISED;
        return K_DIR;
    }
    return K_UNRECOGNISED;
}

/* ---- fault injection, for tests/test_crash.py: the n-th call of one kind fails with EIO ---- */

enum call { C_OPEN, C_FSTAT, C_GETXATTR, C_FCHMOD, C_UTIME, C_FSYNC, C_RENAME, C_STAT, C_UNLINK, C_COUNT };
static const char *const call_names[C_COUNT] = {"open", "fstat", "getxattr", "fchmod", "utime",
                                                "fsync", "rename", "stat", "unlink"};
static long calls[C_COUNT];
static int fail_kind = -1;
static long fail_at = -1;
static int fail_errno = EIO;
static long settled_total;

static int faulted(enum call kind)
{
    long n = __atomic_fetch_add(&calls[kind], 1, __ATOMIC_RELAXED);
    if ((int)kind == __atomic_load_n(&fail_kind, __ATOMIC_RELAXED) && n == __atomic_load_n(&fail_at, __ATOMIC_RELAXED)) {
        errno = __atomic_load_n(&fail_errno, __ATOMIC_RELAXED);
        return 1;
    }
    return 0;
}

#define CALL(kind, expr) (faulted(kind) ? -1 : (expr))

/* ---- one temporary: the engine's checks and calls (engine.settle_file, _open_and_check, _commit) ---- */

/* Besides committed and aborted, the two races of the rename and an error after it end here with the
   engine's own outcome (the temporary's name no longer names what was verified, so the engine could not
   start it again): the Python side reports them as engine._commit does. */
enum outcome {
    O_DEFERRED = 0,
    O_COMMITTED = 'c',
    O_ABORTED = 'a',
    O_REPLACED = 'r', /* the name names another inode before the rename: left, not committed */
    O_MOVED = 'm',    /* another inode under the final name after it: put back by engine._put_back */
    O_FAILED = 'e',   /* the final name could not be checked after the rename: left, with the errno */
};

struct item {
    const char *name; /* NUL-terminated: the bytes object's own buffer, kept alive by the tuple */
    struct tempname tn;
    char outcome;
    int64_t number; /* aborted: the size the file had; failed: the errno */
};

struct meta {
    int present;
    int64_t atime_ns;
    u128 uid, gid;
};

/* `user.axl.meta` in exactly the form metadata.decode_meta reads in one match:
   atime=(-?[0-9]{1,20});uid=([0-9]{1,20});gid=([0-9]{1,20}). Anything else: -1 (the engine's fallback
   parser decides what it means). */
static int meta_parse(const char *s, size_t n, struct meta *m)
{
    const char *p = s, *end = s + n;
    u128 atime;
    int negative;
    if (!literal(&p, end, "atime="))
        return -1;
    negative = p < end && *p == '-';
    if (negative)
        p++;
    if (digits(&p, end, 20, &atime) == 0 || !literal(&p, end, ";uid=") || digits(&p, end, 20, &m->uid) == 0
        || !literal(&p, end, ";gid=") || digits(&p, end, 20, &m->gid) == 0 || p != end)
        return -1;
    /* An atime os.utime could not take: the engine's business. */
    if (negative ? atime > LIMIT63 : atime >= LIMIT63)
        return -1;
    m->atime_ns = atime == 0 ? 0 : negative ? (int64_t)(-(atime - 1)) - 1 : (int64_t)atime;
    m->present = 1;
    return 0;
}

static int meta_read(int fd, struct meta *m)
{
    char buf[128];
    m->present = 0;
    ssize_t n = CALL(C_GETXATTR, fgetxattr(fd, "user.axl.meta", buf, sizeof buf));
    if (n < 0)
        /* No attribute, or no user xattrs here: what the engine reads as "no extras". Any other error,
           or a value too long for the canonical form (ERANGE), is the engine's to judge. */
        return errno == ENODATA || errno == ENOTSUP ? 0 : -1;
    return meta_parse(buf, (size_t)n, m);
}

/* os.utime(ns=...) splits with floor division: the nanoseconds are never negative. */
static struct timespec split_ns(int64_t ns)
{
    struct timespec ts = {.tv_sec = ns / 1000000000, .tv_nsec = ns % 1000000000};
    if (ts.tv_nsec < 0) {
        ts.tv_nsec += 1000000000;
        ts.tv_sec -= 1;
    }
    return ts;
}

static char settle_open(int dfd, int fd, struct item *it, uid_t euid, int do_fsync)
{
    struct stat st, now;
    struct meta m;
    /* _open_and_check: a regular file with one link (CVE-2017-18078: a hard link to /etc/passwd), owned
       by this user. Root acting for another user needs the foreign-owner and group rules: deferred. */
    if (CALL(C_FSTAT, fstat(fd, &st)) != 0 || !S_ISREG(st.st_mode) || st.st_nlink != 1 || st.st_uid != euid)
        return O_DEFERRED;
    if (meta_read(fd, &m) != 0)
        return O_DEFERRED;
    /* As root: a temporary pre-staged for another uid is refused, another gid means a chown (which must
       come before the chmod) or a refusal that needs the group database. */
    if (euid == 0 && m.present && (m.uid != st.st_uid || m.gid != st.st_gid))
        return O_DEFERRED;
    if (st.st_size != it->tn.size) {
        /* engine._unlink_same: only the file that was judged may go, not whatever the name is now. */
        if (CALL(C_STAT, fstatat(dfd, it->name, &now, AT_SYMLINK_NOFOLLOW)) != 0 || now.st_dev != st.st_dev
            || now.st_ino != st.st_ino)
            return O_DEFERRED;
        if (CALL(C_UNLINK, unlinkat(dfd, it->name, 0)) != 0)
            return O_DEFERRED;
        it->number = st.st_size;
        return O_ABORTED;
    }
    /* Set-uid/set-gid: ownership.safe_mode decides what root may grant, from the group database. */
    if (it->tn.mode & (S_ISUID | S_ISGID))
        return O_DEFERRED;
    struct timespec times[2] = {m.present ? split_ns(m.atime_ns) : st.st_atim, split_ns(it->tn.mtime_ns)};
    char final[NAME_MAX_BYTES + 1];
    memcpy(final, it->name, it->tn.final_len);
    final[it->tn.final_len] = '\0';
    if (CALL(C_FCHMOD, fchmod(fd, (mode_t)it->tn.mode)) != 0 || CALL(C_UTIME, futimens(fd, times)) != 0)
        return O_DEFERRED;
    /* With --fsync, the data and metadata are durable before the final name appears (renameio). */
    if (do_fsync && CALL(C_FSYNC, fsync(fd)) != 0)
        return O_DEFERRED;
    /* Linux renames by name: the name must still be the inode verified through fd (a pre-stage rerun
       unlinks and recreates it), right before the rename and, for the two calls between, the final name
       right after it (engine._commit, docs/security.md). */
    if (CALL(C_STAT, fstatat(dfd, it->name, &now, AT_SYMLINK_NOFOLLOW)) != 0)
        return O_DEFERRED;
    if (now.st_dev != st.st_dev || now.st_ino != st.st_ino)
        return O_REPLACED;
    if (CALL(C_RENAME, renameat(dfd, it->name, dfd, final)) != 0)
        return O_DEFERRED;
    if (CALL(C_STAT, fstatat(dfd, final, &now, AT_SYMLINK_NOFOLLOW)) != 0) {
        it->number = errno;
        return O_FAILED;
    }
    if (now.st_dev != st.st_dev || now.st_ino != st.st_ino)
        return O_MOVED;
    return O_COMMITTED;
}

static char settle_one(int dfd, struct item *it, uid_t euid, int do_fsync)
{
    /* O_NONBLOCK: a FIFO swapped in since the listing must not block the open; O_NOFOLLOW: a symlink
       swapped in is refused (ELOOP), never followed. */
    int fd = CALL(C_OPEN, openat(dfd, it->name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY | O_CLOEXEC));
    if (fd < 0)
        return O_DEFERRED;
    char outcome = settle_open(dfd, fd, it, euid, do_fsync);
    close(fd);
    return outcome;
}

/* ---- the Python interface ---- */

/* Whether Python judged the transfer of `handle` "commit if the size verifies": `cache` (shared by every
   chunk of the run) or, the first time, `judge(handle)`. -1 with an exception set on error. */
static int transfer_fast(PyObject *cache, PyObject *judge, const struct tempname *tn)
{
    PyObject *key = tn->has_handle ? PyLong_FromUnsignedLongLong(tn->handle) : Py_NewRef(Py_None);
    if (!key)
        return -1;
    PyObject *known = PyDict_GetItemWithError(cache, key); /* borrowed */
    int fast = -1;
    if (known) {
        fast = PyObject_IsTrue(known);
    } else if (!PyErr_Occurred()) {
        PyObject *answer = PyObject_CallOneArg(judge, key);
        if (answer) {
            fast = PyObject_IsTrue(answer);
            if (fast >= 0 && PyDict_SetItem(cache, key, answer) != 0)
                fast = -1;
            Py_DECREF(answer);
        }
    }
    Py_DECREF(key);
    return fast;
}

PyDoc_STRVAR(settle_doc,
"settle(dfd, names, cache, judge, euid, fsync) -> (outcomes, numbers)\n\n"
"Commit or abort the names (bytes) of regular files in directory dfd that are v1 file temporaries whose\n"
"transfer judge(handle) (cached in the dict cache) says is 'commit if the size verifies'. outcomes has\n"
"one byte per name: b'c' committed, b'a' aborted, 0 deferred to the Python engine (untouched, or\n"
"stopped at an error), b'r' its name replaced before the rename, b'm' another file under the final\n"
"name after it, b'e' the final name not checkable after it. numbers maps the index of each aborted name\n"
"to the size it had, of each b'e' one to the errno.");

static PyObject *settle(PyObject *self, PyObject *args)
{
    (void)self;
    int dfd, do_fsync;
    unsigned long euid;
    PyObject *names_arg, *cache, *judge;
    if (!PyArg_ParseTuple(args, "iOO!Okp", &dfd, &names_arg, &PyDict_Type, &cache, &judge, &euid, &do_fsync))
        return NULL;
    /* A tuple: its items cannot change, or be freed, while the GIL is released. */
    PyObject *names = PySequence_Tuple(names_arg);
    if (!names)
        return NULL;
    Py_ssize_t n = PyTuple_GET_SIZE(names);
    PyObject *outcomes = PyBytes_FromStringAndSize(NULL, n), *numbers = NULL;
    struct item *items = PyMem_Calloc((size_t)n + 1, sizeof *items);
    Py_ssize_t *index = PyMem_Calloc((size_t)n + 1, sizeof *index);
    Py_ssize_t work = 0;
    if (!outcomes || !items || !index) {
        PyErr_NoMemory();
        goto fail;
    }
    char *out = PyBytes_AS_STRING(outcomes);
    memset(out, O_DEFERRED, (size_t)n);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *name = PyTuple_GET_ITEM(names, i);
        if (!PyBytes_Check(name)) {
            PyErr_SetString(PyExc_TypeError, "names must be bytes");
            goto fail;
        }
        struct item *it = &items[work];
        if (classify(PyBytes_AS_STRING(name), (size_t)PyBytes_GET_SIZE(name), &it->tn) != K_FILE)
            continue;
        int fast = transfer_fast(cache, judge, &it->tn);
        if (fast < 0)
            goto fail;
        if (!fast)
            continue;
        it->name = PyBytes_AS_STRING(name);
        index[work++] = i;
    }
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t w = 0; w < work; w++)
        items[w].outcome = settle_one(dfd, &items[w], (uid_t)euid, do_fsync);
    Py_END_ALLOW_THREADS
    if (!(numbers = PyDict_New()))
        goto fail;
    long done = 0;
    for (Py_ssize_t w = 0; w < work; w++) {
        out[index[w]] = items[w].outcome;
        done += items[w].outcome == O_COMMITTED || items[w].outcome == O_ABORTED;
        if (items[w].outcome == O_ABORTED || items[w].outcome == O_FAILED) {
            PyObject *k = PyLong_FromSsize_t(index[w]), *v = PyLong_FromLongLong(items[w].number);
            int bad = !k || !v || PyDict_SetItem(numbers, k, v) != 0;
            Py_XDECREF(k);
            Py_XDECREF(v);
            if (bad)
                goto fail;
        }
    }
    __atomic_fetch_add(&settled_total, done, __ATOMIC_RELAXED);
    PyMem_Free(items);
    PyMem_Free(index);
    Py_DECREF(names);
    return Py_BuildValue("(NN)", outcomes, numbers);
fail:
    /* Only a Python-level error (memory, a failing judge) gets here; with the GIL released nothing can
       fail, so either every outcome above is returned or no system call was made. */
    PyMem_Free(items);
    PyMem_Free(index);
    Py_XDECREF(outcomes);
    Py_XDECREF(numbers);
    Py_DECREF(names);
    return NULL;
}

PyDoc_STRVAR(classify_doc,
"classify(name) -> int\n\n"
"0 no marker, 1 unrecognised, 2 file temporary, 3 directory marker, 4 legacy: what nameformat.parse\n"
"makes of the same bytes (tests fuzz the two against each other).");

static PyObject *py_classify(PyObject *self, PyObject *arg)
{
    (void)self;
    if (!PyBytes_Check(arg)) {
        PyErr_SetString(PyExc_TypeError, "name must be bytes");
        return NULL;
    }
    return PyLong_FromLong(classify(PyBytes_AS_STRING(arg), (size_t)PyBytes_GET_SIZE(arg), NULL));
}

PyDoc_STRVAR(parse_file_doc,
"parse_file(name) -> (final, mode, size, mtime_ns, handle) or None\n\n"
"The fields of a v1 file temporary, as nameformat.parse gives them in a TempName; None for any other name.");

static PyObject *parse_file(PyObject *self, PyObject *arg)
{
    (void)self;
    struct tempname tn;
    if (!PyBytes_Check(arg)) {
        PyErr_SetString(PyExc_TypeError, "name must be bytes");
        return NULL;
    }
    if (classify(PyBytes_AS_STRING(arg), (size_t)PyBytes_GET_SIZE(arg), &tn) != K_FILE)
        Py_RETURN_NONE;
    PyObject *handle = tn.has_handle ? PyLong_FromUnsignedLongLong(tn.handle) : Py_NewRef(Py_None);
    if (!handle)
        return NULL;
    return Py_BuildValue("(y#ILLN)", PyBytes_AS_STRING(arg), (Py_ssize_t)tn.final_len, tn.mode,
                         (long long)tn.size, (long long)tn.mtime_ns, handle);
}

PyDoc_STRVAR(counters_doc,
"counters() -> dict\n\n"
"For tests: system calls made per kind, and 'settled' (temporaries committed or aborted here).");

static PyObject *counters(PyObject *self, PyObject *unused)
{
    (void)self;
    (void)unused;
    PyObject *d = PyDict_New();
    for (int k = 0; d && k < C_COUNT; k++) {
        PyObject *v = PyLong_FromLong(__atomic_load_n(&calls[k], __ATOMIC_RELAXED));
        if (!v || PyDict_SetItemString(d, call_names[k], v) != 0)
            Py_CLEAR(d);
        Py_XDECREF(v);
    }
    if (d) {
        PyObject *v = PyLong_FromLong(__atomic_load_n(&settled_total, __ATOMIC_RELAXED));
        if (!v || PyDict_SetItemString(d, "settled", v) != 0)
            Py_CLEAR(d);
        Py_XDECREF(v);
    }
    return d;
}

PyDoc_STRVAR(inject_doc,
"inject(kind, at, errno=EIO)\n\n"
"For tests: the at-th call (from 0) of kind (a key of counters()) fails with errno; kind None clears it.\n"
"Resets the call counts.");

static PyObject *inject(PyObject *self, PyObject *args)
{
    (void)self;
    const char *kind;
    long at;
    int err = EIO;
    if (!PyArg_ParseTuple(args, "zl|i", &kind, &at, &err))
        return NULL;
    int found = -1;
    for (int k = 0; kind && k < C_COUNT; k++)
        if (strcmp(kind, call_names[k]) == 0)
            found = k;
    if (kind && found < 0) {
        PyErr_Format(PyExc_ValueError, "unknown call kind %s", kind);
        return NULL;
    }
    for (int k = 0; k < C_COUNT; k++)
        __atomic_store_n(&calls[k], 0, __ATOMIC_RELAXED);
    __atomic_store_n(&fail_at, at, __ATOMIC_RELAXED);
    __atomic_store_n(&fail_errno, err, __ATOMIC_RELAXED);
    __atomic_store_n(&fail_kind, found, __ATOMIC_RELAXED);
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"settle", settle, METH_VARARGS, settle_doc},
    {"classify", py_classify, METH_O, classify_doc},
    {"parse_file", parse_file, METH_O, parse_file_doc},
    {"counters", counters, METH_NOARGS, counters_doc},
    {"inject", inject, METH_VARARGS, inject_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "axlstateless._fastcore",
    "Native accelerator for finalize's common case; the rules live in axlstateless.engine.", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__fastcore(void)
{
    return PyModule_Create(&module);
}
