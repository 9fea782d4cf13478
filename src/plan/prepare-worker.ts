/** A prepare worker: turns batches of records into flattened samples (sample-batch.ts). */
import { parentPort } from "node:worker_threads";
import type { DataRecord } from "../data/record.ts";
import {
  type MakerModule,
  type MakerOptions,
  makeBatch,
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
    }
  | { type: "batch"; key: string; seq: number; items: { line: number; record: DataRecord }[] };

const makers = new Map<string, { maker: Promise<SampleMaker>; tokensPerTile: number }>();
const port = parentPort!;

port.on("message", async (m: Msg) => {
  try {
    if (m.type === "dataset") {
      makers.set(m.key, {
        maker: import(m.makerModule).then((mod: MakerModule) => mod.createSampleMaker(m.options)),
        tokensPerTile: m.tokensPerTile,
      });
      return;
    }
    const d = makers.get(m.key)!;
    const batch = await makeBatch(m.seq, m.items, await d.maker, d.tokensPerTile);
    port.postMessage({ type: "batch", batch }, transferList(batch));
  } catch (e) {
    port.postMessage({
      type: "fatal",
      seq: m.type === "batch" ? m.seq : -1,
      message: (e as Error).message,
      stack: (e as Error).stack,
    });
  }
});
