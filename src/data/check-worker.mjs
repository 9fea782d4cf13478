// Worker thread of `tessera data check`: checks byte ranges of annotation files, one job at a
// time. Plain JavaScript so it starts under any runner; it loads the TypeScript through tsx.
import { parentPort } from "node:worker_threads";
import { register } from "tsx/esm/api";

register();
const { checkRangeJob } = await import("./check.ts");
parentPort.on("message", async (job) => {
  try {
    const result = await checkRangeJob(job, (bytes) => parentPort.postMessage({ bytes }));
    parentPort.postMessage({ result });
  } catch (e) {
    parentPort.postMessage({ error: e instanceof Error ? (e.stack ?? e.message) : String(e) });
  }
});
