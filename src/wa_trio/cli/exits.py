"""The CLI's exit codes (a module of their own: every subcommand's module uses them, and none
imports ``main``).

0 ok; 1 a job or command failed (``validate`` of an invalid job, ``send`` refused); 2 bad
configuration or a broker topology that conflicts with ours (one line on stderr); 130 interrupted.
"""

EXIT_OK, EXIT_FAILED, EXIT_CONFIG = 0, 1, 2
EXIT_INTERRUPTED = 130

__all__ = ["EXIT_CONFIG", "EXIT_FAILED", "EXIT_INTERRUPTED", "EXIT_OK"]
