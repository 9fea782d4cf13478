/**
 * `tessera data check` speed: a generated 1,000,000-record multimodal JSONL whose records
 * name 10,000 distinct tiny images. Prints records/s for record validation alone, for the
 * full check (headers read once per distinct image), and images/s for the header reads.
 */
import { createWriteStream } from "node:fs";
import { mkdir, mkdtemp, rm, stat, writeFile } from "node:fs/promises";
import { availableParallelism, loadavg, tmpdir } from "node:os";
import { join } from "node:path";
import { deflateSync } from "node:zlib";
import { checkMeta, defaultWorkers } from "../src/data/check.ts";
import { HeaderReader } from "../src/vision/headers.ts";

const RECORDS = Number(process.env.BENCH_RECORDS ?? 1_000_000);
const IMAGES = Number(process.env.BENCH_IMAGES ?? 10_000);

function crc32(b: Buffer): number {
  let c = 0xffffffff;
  for (const x of b) {
    c ^= x;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
  }
  return (c ^ 0xffffffff) >>> 0;
}

function png(w: number, h: number): Buffer {
  const chunk = (t: string, d: Buffer) => {
    const td = Buffer.concat([Buffer.from(t, "latin1"), d]);
    const out = Buffer.alloc(12 + d.length);
    out.writeUInt32BE(d.length, 0);
    td.copy(out, 4);
    out.writeUInt32BE(crc32(td), 8 + d.length);
    return out;
  };
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(w, 0);
  ihdr.writeUInt32BE(h, 4);
  ihdr.set([8, 0, 0, 0, 0], 8);
  const head = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);
  return Buffer.concat([
    head,
    chunk("IHDR", ihdr),
    chunk("IDAT", deflateSync(Buffer.alloc(h * (w + 1)))),
    chunk("IEND", Buffer.alloc(0)),
  ]);
}

function jpeg(w: number, h: number): Buffer {
  const app0 = [0xff, 0xe0, 0, 16, 0x4a, 0x46, 0x49, 0x46, 0, 1, 1, 0, 0, 1, 0, 1, 0, 0];
  const sof = [
    0xff,
    0xc0,
    0,
    17,
    8,
    h >> 8,
    h & 255,
    w >> 8,
    w & 255,
    3,
    1,
    0x22,
    0,
    2,
    0x11,
    1,
    3,
    0x11,
    1,
  ];
  return Buffer.from([0xff, 0xd8, ...app0, ...sof, 0xff, 0xd9]);
}

const size = (k: number): [number, number] => [64 + (k % 1900), 48 + ((k * 7) % 1400)];
const name = (k: number) => `img/${Math.floor(k / 1000)}/${k}.${k % 2 ? "jpg" : "png"}`;

async function generate(dir: string): Promise<string> {
  const media = join(dir, "media");
  for (let k = 0; k < IMAGES; k += 500) {
    await Promise.all(
      Array.from({ length: Math.min(500, IMAGES - k) }, async (_, j) => {
        const i = k + j;
        const p = join(media, name(i));
        await mkdir(join(p, ".."), { recursive: true });
        const [w, h] = size(i);
        // Tiny real PNGs would need w·h bytes of pixels; a small PNG of the same header
        // layout is written and its IHDR patched to the wanted size, which is all a header read sees.
        const b = i % 2 ? jpeg(w, h) : png(4, 4);
        if (!(i % 2)) {
          b.writeUInt32BE(w, 16);
          b.writeUInt32BE(h, 20);
        }
        await writeFile(p, b);
      }),
    );
  }
  const out = createWriteStream(join(dir, "train.jsonl"));
  const write = (s: string) =>
    out.write(s) ? Promise.resolve() : new Promise<void>((r) => out.once("drain", () => r()));
  let buf = "";
  for (let r = 0; r < RECORDS; r++) {
    const multi = r % 10 === 0;
    const a = (r * 7919) % IMAGES;
    const b = (a + 1) % IMAGES;
    const rec = multi
      ? {
          id: r,
          image: [name(a), name(b)],
          conversations: [
            {
              from: "human",
              value: "Image-1: <image>\nImage-2: <image>\nWhat changed between the two pictures?",
            },
            { from: "gpt", value: `The second picture shows ${r % 97} more objects on the table.` },
          ],
          image_wh: [size(a), size(b)],
        }
      : {
          id: r,
          image: name(a),
          conversations: [
            {
              from: "human",
              value:
                "<image>\nWhat is the date mentioned in this letter?\nAnswer the question using a single word or phrase.",
            },
            { from: "gpt", value: `${1 + (r % 12)}/${1 + (r % 28)}/9${r % 10}` },
          ],
          image_wh: [size(a)],
        };
    buf += `${JSON.stringify(rec)}\n`;
    if (buf.length > 1 << 20) {
      await write(buf);
      buf = "";
    }
  }
  await write(buf);
  await new Promise<void>((r) => out.end(() => r()));
  const meta = join(dir, "meta.json");
  await writeFile(
    meta,
    JSON.stringify({ bench: { media_root: "media", annotation: "train.jsonl", repeat_time: 1 } }),
  );
  return meta;
}

