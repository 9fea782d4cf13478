/** Fingerprints: sha256 over canonical JSON and raw arrays. */
import { createHash, type Hash } from "node:crypto";

/** JSON with object keys sorted, so equal values hash equally whatever their key order. */
export function canonicalJson(v: unknown): string {
  if (v === null || typeof v !== "object") return JSON.stringify(v ?? null);
  if (Array.isArray(v)) return `[${v.map(canonicalJson).join(",")}]`;
  const o = v as Record<string, unknown>;
  return `{${Object.keys(o)
    .filter((k) => o[k] !== undefined)
    .sort()
    .map((k) => `${JSON.stringify(k)}:${canonicalJson(o[k])}`)
    .join(",")}}`;
}

export function hashJson(v: unknown): string {
  return createHash("sha256").update(canonicalJson(v)).digest("hex");
}

/** Feed a typed array's bytes (little-endian on every platform Node runs on) into a hash. */
export function updateArray(h: Hash, a: ArrayBufferView): Hash {
  return h.update(new Uint8Array(a.buffer, a.byteOffset, a.byteLength));
}
