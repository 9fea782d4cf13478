/** A prepare worker: turns batches of annotation lines into flattened samples (sample-batch.ts). */
import { parentPort } from "node:worker_threads";
import {
  type Lines,
  type MakerModule,
  type MakerOptions,
  makeLinesBatch,
  type SampleMaker,
  transferList,
} from "./sample-batch.ts";

type Msg =
  | {
      type: "dataset";
      key: string;
      makerModule: string;
      options: MakerOptions;
      tokensPerTile: number;
      /** The annotation file as messages name it. */
      file: string;
    }
  | { type: "batch"; key: string; seq: number; lines: Lines };

const makers = new Map<
  string,
  { maker: Promise<SampleMaker>; tokensPerTile: number; file: string }
>();
const port = parentPort!;

port.on("message", async (m: Msg) => {
  try {
    if (m.type === "dataset") {
      makers.set(m.key, {
        maker: import(m.makerModule).then((mod: MakerModule) => mod.createSampleMaker(m.options)),
        tokensPerTile: m.tokensPerTile,
        file: m.file,
      });
      return;
    }
    const d = makers.get(m.key)!;
    const made = await makeLinesBatch(m.seq, m.lines, d.file, await d.maker, d.tokensPerTile);
    port.postMessage({ type: "batch", made }, transferList(made.batch));
  } catch (e) {
    port.postMessage({
      type: "fatal",
      seq: m.type === "batch" ? m.seq : -1,
      message: (e as Error).message,
      stack: (e as Error).stack,
    });
  }
});
