#ifndef CSIGNALPIPE_H
#define CSIGNALPIPE_H

/// Installs handlers for SIGINT, SIGTERM and SIGHUP (SA_RESTART). The first signal is recorded and
/// one byte (its number) is written to a pipe whose read end is returned; the second one writes
/// `second_signal_message` to stderr and calls _exit(130) at once. Everything the handler does is
/// async-signal-safe (atomic store, write, _exit). A signal already ignored (`nohup`, a script's
/// background job) stays ignored. Returns -1 (errno set) if the pipe or a handler cannot be
/// installed. Idempotent: later calls return the same descriptor.
int CSignalPipe_install(const char *second_signal_message);

/// Records `number` as the run's first signal (if none was) without running the hooks: for a signal
/// that code holding signals off handled itself. A later signal then exits at once, as a second one.
void CSignalPipe_record(int number);

/// The number of the first signal received, or 0.
int CSignalPipe_received(void);

/// Starts a critical section: SIGINT, SIGTERM and SIGHUP (unless ignored) are only recorded, by an
/// async-signal-safe handler (an atomic store), until `CSignalPipe_defer_end`. Not reentrant.
void CSignalPipe_defer_begin(void);

/// The signal recorded since `CSignalPipe_defer_begin`, or 0.
int CSignalPipe_deferred(void);

/// Ends the critical section: puts the previous handlers back and, if the recorded signal had a
/// handler of the program's own (ours), records it with `CSignalPipe_record` (no hooks run).
/// Returns the recorded signal, or 0.
int CSignalPipe_defer_end(void);

#endif