/** Runs `fn`, returning wall seconds and the process's CPU seconds (all threads). */
async function timed<T>(fn: () => Promise<T>): Promise<{ r: T; wall: number; cpu: number }> {
  const c = process.cpuUsage();
  const t = performance.now();
  const r = await fn();
  const u = process.cpuUsage(c);
  return { r, wall: (performance.now() - t) / 1000, cpu: (u.user + u.system) / 1e6 };
}

const rate = (n: number, s: number) => Math.round(n / s).toLocaleString("en-US");

const dir = await mkdtemp(join(tmpdir(), "tessera-bench-check-"));
try {
  console.log(
    `load average before: ${loadavg()
      .map((x) => x.toFixed(1))
      .join(" ")} (other work on the machine slows wall-clock figures)`,
  );
  const g = await timed(() => generate(dir));
  const meta = g.r;
  const mb = (await stat(join(dir, "train.jsonl"))).size / 2 ** 20;
  console.log(
    `generated ${RECORDS} records (${mb.toFixed(0)} MiB), ${IMAGES} images in ${g.wall.toFixed(1)} s`,
  );

  for (const workers of [1, availableParallelism()]) {
    const x = await timed(() => checkMeta(meta, { checkMedia: false, workers }));
    if (x.r.errorCount) throw new Error(`unexpected errors: ${x.r.issues[0]?.message}`);
    console.log(
      `records only, ${workers} thread(s): ${rate(RECORDS, x.wall)} records/s wall (${(mb / x.wall).toFixed(0)} MiB/s, ${x.wall.toFixed(2)} s), ${rate(RECORDS, x.cpu)} records per CPU-second`,
    );
  }

  const reader = new HeaderReader(64);
  const h = await timed(() =>
    Promise.all(Array.from({ length: IMAGES }, (_, k) => reader.get(join(dir, "media", name(k))))),
  );
  console.log(
    `headers only:          ${rate(IMAGES, h.wall)} images/s (${IMAGES} files, 64 in flight, page cache warm), ${rate(IMAGES, h.cpu)} per CPU-second`,
  );

  const fullWorkers = defaultWorkers();
  const f = await timed(() => checkMeta(meta, { workers: fullWorkers }));
  if (f.r.errorCount) throw new Error(`unexpected errors: ${f.r.issues[0]?.message}`);
  const d = f.r.datasets[0];
  console.log(
    `full check, ${fullWorkers} thread(s): ${rate(RECORDS, f.wall)} records/s, ${rate(d.images, f.wall)} image refs/s, ${d.distinctImages} header reads (${f.wall.toFixed(2)} s), ${rate(RECORDS, f.cpu)} records per CPU-second`,
  );
  console.log("target: ≥ 200,000 records/s for record validation on 2 cores");
} finally {
  await rm(dir, { recursive: true, force: true });
}
