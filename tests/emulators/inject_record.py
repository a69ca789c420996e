"""Writes one record that no decoder can read into a running agent's ring buffer.

    inject_record.py PID

The kernel is the only writer of an agent's ring buffer, so the test does
what a buggy or mismatched BPF program would: it loads a four-instruction
raw-tracepoint program bound to the ring buffer that PID holds open, and runs
it once with BPF_PROG_TEST_RUN. The program outputs 8 bytes, shorter than any
record's header. Needs root.
"""

import ctypes
import os
import platform
import struct
import sys

SYS_BPF = {"x86_64": 321, "aarch64": 280}[platform.machine()]
BPF_PROG_LOAD, BPF_PROG_TEST_RUN, BPF_MAP_GET_FD_BY_ID = 5, 10, 14
BPF_PROG_TYPE_RAW_TRACEPOINT = 17
BPF_MAP_TYPE_RINGBUF = 27
BPF_FUNC_RINGBUF_OUTPUT = 130

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long


def bpf(cmd, attr):
    buf = ctypes.create_string_buffer(attr, 128)
    fd = libc.syscall(ctypes.c_long(SYS_BPF), ctypes.c_long(cmd), buf, ctypes.c_ulong(128))
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"bpf({cmd}): {os.strerror(err)}")
    return fd


def ring_of(pid):
    """The id of the ring buffer map the process holds an fd of."""
    rings = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") != "anon_inode:bpf-map":
                continue
            info = dict(
                line.split(":\t", 1) for line in open(f"/proc/{pid}/fdinfo/{fd}").read().splitlines() if ":\t" in line
            )
        except OSError:
            continue
        if int(info.get("map_type", "0")) == BPF_MAP_TYPE_RINGBUF:
            rings.append(int(info["map_id"]))
    if len(set(rings)) != 1:
        sys.exit(f"expected one ring buffer in pid {pid}, found {sorted(set(rings))}")
    return rings[0]


def insn(code, dst=0, src=0, off=0, imm=0):
    return struct.pack("<BBhi", code, (src << 4) | dst, off, imm)


def program(map_fd):
    r0, r1, r2, r3, r4, r10 = 0, 1, 2, 3, 4, 10
    return b"".join(
        [
            insn(0x7A, dst=r10, off=-8, imm=0x5A5A5A5A),  # *(u64 *)(r10 - 8) = junk
            insn(0x18, dst=r1, src=1, imm=map_fd),  # r1 = the ring buffer (ld_imm64, pseudo map fd)
            insn(0x00),
            insn(0xBF, dst=r2, src=r10),  # r2 = r10
            insn(0x07, dst=r2, imm=-8),  # r2 -= 8
            insn(0xB7, dst=r3, imm=8),  # r3 = 8 bytes
            insn(0xB7, dst=r4, imm=0),  # r4 = flags
            insn(0x85, imm=BPF_FUNC_RINGBUF_OUTPUT),
            insn(0xB7, dst=r0, imm=0),
            insn(0x95),  # exit
        ]
    )


def main():
    map_fd = bpf(BPF_MAP_GET_FD_BY_ID, struct.pack("<I", ring_of(int(sys.argv[1]))))
    code = program(map_fd)
    insns = ctypes.create_string_buffer(code, len(code))
    license = ctypes.create_string_buffer(b"GPL")
    log = ctypes.create_string_buffer(65536)
    attr = struct.pack(
        "<IIQQIIQ",
        BPF_PROG_TYPE_RAW_TRACEPOINT,
        len(code) // 8,
        ctypes.addressof(insns),
        ctypes.addressof(license),
        1,
        len(log),
        ctypes.addressof(log),
    )
    try:
        prog_fd = bpf(BPF_PROG_LOAD, attr)
    except OSError as e:
        sys.exit(f"{e}; verifier log:\n{log.value.decode(errors='replace')}")
    # prog_fd, retval, data_size_in/out, data_in/out, repeat, duration, ctx_size_in/out, ctx_in/out
    bpf(BPF_PROG_TEST_RUN, struct.pack("<IIIIQQIIIIQQ", prog_fd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0))


if __name__ == "__main__":
    main()
