// pg-boss life cycles for bench/run.py --peers: send -> fetch -> complete, the closest peer's
// counterpart of AsyncGate's create -> claim -> success. CONNECTIONS loops at once, each on its
// own job (or batch of 100 jobs, one call each step), as the benchmark's clients do.
//
//   node cycles.mjs URL unbatched|batched CONNECTIONS SECONDS
//
// It prints "start" when the timed window opens (after pg-boss started and a second of
// warm-up), and one JSON line when it closes: what finished inside it and its own CPU there.
import { PgBoss } from 'pg-boss';

const [url, mode, connections, seconds] = [
  process.argv[2], process.argv[3], Number(process.argv[4]), Number(process.argv[5]),
];
const batch = mode === 'batched' ? 100 : 1;
const queue = 'bench_cycle';
// As many pooled connections as loops, as AsyncGate's server may open for its clients; no
// maintenance or cron work inside the timed window.
const boss = new PgBoss({ connectionString: url, max: connections, supervise: false, schedule: false });
boss.on('error', (error) => {
  console.error(error);
  process.exit(1);
});
await boss.start();
await boss.createQueue(queue);

let finished = 0;
let stopping = false;
async function loop() {
  while (!stopping) {
    if (batch === 1) {
      await boss.send(queue, {});
    } else {
      await boss.insert(queue, Array.from({ length: batch }, () => ({ data: {} })));
    }
    // Another loop may have fetched the jobs this one sent: it fetches whatever is there.
    const jobs = await boss.fetch(queue, { batchSize: batch });
    if (jobs.length) await boss.complete(queue, jobs.map((job) => job.id));
    if (!stopping) finished += jobs.length;
  }
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const loops = Array.from({ length: connections }, loop);
await sleep(1000);
console.log('start');
const cpuBefore = process.cpuUsage();
const startedAt = performance.now();
const finishedBefore = finished;
await sleep(seconds * 1000);
const cycles = finished - finishedBefore;
const taken = (performance.now() - startedAt) / 1000;
const cpu = process.cpuUsage(cpuBefore);
console.log(JSON.stringify({ cycles, seconds: taken, cpu_seconds: (cpu.user + cpu.system) / 1e6 }));
stopping = true;
await Promise.all(loops);
await boss.stop({ graceful: false, wait: true });
