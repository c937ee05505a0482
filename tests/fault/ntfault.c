/* ntfault.c -- fault injection from outside the collector, for the integration tests only.
 *
 * An LD_PRELOAD library (never linked into needletrace) that wraps the calls the journal makes
 * on its segment files (files whose name ends in ".ntj"). Each fault is off unless its
 * environment variable is set:
 *
 *   NTFAULT_KILL_AT_JOURNAL_WRITE=N   SIGKILLs the process just before its N-th write to a
 *       segment: the messages of that burst were received from the broker but are neither
 *       durable nor acknowledged, so a correct collector gets them again after a restart.
 *   NTFAULT_TEAR_AT_JOURNAL_WRITE=N   writes only the first half of the N-th write to a segment,
 *       then SIGKILLs the process: a torn tail, as a power cut mid-write leaves it (nothing of
 *       that write was synced, so nothing of it was acknowledged).
 *   NTFAULT_JOURNAL_ENOSPC_FILE=PATH  while PATH exists, every write to a segment and every
 *       fdatasync/fsync of one fails with ENOSPC (a full disk that the test empties again by
 *       removing PATH). */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <dlfcn.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <unistd.h>

typedef ssize_t (*ntfault_pwrite_fn)(int, const void *, size_t, off_t);
typedef int (*ntfault_sync_fn)(int);

static unsigned long ntfault_journal_writes;

/* 1 when fd is open on a journal segment. */
static int ntfault_is_journal(int fd)
{
    char link[64], path[4096];
    snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, path, sizeof(path) - 1);
    if (n < 4) {
        return 0;
    }
    path[n] = '\0';
    return strcmp(path + n - 4, ".ntj") == 0;
}

/* 1 while the disk-full control file exists. */
static int ntfault_disk_full(void)
{
    const char *path = getenv("NTFAULT_JOURNAL_ENOSPC_FILE");
    return path != NULL && access(path, F_OK) == 0;
}

/* Writes a fixed message to stderr (async-signal-safe, no allocation). */
static void ntfault_say(const char *msg)
{
    ssize_t ignored = write(2, msg, strlen(msg));
    (void)ignored;
}

/* Decides what happens to a write of count bytes to fd: 0 = write it all, -1 = fail with
 * ENOSPC, 1 = tear it (write half, then die). Dies here for NTFAULT_KILL_AT_JOURNAL_WRITE. */
static int ntfault_before_write(int fd)
{
    const char *kill_at = getenv("NTFAULT_KILL_AT_JOURNAL_WRITE");
    const char *tear_at = getenv("NTFAULT_TEAR_AT_JOURNAL_WRITE");
    const char *full = getenv("NTFAULT_JOURNAL_ENOSPC_FILE");
    if ((kill_at == NULL && tear_at == NULL && full == NULL) || !ntfault_is_journal(fd)) {
        return 0;
    }
    if (ntfault_disk_full()) {
        return -1;
    }
    ++ntfault_journal_writes;
    if (kill_at != NULL && ntfault_journal_writes == strtoul(kill_at, NULL, 10)) {
        ntfault_say("ntfault: killing the process before a journal write\n");
        raise(SIGKILL);
    }
    if (tear_at != NULL && ntfault_journal_writes == strtoul(tear_at, NULL, 10)) {
        return 1;
    }
    return 0;
}

/* The wrapped pwrite: real is the libc function. */
static ssize_t ntfault_pwrite(ntfault_pwrite_fn real, int fd, const void *buf, size_t count,
                              off_t offset)
{
    int what = ntfault_before_write(fd);
    if (what < 0) {
        errno = ENOSPC;
        return -1;
    }
    if (what > 0 && count > 1) {
        ssize_t ignored = real(fd, buf, count / 2, offset);
        (void)ignored;
        ntfault_say("ntfault: tore a journal write in half; killing the process\n");
        raise(SIGKILL);
    }
    return real(fd, buf, count, offset);
}

ssize_t pwrite(int fd, const void *buf, size_t count, off_t offset)
{
    static ntfault_pwrite_fn real;
    if (real == NULL) {
        real = (ntfault_pwrite_fn)dlsym(RTLD_NEXT, "pwrite");
    }
    return ntfault_pwrite(real, fd, buf, count, offset);
}

ssize_t pwrite64(int fd, const void *buf, size_t count, off_t offset)
{
    static ntfault_pwrite_fn real;
    if (real == NULL) {
        real = (ntfault_pwrite_fn)dlsym(RTLD_NEXT, "pwrite64");
    }
    return ntfault_pwrite(real, fd, buf, count, offset);
}

/* The wrapped fdatasync/fsync: ENOSPC on a segment while the disk is "full". */
static int ntfault_sync(ntfault_sync_fn real, int fd)
{
    if (getenv("NTFAULT_JOURNAL_ENOSPC_FILE") != NULL && ntfault_is_journal(fd) &&
        ntfault_disk_full()) {
        errno = ENOSPC;
        return -1;
    }
    return real(fd);
}

int fdatasync(int fd)
{
    static ntfault_sync_fn real;
    if (real == NULL) {
        real = (ntfault_sync_fn)dlsym(RTLD_NEXT, "fdatasync");
    }
    return ntfault_sync(real, fd);
}

int fsync(int fd)
{
    static ntfault_sync_fn real;
    if (real == NULL) {
        real = (ntfault_sync_fn)dlsym(RTLD_NEXT, "fsync");
    }
    return ntfault_sync(real, fd);
}
