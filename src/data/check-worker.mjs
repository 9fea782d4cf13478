// Worker thread of `tessera data check`: checks one byte range of an annotation file.
// Plain JavaScript so it starts under any runner; it loads the TypeScript sources through tsx.
import { parentPort, workerData } from "node:worker_threads";
import { register } from "tsx/esm/api";

register();
const { checkRangeJob } = await import("./check.ts");
try {
  const result = await checkRangeJob(workerData, (bytes) => parentPort.postMessage({ bytes }));
  parentPort.postMessage({ result });
} catch (e) {
  parentPort.postMessage({ error: e instanceof Error ? (e.stack ?? e.message) : String(e) });
}
