"""connect_probe.py LABEL PORT: connects to 127.0.0.1:PORT and prints `LABEL ok`, or `LABEL <errno name>`."""

import errno
import socket
import sys

label, port = sys.argv[1], int(sys.argv[2])
s = socket.socket()
try:
    s.connect(("127.0.0.1", port))
    print(label, "ok")
except OSError as e:
    print(label, errno.errorcode.get(e.errno, str(e)))
