"""Imported by the root conftest before anything imports grpc: gRPC's fork handlers off.

With them on (this grpcio's default), a ``fork()`` from a process running gRPC
(pexpect starting the command line in a terminal) restarts gRPC's poller thread
in the child, whose descriptors the child then closes before ``exec``: about one
child in twenty-five died of SIGABRT ("epoll_wait error: Bad file descriptor")
before it ran the command. Nothing in the tests uses gRPC in a forked child
without ``exec``, which is all the handlers are for.
"""

import os

os.environ["GRPC_ENABLE_FORK_SUPPORT"] = "0"
