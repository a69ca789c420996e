// Markdown helpers for the job summary. Everything in a trace (host names, paths, step names) can be chosen
// by the code the job ran, so it is escaped: it cannot break a table, inject HTML or fake a heading.

/** Escapes text for one GitHub-flavoured Markdown table cell (and for inline text in general). */
export function cell(text: string, max = 300): string {
  let t = text.replace(/[\r\n\t]+/g, ' ');
  if ([...t].length > max) t = [...t].slice(0, max - 1).join('') + '…';
  return t
    .replace(/&/g, '&amp;')
    .replace(/</g, '&lt;')
    .replace(/>/g, '&gt;')
    .replace(/([\\`*_[\]{}()#+!|~])/g, '\\$1');
}

/** A fenced code block whose fence is longer than any backtick run in the text. */
export function codeBlock(text: string, lang = ''): string {
  const longest = Math.max(2, ...[...text.matchAll(/`+/g)].map((m) => m[0].length));
  const fence = '`'.repeat(longest + 1);
  return `${fence}${lang}\n${text.replace(/\n$/, '')}\n${fence}\n`;
}

export function table(headers: string[], align: ('l' | 'r')[]): string {
  const sep = align.map((a) => (a === 'r' ? '---:' : '---'));
  return `| ${headers.join(' | ')} |\n| ${sep.join(' | ')} |\n`;
}

export function row(cells: (string | number)[]): string {
  return `| ${cells.map((c) => String(c)).join(' | ')} |\n`;
}

export function bytes(text: string): number {
  return Buffer.byteLength(text, 'utf8');
}
