/* SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause */
/* Pinned minimal vmlinux.h for x86_64 (from Linux 6.18 BTF); see ../common.h. */
#ifndef CIWATCH_VMLINUX_H
#define CIWATCH_VMLINUX_H
#define __VMLINUX_H__ /* libbpf: use kernel pt_regs names */
#include "../common.h"

#pragma clang attribute push (__attribute__((preserve_access_index)), apply_to = record)
struct pt_regs {
	unsigned long r15, r14, r13, r12, bp, bx, r11, r10, r9, r8;
	unsigned long ax, cx, dx, si, di, orig_ax, ip, cs, flags, sp, ss;
};
#pragma clang attribute pop

#endif
