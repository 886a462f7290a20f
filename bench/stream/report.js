// report.js: the table of bench/stream/run from runs.csv.  For each batch
// size: the medians over the rounds of records per second, end to end (the
// whole shard loop) and in processing alone (the time spent in the batch's
// call), and the ratio idem / at-least-once as the median of the rounds'
// ratios, with the lowest and highest in brackets: the two runs of a round
// are next to each other in time, so their ratio suffers less from a shared
// machine's changing load than a ratio of medians.
import { readFileSync } from 'node:fs';

const [header, ...lines] = readFileSync(process.argv[2], 'utf8').trim().split('\n');
const cols = header.split(',');
const runs = lines.map((l) => Object.fromEntries(l.split(',').map((v, i) => [cols[i], v])));
const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};
const values = (variant, batch, field) => runs.filter((r) => r.variant === variant && r.batch === batch)
  .map((r) => ({ round: r.round, v: Number(r[field]) }));
const ratios = (base, idem, batch, field) => {
  const x = new Map(values(base, batch, field).map((r) => [r.round, r.v]));
  return values(idem, batch, field).filter((r) => x.has(r.round)).map((r) => r.v / x.get(r.round));
};
const fmt = (rs) => (rs.length > 1
  ? `${median(rs).toFixed(2)} (${Math.min(...rs).toFixed(2)}–${Math.max(...rs).toFixed(2)})`
  : rs.length ? median(rs).toFixed(2) : '-');
const sizes = [...new Set(runs.map((r) => r.batch))];
const pairs = [['plain', 'idem', 'inside PostgreSQL'], ['plain-external', 'idem-external', 'outside (lease API)']];
const rounds = new Set(runs.map((r) => r.round)).size;
console.log(`records per second, medians of ${rounds} round(s); at-least-once = the same consumer without idem;`);
console.log('ratio = idem / at-least-once, median of the rounds (lowest–highest)');
console.log('');
console.log('| work | batch | at-least-once rec/s | idem rec/s | ratio | processing only: at-least-once | idem | ratio |');
console.log('|---|---:|---:|---:|---:|---:|---:|---:|');
for (const [base, idem, label] of pairs) {
  for (const b of sizes) {
    const x = values(base, b, 'rps').map((r) => r.v), y = values(idem, b, 'rps').map((r) => r.v);
    if (x.length === 0 || y.length === 0) continue;
    const px = values(base, b, 'process_rps').map((r) => r.v), py = values(idem, b, 'process_rps').map((r) => r.v);
    console.log(`| ${label} | ${b} | ${median(x).toFixed(0)} | ${median(y).toFixed(0)} | ${fmt(ratios(base, idem, b, 'rps'))} | ${median(px).toFixed(0)} | ${median(py).toFixed(0)} | ${fmt(ratios(base, idem, b, 'process_rps'))} |`);
  }
}
const goal = ratios('plain', 'idem', '100', 'rps');
if (goal.length) {
  const g = median(goal);
  console.log(`\ngoal (issue 25): idem >= 0.8x at-least-once at batch size 100, inside PostgreSQL, end to end: ${g.toFixed(2)}x ${g >= 0.8 ? 'met' : 'missed'}`);
}
