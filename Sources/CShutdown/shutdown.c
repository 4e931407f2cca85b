// SIGINT / SIGTERM for graceful shutdown, by the self-pipe trick: the handler writes a byte and
// returns. (A libdispatch signal source with SIG_IGN never fired in the server process on Linux:
// the signal was discarded, and `slimsplit server` ignored SIGTERM.)
#include "CShutdown.h"
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <string.h>
#include <unistd.h>

static int fds[2] = {-1, -1};
static pthread_once_t once = PTHREAD_ONCE_INIT;
static int install_error;

static void on_signal(int sig) {
    const int saved = errno;
    const unsigned char b = (unsigned char)sig;
    ssize_t w = write(fds[1], &b, 1);
    (void)w;
    errno = saved;
}

static void install(void) {
    if (pipe(fds) != 0) { install_error = errno; return; }
    fcntl(fds[0], F_SETFD, FD_CLOEXEC);
    fcntl(fds[1], F_SETFD, FD_CLOEXEC);
    fcntl(fds[1], F_SETFL, O_NONBLOCK);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    if (sigaction(SIGINT, &sa, NULL) != 0 || sigaction(SIGTERM, &sa, NULL) != 0) install_error = errno;
}

int slim_shutdown_install(void) {
    pthread_once(&once, install);
    if (install_error) { errno = install_error; return -1; }
    return 0;
}

int slim_shutdown_wait(void) {
    unsigned char b;
    for (;;) {
        const ssize_t n = read(fds[0], &b, 1);
        if (n == 1) return b;
        if (n < 0 && errno == EINTR) continue;
        return -1;
    }
}
