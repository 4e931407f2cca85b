#ifndef SLIMSPLIT_CSHUTDOWN_H
#define SLIMSPLIT_CSHUTDOWN_H

/// Catches SIGINT and SIGTERM with a handler that only writes the signal's number to a pipe
/// (async-signal-safe, whichever thread the kernel picks and whatever it blocks), so that a
/// thread blocked in `slim_shutdown_wait` learns of it. Idempotent. Returns 0, or -1 (errno set).
int slim_shutdown_install(void);

/// Blocks until SIGINT or SIGTERM arrives (after `slim_shutdown_install`); returns its number.
int slim_shutdown_wait(void);

#endif
