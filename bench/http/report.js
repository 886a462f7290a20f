// report.js: the table of bench/http/run from its runs.csv: per workload
// (first, replay), client count and variant, the medians over the rounds of
// requests per second, p50 and p99 latency, the ratio of the median rps to
// redis's and to none's; then the goals of issue 24 (idem against redis:
// replays >= 1.0x, first requests >= 0.8x), each PASS or MISS, with the
// ratio of each round; with the variant idem-baseline (--baseline), idem's
// rps over the baseline's in the same way.
//
//   node report.js runs.csv
import { readFileSync } from 'node:fs';

const [header, ...lines] = readFileSync(process.argv[2], 'utf8').trim().split('\n');
const cols = header.split(',');
const rows = lines.map((l) => Object.fromEntries(l.split(',').map((v, i) => [cols[i], cols[i] === 'variant' || cols[i] === 'mode' ? v : Number(v)])));
const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};
const variants = ['none', 'redis', 'idem', 'idem-lease', 'idem-baseline'].filter((v) => rows.some((r) => r.variant === v));
const modes = ['first', 'replay'].filter((m) => rows.some((r) => r.mode === m));
const clientCounts = [...new Set(rows.map((r) => r.clients))].sort((a, b) => a - b);
const rounds = new Set(rows.map((r) => r.round)).size;

const med = {};
for (const mode of modes) {
  for (const clients of clientCounts) {
    for (const variant of variants) {
      const rs = rows.filter((r) => r.mode === mode && r.clients === clients && r.variant === variant);
      if (rs.length) {
        med[`${mode}/${clients}/${variant}`] = {
          rps: median(rs.map((r) => r.rps)), p50: median(rs.map((r) => r.p50_ms)),
          p99: median(rs.map((r) => r.p99_ms)), failures: rs.reduce((a, r) => a + r.failures, 0),
        };
      }
    }
  }
}

// variant's rps over other's in each round, in round order: how much the ratio moves.
const perRound = (mode, clients, variant, other = 'redis') => [...new Set(rows.map((r) => r.round))].map((round) => {
  const pick = (v) => rows.find((r) => r.round === round && r.mode === mode && r.clients === clients && r.variant === v);
  const a = pick(variant);
  const b = pick(other);
  return a && b ? (a.rps / b.rps).toFixed(2) : '-';
}).join(' ');

const out = [];
out.push(`medians over ${rounds} round(s); rps = requests per second, latency in ms`);
out.push('');
out.push('| workload | clients | variant | rps | p50 ms | p99 ms | rps / redis | rps / none | failures |');
out.push('| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |');
for (const mode of modes) {
  for (const clients of clientCounts) {
    for (const variant of variants) {
      const m = med[`${mode}/${clients}/${variant}`];
      if (!m) continue;
      const ratio = (other) => {
        const o = med[`${mode}/${clients}/${other}`];
        return o ? (m.rps / o.rps).toFixed(2) : '-';
      };
      out.push(`| ${mode} | ${clients} | ${variant} | ${m.rps.toFixed(0)} | ${m.p50.toFixed(2)} | ${m.p99.toFixed(2)} | ${ratio('redis')} | ${ratio('none')} | ${m.failures} |`);
    }
  }
}
out.push('');
out.push('goals (issue 24), idem rps / redis rps (idem: the middleware\'s default mode, \'transaction\'):');
for (const [mode, goal] of [['replay', 1.0], ['first', 0.8]]) {
  for (const clients of clientCounts) {
    const i = med[`${mode}/${clients}/idem`];
    const r = med[`${mode}/${clients}/redis`];
    if (!i || !r) {
      out.push(`  SKIP ${mode} ${clients} client(s): not run`);
      continue;
    }
    const ratio = i.rps / r.rps;
    const lease = med[`${mode}/${clients}/idem-lease`];
    const also = lease ? ` (mode 'lease': ${(lease.rps / r.rps).toFixed(2)}x)` : '';
    out.push(`  ${ratio >= goal ? 'PASS' : 'MISS'} ${mode} ${clients} client(s): ${ratio.toFixed(2)}x (goal >= ${goal.toFixed(1)}x)${also}; per round ${perRound(mode, clients, 'idem')}`);
  }
}
if (variants.includes('idem-baseline')) {
  out.push('');
  out.push('this tree against the baseline, idem rps / idem-baseline rps (both in mode \'transaction\'):');
  for (const mode of modes) {
    for (const clients of clientCounts) {
      const i = med[`${mode}/${clients}/idem`];
      const b = med[`${mode}/${clients}/idem-baseline`];
      if (i && b) out.push(`  ${mode} ${clients} client(s): ${(i.rps / b.rps).toFixed(2)}x; per round ${perRound(mode, clients, 'idem', 'idem-baseline')}`);
    }
  }
}
console.log(out.join('\n'));
