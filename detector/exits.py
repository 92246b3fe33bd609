"""The error exits the ``detector`` and ``trainer`` command lines share, and their codes.

Two codes, so that a supervisor can tell a mistake from an outage:

* :data:`EXIT_CONFIG` (2): bad configuration, model, data or registry. Restarting cannot fix it:
  the systemd unit does not restart on it (``RestartPreventExitStatus=2``), and the retraining
  CronJob fails its Job at once.
* :data:`EXIT_UNAVAILABLE` (69): the Kafka broker could not be reached at start-up. The
  configuration was accepted; the broker may be booting or failing over, so a restart later can
  succeed: systemd restarts it (``Restart=on-failure``), so do Kubernetes and the CronJob's Job.

Anything else non-zero (1 with a traceback, 137 after SIGKILL) is a crash, restarted by both.
"""

from __future__ import annotations

import sys

__all__ = ["EXIT_CONFIG", "EXIT_UNAVAILABLE", "error_exit"]

# Bad configuration, model, data or registry: restarting cannot fix it (systemd does not retry it).
EXIT_CONFIG = 2
# A service the program needs (the Kafka broker) is unavailable: retrying later can fix it.
# 69 is EX_UNAVAILABLE of BSD's sysexits.h ("a service is unavailable"), the code mail and
# network daemons use for the same case, and it is clear of the shell's 126-165 and of 1 and 2.
EXIT_UNAVAILABLE = 69


def error_exit(prog: str, problem: object, *, code: int = EXIT_CONFIG) -> int:
    """Print ``<prog>: <problem>`` as one line on stderr and return ``code``.

    ``code`` is :data:`EXIT_CONFIG` unless the cause is one a restart can fix
    (:data:`EXIT_UNAVAILABLE`).
    """
    sys.stderr.write(f"{prog}: {problem}\n")
    return code
