// kinesalite.js: kinesalite (in memory) on 127.0.0.1 only; its own cli.js
// listens on every interface.  Prints "listening PORT" once it accepts.
//
//   node test/kinesalite.js [PORT]      (0 or none: a free port)
import { createRequire } from 'node:module';

const kinesalite = createRequire(import.meta.url)('kinesalite');
const server = kinesalite({ createStreamMs: 0, deleteStreamMs: 0, updateStreamMs: 0 });
server.listen(Number(process.argv[2] ?? 0), '127.0.0.1', () => {
  console.log(`listening ${server.address().port}`);
});
