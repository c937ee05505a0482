/* ntfault.c -- fault injection from outside the collector, for the integration tests only.
 *
 * An LD_PRELOAD library (never linked into needletrace) that wraps pwrite(2) and, when
 * NTFAULT_KILL_AT_JOURNAL_WRITE=N is set, SIGKILLs the process just before its N-th write to
 * a journal segment (a file whose name ends in ".ntj"): the messages of that burst were
 * received from the broker but are neither durable nor acknowledged, so a correct collector
 * gets them again from the broker after a restart.
 *
 * NTFAULT_ENOSPC_FILE=PATH: while PATH exists, the journal's disk is full: a write to a segment (or
 * to one being created) of more than 4 KiB writes half and returns that (a short write, as on a
 * disk that fills up mid-write), a smaller one fails with ENOSPC, and so do fdatasync and
 * posix_fallocate of a segment -- a full disk that can be emptied again by deleting PATH.
 * NTFAULT_EIO_SYNC_FILE=PATH: while PATH exists, fdatasync of a journal segment fails with EIO (the
 * write itself succeeded: its pages are in doubt).
 *
 * NTFAULT_TEAR_AT_JOURNAL_WRITE=N: the N-th write to a journal segment writes only its first half,
 * then the process SIGKILLs itself -- a torn tail as a power cut mid-write leaves it (nothing of
 * that write was synced, so nothing of it was acknowledged). Used by tests/faults/.
 *
 * It also wraps getaddrinfo(3): with NTFAULT_GETADDRINFO_HOST=name and
 * NTFAULT_GETADDRINFO_DELAY_MS=N, a lookup of that name sleeps N ms first (a resolver that does
 * not answer), on whichever thread makes it. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

typedef ssize_t (*ntfault_pwrite_fn)(int, const void *, size_t, off_t);

static unsigned long ntfault_journal_writes;

/* 1 when fd is open on a journal segment (with tmp: or on one being created). */
static int ntfault_is_journal_file(int fd, int tmp)
{
    char link[64], path[4096];
    snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, path, sizeof(path) - 1);
    if (n < 4) {
        return 0;
    }
    path[n] = '\0';
    return strcmp(path + n - 4, ".ntj") == 0 ||
           (tmp && n >= 8 && strcmp(path + n - 8, ".ntj.tmp") == 0);
}

static int ntfault_is_journal(int fd)
{
    return ntfault_is_journal_file(fd, 0);
}

/* 1 when the control file named by the environment variable var exists. */
static int ntfault_armed(const char *var)
{
    const char *path = getenv(var);
    return path != NULL && access(path, F_OK) == 0;
}

/* Counts a write to a journal segment; SIGKILLs the process before the N-th one
 * (NTFAULT_KILL_AT_JOURNAL_WRITE). Returns 1 when this write must be torn
 * (NTFAULT_TEAR_AT_JOURNAL_WRITE). */
static int ntfault_before_write(int fd)
{
    const char *at = getenv("NTFAULT_KILL_AT_JOURNAL_WRITE");
    const char *tear = getenv("NTFAULT_TEAR_AT_JOURNAL_WRITE");
    if ((at == NULL && tear == NULL) || !ntfault_is_journal(fd)) {
        return 0;
    }
    ++ntfault_journal_writes;
    if (at != NULL && ntfault_journal_writes == strtoul(at, NULL, 10)) {
        static const char msg[] = "ntfault: killing the process before a journal write\n";
        ssize_t ignored = write(2, msg, sizeof(msg) - 1);
        (void)ignored;
        raise(SIGKILL);
    }
    return tear != NULL && ntfault_journal_writes == strtoul(tear, NULL, 10);
}

/* Writes the first half of a torn write, then SIGKILLs the process. */
static void ntfault_tear(ntfault_pwrite_fn real, int fd, const void *buf, size_t count, off_t off)
{
    static const char msg[] = "ntfault: tore a journal write in half; killing the process\n";
    ssize_t ignored = real(fd, buf, count / 2, off);
    ignored = write(2, msg, sizeof(msg) - 1);
    (void)ignored;
    raise(SIGKILL);
}

/* 1 (errno ENOSPC) when a write to fd must fail as on a full disk. */
static int ntfault_disk_full(int fd)
{
    if (ntfault_armed("NTFAULT_ENOSPC_FILE") && ntfault_is_journal_file(fd, 1)) {
        errno = ENOSPC;
        return 1;
    }
    return 0;
}

int fdatasync(int fd)
{
    static int (*real)(int);
    if (real == NULL) {
        real = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    }
    if (ntfault_disk_full(fd)) {
        return -1;
    }
    if (ntfault_armed("NTFAULT_EIO_SYNC_FILE") && ntfault_is_journal(fd)) {
        errno = EIO;
        return -1;
    }
    return real(fd);
}

int posix_fallocate(int fd, off_t offset, off_t len)
{
    static int (*real)(int, off_t, off_t);
    if (real == NULL) {
        real = (int (*)(int, off_t, off_t))dlsym(RTLD_NEXT, "posix_fallocate");
    }
    if (ntfault_disk_full(fd)) {
        return ENOSPC;
    }
    return real(fd, offset, len);
}

int posix_fallocate64(int fd, off64_t offset, off64_t len)
{
    static int (*real)(int, off64_t, off64_t);
    if (real == NULL) {
        real = (int (*)(int, off64_t, off64_t))dlsym(RTLD_NEXT, "posix_fallocate64");
    }
    if (ntfault_disk_full(fd)) {
        return ENOSPC;
    }
    return real(fd, offset, len);
}

ssize_t pwrite(int fd, const void *buf, size_t count, off_t offset)
{
    static ntfault_pwrite_fn real;
    if (real == NULL) {
        real = (ntfault_pwrite_fn)dlsym(RTLD_NEXT, "pwrite");
    }
    if (ntfault_before_write(fd)) {
        ntfault_tear(real, fd, buf, count, offset);
    }
    if (ntfault_disk_full(fd)) {
        return count > 4096 ? real(fd, buf, count / 2, offset) : -1;
    }
    return real(fd, buf, count, offset);
}

ssize_t pwrite64(int fd, const void *buf, size_t count, off_t offset)
{
    static ntfault_pwrite_fn real;
    if (real == NULL) {
        real = (ntfault_pwrite_fn)dlsym(RTLD_NEXT, "pwrite64");
    }
    if (ntfault_before_write(fd)) {
        ntfault_tear(real, fd, buf, count, offset);
    }
    if (ntfault_disk_full(fd)) {
        return count > 4096 ? real(fd, buf, count / 2, offset) : -1;
    }
    return real(fd, buf, count, offset);
}

typedef int (*ntfault_getaddrinfo_fn)(const char *, const char *, const struct addrinfo *,
                                      struct addrinfo **);

int getaddrinfo(const char *node, const char *service, const struct addrinfo *hints,
                struct addrinfo **res)
{
    static ntfault_getaddrinfo_fn real;
    if (real == NULL) {
        real = (ntfault_getaddrinfo_fn)dlsym(RTLD_NEXT, "getaddrinfo");
    }
    const char *host = getenv("NTFAULT_GETADDRINFO_HOST");
    const char *delay = getenv("NTFAULT_GETADDRINFO_DELAY_MS");
    if (host != NULL && delay != NULL && node != NULL && strcmp(node, host) == 0) {
        unsigned long ms = strtoul(delay, NULL, 10);
        struct timespec ts = {(time_t)(ms / 1000), (long)(ms % 1000) * 1000000L};
        while (nanosleep(&ts, &ts) != 0) {
        }
    }
    return real(node, service, hints, res);
}
