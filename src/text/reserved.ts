/**
 * The strings a model's tokenizer reads as special tokens, from its folder's JSON files (no
 * tokenizer is loaded): record text must not hold them (`data check --model`, `data prepare`).
 */
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { RESERVED_STRINGS, TEXT_TOKENS } from "../data/record.ts";
import { UserError } from "../util/errors.ts";

type Obj = Record<string, unknown>;

function readJson(p: string): unknown {
  if (!existsSync(p)) return undefined;
  try {
    return JSON.parse(readFileSync(p, "utf8"));
  } catch {
    return undefined;
  }
}

const content = (v: unknown): string | undefined =>
  typeof v === "string"
    ? v
    : v && typeof v === "object" && typeof (v as Obj).content === "string"
      ? ((v as Obj).content as string)
      : undefined;

/**
 * RESERVED_STRINGS and every special token the folder declares (tokenizer.json `added_tokens`,
 * tokenizer_config.json `added_tokens_decoder`, added_tokens.json, special_tokens_map.json),
 * less the grounding tokens meant for text.
 */
export function reservedStrings(modelDir: string): string[] {
  const files = ["tokenizer.json", "tokenizer_config.json", "added_tokens.json"];
  if (!files.some((f) => existsSync(join(modelDir, f))))
    throw new UserError(
      `${modelDir}: no tokenizer files here (${files.join(", ")}); --model must name a model folder`,
    );
  const out = new Set(RESERVED_STRINGS);
  const tj = readJson(join(modelDir, "tokenizer.json")) as Obj | undefined;
  if (Array.isArray(tj?.added_tokens))
    for (const t of tj.added_tokens as Obj[])
      if (t?.special === true && typeof t.content === "string") out.add(t.content);
  const cfg = readJson(join(modelDir, "tokenizer_config.json")) as Obj | undefined;
  const dec = cfg?.added_tokens_decoder;
  if (dec && typeof dec === "object")
    for (const t of Object.values(dec as Record<string, Obj>))
      if (t?.special !== false && typeof t?.content === "string") out.add(t.content);
  const added = readJson(join(modelDir, "added_tokens.json"));
  if (added && typeof added === "object") for (const k of Object.keys(added)) out.add(k);
  const map = readJson(join(modelDir, "special_tokens_map.json")) as Obj | undefined;
  for (const v of Object.values(map ?? {}))
    for (const x of Array.isArray(v) ? v : [v]) {
      const c = content(x);
      if (c) out.add(c);
    }
  for (const t of TEXT_TOKENS) out.delete(t);
  // An empty or one-character token would match ordinary text.
  return [...out].filter((t) => t.length > 1);
}
