"""A loopback DNS server for the refusal tests: answers every A question with
127.0.0.9 (other types with no answer), over UDP and TCP, and appends each
question name it receives to a log file. Prints `ready` once both sockets are
bound. With `silent`, it logs and never answers (for send-only storms).

    dns_server.py ADDRESS LOG [silent]
"""
import socket
import struct
import sys
import threading

ADDRESS, LOG = sys.argv[1], sys.argv[2]
SILENT = sys.argv[3:] == ["silent"]
log = open(LOG, "a", buffering=1)


def question_name(query):
    labels, i = [], 12
    while query[i]:
        labels.append(query[i + 1 : i + 1 + query[i]].decode("latin-1"))
        i += 1 + query[i]
    return labels, i


def answer(query):
    qid = struct.unpack("!H", query[:2])[0]
    labels, end = question_name(query)
    qtype = struct.unpack("!H", query[end + 1 : end + 3])[0]
    log.write("|".join(labels) + "\n")
    question = query[12 : end + 5]
    if qtype != 1:
        return struct.pack("!6H", qid, 0x8180, 1, 0, 0, 0) + question
    record = b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 60, 4) + bytes([127, 0, 0, 9])
    return struct.pack("!6H", qid, 0x8180, 1, 1, 0, 0) + question + record


def serve_tcp(listener):
    while True:
        conn, _ = listener.accept()
        data = b""
        while True:
            chunk = conn.recv(4096)
            if not chunk:
                break
            data += chunk
            while len(data) >= 2 and len(data) >= 2 + struct.unpack("!H", data[:2])[0]:
                n = struct.unpack("!H", data[:2])[0]
                reply = answer(data[2 : 2 + n])
                data = data[2 + n :]
                conn.sendall(struct.pack("!H", len(reply)) + reply)
        conn.close()


udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
udp.bind((ADDRESS, 53))
tcp = socket.socket()
tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
tcp.bind((ADDRESS, 53))
tcp.listen()
threading.Thread(target=serve_tcp, args=(tcp,), daemon=True).start()
print("ready", flush=True)
while True:
    query, peer = udp.recvfrom(4096)
    reply = answer(query)
    if not SILENT:
        udp.sendto(reply, peer)
