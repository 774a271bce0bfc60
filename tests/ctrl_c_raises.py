"""Imported by the root conftest: Ctrl-C (SIGINT) raises KeyboardInterrupt in the test
process and in every command the tests start, however the suite was launched.

A shell without job control (``make test &`` in a script, ``nohup``) starts a background
command with SIGINT ignored; Python keeps an ignored SIGINT ignored, and every child
inherits it across ``exec``. The tests that press Ctrl-C in the command line or check the
SDK's interrupt guard would then fail for a reason that is not the code's. A handler set
here is reset to the default on ``exec``, so the children start as from a terminal.
"""

import signal

if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)
