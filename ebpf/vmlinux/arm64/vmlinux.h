/* SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause */
/* Pinned minimal vmlinux.h for arm64 (from Linux 6.18 BTF); see ../common.h. */
#ifndef CIWATCH_VMLINUX_H
#define CIWATCH_VMLINUX_H
#define __VMLINUX_H__ /* libbpf: use kernel pt_regs names */
#include "../common.h"

/* arch/arm64/include/uapi/asm/ptrace.h: libbpf's PT_REGS_* read user_pt_regs. */
struct user_pt_regs {
	__u64 regs[31];
	__u64 sp;
	__u64 pc;
	__u64 pstate;
};
#pragma clang attribute push (__attribute__((preserve_access_index)), apply_to = record)
struct pt_regs {
	union {
		struct user_pt_regs user_regs;
		struct { u64 regs[31]; u64 sp; u64 pc; u64 pstate; };
	};
	u64 orig_x0;
};
#pragma clang attribute pop

#endif
