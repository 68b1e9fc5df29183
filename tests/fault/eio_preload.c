/* LD_PRELOAD fault injector: fsync(2) / fdatasync(2) fail with EIO while the file named by
 * $MXHOOK_EIO_FLAG exists. Its content: "<call> <every>", call one of fsync, fdatasync, all;
 * every N: only each Nth matching call fails (1: all of them). The real call is not made
 * when it fails, like a device that refused the write-back. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static unsigned long calls;

static int should_fail(const char *name) {
    const char *flag = getenv("MXHOOK_EIO_FLAG");
    if (!flag) return 0;
    FILE *fh = fopen(flag, "r");
    if (!fh) return 0;
    char which[32] = "";
    unsigned long every = 1;
    int got = fscanf(fh, "%31s %lu", which, &every);
    fclose(fh);
    if (got < 1 || (strcmp(which, "all") != 0 && strcmp(which, name) != 0)) return 0;
    if (every == 0) every = 1;
    pthread_mutex_lock(&lock);
    unsigned long n = ++calls;
    pthread_mutex_unlock(&lock);
    return n % every == 0;
}

int fsync(int fd) {
    static int (*real)(int);
    if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    if (should_fail("fsync")) { errno = EIO; return -1; }
    return real(fd);
}

int fdatasync(int fd) {
    static int (*real)(int);
    if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    if (should_fail("fdatasync")) { errno = EIO; return -1; }
    return real(fd);
}
