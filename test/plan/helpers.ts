/** Test helpers: small meta files with text, image and multi-image datasets. */
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { makeModelFolder } from "../helpers/model-folder.ts";

const made: string[] = [];

/** Remove every folder these helpers made (call from afterAll). */
export function removeTemp(): void {
  for (const d of made.splice(0)) rmSync(d, { recursive: true, force: true });
}

export const CHAR_MAKER = new URL("./fixtures/char-maker.ts", import.meta.url).href;

/** A tiny-tile model folder: 28-pixel tiles, 1 context token per tile, up to 6 tiles. */
export function tinyModel(): string {
  return track(
    makeModelFolder({
      tokenizerFiles: "none",
      imageSize: 28,
      patchSize: 14,
      downsampleRatio: 0.5,
      maxDynamicPatch: 6,
    }),
  );
}

/** Remember a temporary folder for removeTemp(). */
export function track(dir: string): string {
  made.push(dir);
  return dir;
}

function rnd(seed: number) {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return x / 4294967296;
  };
}

export interface DatasetDef {
  name: string;
  n: number;
  kind: "text" | "image" | "multi";
  repeat?: number;
  /** Lines that are not valid records, inserted at these 0-based record positions. */
  badAt?: number[];
}

/** Write JSONL files and a meta file; returns the meta path and the folder. */
export function writeDatasets(defs: DatasetDef[], seed = 1): { root: string; meta: string } {
  const root = mkdtempSync(join(tmpdir(), "tessera-plan-"));
  made.push(root);
  const r = rnd(seed);
  const meta: Record<string, unknown> = {};
  for (const d of defs) {
    mkdirSync(join(root, d.name, "img"), { recursive: true });
    const lines: string[] = [];
    for (let i = 0; i < d.n; i++) {
      if (d.badAt?.includes(i)) lines.push(`{"conversations": 5}`);
      const q = "q".repeat(5 + Math.floor(r() * 40));
      const a = `${d.name}#${i}:${"a".repeat(1 + Math.floor(r() * 60 * (r() < 0.1 ? 8 : 1)))}`;
      const rec: Record<string, unknown> = { id: i };
      if (d.kind === "text")
        rec.conversations = [
          { from: "human", value: q },
          { from: "gpt", value: a },
        ];
      else {
        const k = d.kind === "multi" ? 2 + Math.floor(r() * 3) : 1;
        rec.image = k === 1 ? "img/0.png" : Array.from({ length: k }, (_, j) => `img/${j}.png`);
        rec.image_wh = Array.from({ length: k }, () => [
          20 + Math.floor(r() * 200),
          20 + Math.floor(r() * 200),
        ]);
        rec.conversations = [
          { from: "human", value: `${"<image>\n".repeat(k)}${q}` },
          { from: "gpt", value: a },
        ];
      }
      lines.push(JSON.stringify(rec));
    }
    writeFileSync(join(root, `${d.name}.jsonl`), `${lines.join("\n")}\n`);
    meta[d.name] = {
      media_root: d.kind === "text" ? "" : `${d.name}/`,
      annotation: `${d.name}.jsonl`,
      repeat_time: d.repeat ?? 1,
    };
  }
  const metaPath = join(root, "meta.json");
  writeFileSync(metaPath, JSON.stringify(meta, null, 2));
  return { root, meta: metaPath };
}
