// Syntax of one `allowed-endpoints` entry:
//   host name            example.com, registry.npmjs.org, localhost
//   leftmost wildcard    *.example.com           (one `*.` at the start only)
//   IPv4                 192.0.2.10
//   IPv6                 2001:db8::1             (with a port: [2001:db8::1]:443)
//   CIDR                 10.0.0.0/8, 2001:db8::/32 (with a port: 10.0.0.0/8:443, [2001:db8::/32]:443)
// each with an optional `:port` (1-65535). No scheme, no path, no user info.

import { isIPv4, isIPv6 } from 'node:net';

export type EndpointKind = 'host' | 'wildcard' | 'ipv4' | 'ipv6' | 'cidr4' | 'cidr6';

export interface Endpoint {
  kind: EndpointKind;
  /** host name (lower-cased, without trailing dot), address or CIDR, without the port */
  target: string;
  port: number | null;
  /** the form passed to `ciwatch start --allow` */
  normalized: string;
}

export class EndpointSyntaxError extends Error {
  constructor(
    readonly entry: string,
    readonly reason: string,
  ) {
    super(`${JSON.stringify(entry)}: ${reason}`);
    this.name = 'EndpointSyntaxError';
  }
}

const LABEL = /^(?!-)[a-z0-9_-]{1,63}(?<!-)$/;

function isHostName(name: string): boolean {
  if (name.length === 0 || name.length > 253) return false;
  const labels = name.split('.');
  if (!labels.every((l) => LABEL.test(l))) return false;
  // An all-numeric last label would make `1.2.3` a "host": refuse, it is a malformed address.
  const tld = labels[labels.length - 1] ?? '';
  return !/^[0-9]+$/.test(tld);
}

function parsePort(text: string, entry: string): number {
  if (!/^[0-9]{1,5}$/.test(text) || (text.length > 1 && text.startsWith('0'))) {
    throw new EndpointSyntaxError(entry, `port ${JSON.stringify(text)} is not a number from 1 to 65535`);
  }
  const port = Number(text);
  if (port < 1 || port > 65535) throw new EndpointSyntaxError(entry, `port ${port} is out of range (1-65535)`);
  return port;
}

function parseCidr(target: string, entry: string): { kind: 'cidr4' | 'cidr6'; target: string } {
  const slash = target.indexOf('/');
  const addr = target.slice(0, slash);
  const lenText = target.slice(slash + 1);
  const v4 = isIPv4(addr);
  const v6 = !v4 && isIPv6(addr);
  if (!v4 && !v6) throw new EndpointSyntaxError(entry, `${JSON.stringify(addr)} before the "/" is not an IPv4 or IPv6 address`);
  const max = v4 ? 32 : 128;
  if (!/^[0-9]{1,3}$/.test(lenText) || (lenText.length > 1 && lenText.startsWith('0')) || Number(lenText) > max) {
    throw new EndpointSyntaxError(entry, `prefix length ${JSON.stringify(lenText)} must be 0-${max}`);
  }
  return { kind: v4 ? 'cidr4' : 'cidr6', target: `${addr.toLowerCase()}/${Number(lenText)}` };
}

function classify(target: string, entry: string): { kind: EndpointKind; target: string } {
  if (target.includes('/')) return parseCidr(target, entry);
  if (isIPv4(target)) return { kind: 'ipv4', target };
  if (isIPv6(target)) return { kind: 'ipv6', target: target.toLowerCase() };
  if (/^[0-9.]+$/.test(target)) throw new EndpointSyntaxError(entry, 'not a valid IPv4 address');
  let name = target.toLowerCase();
  if (name.endsWith('.')) name = name.slice(0, -1);
  if (name.startsWith('*.')) {
    const rest = name.slice(2);
    if (rest.includes('*')) throw new EndpointSyntaxError(entry, 'only one leftmost "*." wildcard is allowed');
    if (!isHostName(rest)) throw new EndpointSyntaxError(entry, `${JSON.stringify(rest)} after "*." is not a valid host name`);
    return { kind: 'wildcard', target: name };
  }
  if (name.includes('*')) {
    throw new EndpointSyntaxError(entry, 'a wildcard is only allowed as the leftmost label, as in "*.example.com"');
  }
  if (!isHostName(name)) throw new EndpointSyntaxError(entry, 'not a valid host name, IP address or CIDR');
  return { kind: 'host', target: name };
}

export function parseEndpoint(raw: string): Endpoint {
  const entry = raw.trim();
  if (entry === '') throw new EndpointSyntaxError(raw, 'empty entry');
  if (/^[a-z][a-z0-9+.-]*:\/\//i.test(entry)) {
    throw new EndpointSyntaxError(entry, 'write the host without a scheme (e.g. "github.com:443", not "https://github.com")');
  }
  if (/[\s@?#]/.test(entry)) throw new EndpointSyntaxError(entry, 'contains a space, "@", "?" or "#"');

  let target: string;
  let port: number | null = null;
  if (entry.startsWith('[')) {
    // [IPv6] or [IPv6]:port or [IPv6/len]:port
    const close = entry.indexOf(']');
    if (close < 0) throw new EndpointSyntaxError(entry, 'missing "]" after the IPv6 address');
    target = entry.slice(1, close);
    const rest = entry.slice(close + 1);
    if (rest !== '') {
      if (!rest.startsWith(':')) throw new EndpointSyntaxError(entry, 'only ":port" may follow "]"');
      port = parsePort(rest.slice(1), entry);
    }
    const addr = target.split('/')[0] ?? '';
    if (!isIPv6(addr)) throw new EndpointSyntaxError(entry, `${JSON.stringify(target)} in brackets is not an IPv6 address`);
  } else {
    const colons = (entry.match(/:/g) ?? []).length;
    if (colons >= 2) {
      // Bare IPv6 (maybe a CIDR). A port cannot be given without brackets: "2001:db8::1:443" is an address.
      target = entry;
      if (!isIPv6(target.split('/')[0] ?? '')) {
        throw new EndpointSyntaxError(entry, 'not a valid IPv6 address (write an IPv6 address with a port as "[2001:db8::1]:443")');
      }
    } else if (colons === 1) {
      const i = entry.lastIndexOf(':');
      target = entry.slice(0, i);
      port = parsePort(entry.slice(i + 1), entry);
    } else {
      target = entry;
    }
  }
  if (target === '') throw new EndpointSyntaxError(entry, 'missing host or address before the port');

  const c = classify(target, entry);
  const isV6 = c.kind === 'ipv6' || c.kind === 'cidr6';
  const normalized = port === null ? c.target : isV6 ? `[${c.target}]:${port}` : `${c.target}:${port}`;
  return { kind: c.kind, target: c.target, port, normalized };
}
