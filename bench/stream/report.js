// report.js: the table of bench/stream/run from runs.csv: medians over the
// rounds of records per second, end to end and in processing alone, and the
// ratio of each idem variant to its at-least-once twin.
import { readFileSync } from 'node:fs';

const [header, ...lines] = readFileSync(process.argv[2], 'utf8').trim().split('\n');
const cols = header.split(',');
const runs = lines.map((l) => Object.fromEntries(l.split(',').map((v, i) => [cols[i], v])));
const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};
const cell = (variant, batch, field) => {
  const xs = runs.filter((r) => r.variant === variant && r.batch === batch).map((r) => Number(r[field]));
  return xs.length ? median(xs) : undefined;
};
const sizes = [...new Set(runs.map((r) => r.batch))];
const pairs = [['plain', 'idem', 'inside PostgreSQL'], ['plain-external', 'idem-external', 'outside (lease API)']];
const rounds = new Set(runs.map((r) => r.round)).size;
console.log(`records per second, medians of ${rounds} round(s); at-least-once = the same consumer without idem`);
console.log('');
console.log('| work | batch | at-least-once rec/s | idem rec/s | ratio | at-least-once, processing only | idem, processing only | ratio |');
console.log('|---|---:|---:|---:|---:|---:|---:|---:|');
for (const [base, idem, label] of pairs) {
  for (const b of sizes) {
    const x = cell(base, b, 'rps'), y = cell(idem, b, 'rps');
    const px = cell(base, b, 'process_rps'), py = cell(idem, b, 'process_rps');
    if (x === undefined || y === undefined) continue;
    console.log(`| ${label} | ${b} | ${x.toFixed(0)} | ${y.toFixed(0)} | ${(y / x).toFixed(2)} | ${px.toFixed(0)} | ${py.toFixed(0)} | ${(py / px).toFixed(2)} |`);
  }
}
const goal = ((cell('idem', '100', 'rps') ?? NaN) / (cell('plain', '100', 'rps') ?? NaN));
if (!Number.isNaN(goal)) console.log(`\ngoal (issue 25): idem >= 0.8x at-least-once at batch size 100, inside PostgreSQL: ${goal.toFixed(2)}x ${goal >= 0.8 ? 'met' : 'MISSED'}`);
