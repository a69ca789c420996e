/* SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause */
/*
 * ciwatch's kernel programs, built as one object so that the hooks share the
 * ring buffer, the lost-event counters and the lineage map.
 */
#include "common.bpf.h"
#include "lineage.bpf.h"
#include "enforce.bpf.h"
#include "step_scope.bpf.h"
#include "exec.bpf.h"
#include "dns_refuse.bpf.h"
#include "connect.bpf.h"
#include "socket.bpf.h"
#include "file.bpf.h"
#include "dns.bpf.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* The ABI this object was built against; the loader refuses any other. */
const __u32 cw_abi_version = CW_ABI_VERSION;
