// Whether this runner can run ciwatch: Linux, x86_64 or arm64, and a kernel that exposes BTF.

import { existsSync } from 'node:fs';
import type { Arch } from './checksums.ts';

export const BTF_PATH = '/sys/kernel/btf/vmlinux';

export type Support = { supported: true; arch: Arch } | { supported: false; reason: string };

export interface PlatformProbe {
  platform: NodeJS.Platform;
  arch: string;
  exists: (path: string) => boolean;
}

export const realProbe = (): PlatformProbe => ({ platform: process.platform, arch: process.arch, exists: existsSync });

const OS_NAMES: Partial<Record<NodeJS.Platform, string>> = { win32: 'Windows', darwin: 'macOS' };

export function checkSupport(probe: PlatformProbe): Support {
  if (probe.platform !== 'linux') {
    const os = OS_NAMES[probe.platform] ?? probe.platform;
    return { supported: false, reason: `ciwatch runs on Linux runners only; this runner is ${os}` };
  }
  let arch: Arch;
  if (probe.arch === 'x64') arch = 'x86_64';
  else if (probe.arch === 'arm64') arch = 'aarch64';
  else return { supported: false, reason: `ciwatch has no build for the ${probe.arch} architecture (x86_64 and arm64 only)` };
  if (!probe.exists(BTF_PATH)) {
    return {
      supported: false,
      reason: `this kernel exposes no BTF (${BTF_PATH} is missing), which ciwatch's CO-RE BPF programs need (CONFIG_DEBUG_INFO_BTF=y)`,
    };
  }
  return { supported: true, arch };
}
