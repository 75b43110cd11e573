#include "CSignalPipe.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdatomic.h>
#include <string.h>
#include <unistd.h>

static atomic_int first_signal = 0;
static atomic_int signal_count = 0;
static int pipe_ends[2] = {-1, -1};
static char second_message[512];
static size_t second_length = 0;

static void on_signal(int number) {
    int saved = errno;
    if (atomic_fetch_add(&signal_count, 1) > 0) {
        if (second_length > 0) {
            ssize_t ignored = write(2, second_message, second_length);
            (void)ignored;
        }
        _exit(130);
    }
    atomic_store(&first_signal, number);
    unsigned char byte = (unsigned char)number;
    ssize_t ignored = write(pipe_ends[1], &byte, 1);
    (void)ignored;
    errno = saved;
}

int CSignalPipe_install(const char *second_signal_message) {
    if (pipe_ends[0] >= 0) return pipe_ends[0];
    if (second_signal_message != NULL) {
        size_t length = strlen(second_signal_message);
        if (length >= sizeof(second_message)) length = sizeof(second_message) - 1;
        memcpy(second_message, second_signal_message, length);
        second_length = length;
    }
    int ends[2];
    if (pipe(ends) != 0) return -1;
    fcntl(ends[0], F_SETFD, FD_CLOEXEC);
    fcntl(ends[1], F_SETFD, FD_CLOEXEC);
    /* The handler must never block: a full pipe only loses a wake-up byte nobody needs. */
    fcntl(ends[1], F_SETFL, fcntl(ends[1], F_GETFL) | O_NONBLOCK);
    pipe_ends[0] = ends[0];
    pipe_ends[1] = ends[1];
    struct sigaction action;
    memset(&action, 0, sizeof(action));
    action.sa_handler = on_signal;
    action.sa_flags = SA_RESTART;
    sigemptyset(&action.sa_mask);
    sigaddset(&action.sa_mask, SIGINT);
    sigaddset(&action.sa_mask, SIGTERM);
    sigaddset(&action.sa_mask, SIGHUP);
    int signals[] = {SIGINT, SIGTERM, SIGHUP};
    for (int index = 0; index < 3; index++) {
        /* A signal the parent ignores stays ignored, as the shell convention goes: `nohup` ignores
           SIGHUP, and a background job of a script ignores SIGINT. */
        struct sigaction current;
        if (sigaction(signals[index], NULL, &current) == 0 && current.sa_handler == SIG_IGN) continue;
        if (sigaction(signals[index], &action, NULL) != 0) return -1;
    }
    return pipe_ends[0];
}

void CSignalPipe_record(int number) {
    int expected = 0;
    if (atomic_compare_exchange_strong(&first_signal, &expected, number)) atomic_fetch_add(&signal_count, 1);
}

int CSignalPipe_received(void) {
    return atomic_load(&first_signal);
}

static const int deferrable[3] = {SIGINT, SIGTERM, SIGHUP};
static atomic_int deferred_signal = 0;
static struct sigaction deferred_previous[3];
static int deferred_installed[3] = {0, 0, 0};

static void on_deferred_signal(int number) {
    atomic_store(&deferred_signal, number);
}

void CSignalPipe_defer_begin(void) {
    atomic_store(&deferred_signal, 0);
    struct sigaction action;
    memset(&action, 0, sizeof(action));
    action.sa_handler = on_deferred_signal;
    sigemptyset(&action.sa_mask);
    for (int index = 0; index < 3; index++) {
        deferred_installed[index] = 0;
        struct sigaction current;
        /* An ignored signal stays ignored here too (`nohup`): it must not abandon the section. */
        if (sigaction(deferrable[index], NULL, &current) != 0 || current.sa_handler == SIG_IGN) continue;
        if (sigaction(deferrable[index], &action, &deferred_previous[index]) == 0) deferred_installed[index] = 1;
    }
}

int CSignalPipe_deferred(void) {
    return atomic_load(&deferred_signal);
}

int CSignalPipe_defer_end(void) {
    int pending = atomic_load(&deferred_signal);
    int ours = 0;
    for (int index = 0; index < 3; index++) {
        if (!deferred_installed[index]) continue;
        deferred_installed[index] = 0;
        struct sigaction *previous = &deferred_previous[index];
        sigaction(deferrable[index], previous, NULL);
        if (deferrable[index] == pending)
            ours = (previous->sa_flags & SA_SIGINFO) != 0 || (previous->sa_handler != SIG_DFL && previous->sa_handler != SIG_IGN);
    }
    if (pending != 0 && ours) CSignalPipe_record(pending);
    return pending;
}
