/* LD_PRELOAD fault injector: fsync(2) / fdatasync(2) / ftruncate(2) fail with EIO while the
 * file named by $MXHOOK_EIO_FLAG exists. Its content: "<calls> <every>", calls one of fsync,
 * fdatasync, ftruncate, all, or several joined by commas (fdatasync,ftruncate); every N: only
 * each Nth matching call fails (1: all of them). The real call is not made when it fails,
 * like a device that refused the write-back. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static unsigned long calls;

static int should_fail(const char *name) {
    const char *flag = getenv("MXHOOK_EIO_FLAG");
    if (!flag) return 0;
    FILE *fh = fopen(flag, "r");
    if (!fh) return 0;
    char which[64] = "";
    unsigned long every = 1;
    int got = fscanf(fh, "%63s %lu", which, &every);
    fclose(fh);
    if (got < 1) return 0;
    int named = strcmp(which, "all") == 0;
    for (char *save = NULL, *item = strtok_r(which, ",", &save); item && !named;
         item = strtok_r(NULL, ",", &save))
        named = strcmp(item, name) == 0;
    if (!named) return 0;
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

int ftruncate(int fd, off_t length) {
    static int (*real)(int, off_t);
    if (!real) real = (int (*)(int, off_t))dlsym(RTLD_NEXT, "ftruncate");
    if (should_fail("ftruncate")) { errno = EIO; return -1; }
    return real(fd, length);
}

int ftruncate64(int fd, off_t length) {
    static int (*real)(int, off_t);
    if (!real) real = (int (*)(int, off_t))dlsym(RTLD_NEXT, "ftruncate64");
    if (should_fail("ftruncate")) { errno = EIO; return -1; }
    return real(fd, length);
}
