/**
 * What tessera needs from a model folder's config.json (original InternVL2 layout): template,
 * tiling settings and tokens per tile. Every number is read or computed from the config, never
 * assumed.
 */
import { existsSync, readFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { UserError } from "../util/errors.ts";

export type LlmFamily = "qwen2" | "internlm2" | "phi3" | "llama" | "unknown";

export interface ModelInfo {
  /** Absolute path of the model folder. */
  dir: string;
  /** Chat template name (config.json `template`, or the override). */
  template: string;
  /** Tile side in pixels: force_image_size, else vision_config.image_size. */
  tileSize: number;
  /** ViT patch size (vision_config.patch_size). */
  patchSize: number;
  downsampleRatio: number;
  /** (tileSize / patchSize)² · downsampleRatio²: 256 for InternVL2. */
  tokensPerTile: number;
  minDynamicPatch: number;
  maxDynamicPatch: number;
  useThumbnail: boolean;
  dynamicImageSize: boolean;
  llmFamily: LlmFamily;
  /** llm_config.architectures[0] when the config names it (old checkpoints don't). */
  llmArchitecture?: string;
  psVersion?: string;
  selectLayer?: number;
  /** The parsed config.json. */
  config: Record<string, unknown>;
}

export interface ModelInfoOverrides {
  template?: string;
  maxDynamicPatch?: number;
  minDynamicPatch?: number;
  useThumbnail?: boolean;
  dynamicImageSize?: boolean;
}

type Obj = Record<string, unknown>;
const isObj = (v: unknown): v is Obj => typeof v === "object" && v !== null && !Array.isArray(v);

function num(v: unknown): number | undefined {
  if (typeof v === "number" && Number.isFinite(v)) return v;
  if (Array.isArray(v) && typeof v[0] === "number") return v[0]; // [h, w] in native configs
  if (isObj(v) && typeof v.height === "number") return v.height;
  return undefined;
}

function familyOf(llm: Obj, template: string): LlmFamily {
  const arch =
    Array.isArray(llm.architectures) && typeof llm.architectures[0] === "string"
      ? llm.architectures[0]
      : "";
  const type = typeof llm.model_type === "string" ? llm.model_type : "";
  const probe = `${arch} ${type}`.toLowerCase();
  if (probe.includes("internlm2")) return "internlm2";
  if (probe.includes("qwen2")) return "qwen2";
  if (probe.includes("phi3")) return "phi3";
  if (probe.includes("llama")) return "llama";
  if (template === "internlm2-chat") return "internlm2";
  if (template === "phi3-chat") return "phi3";
  return "unknown";
}

/** Read `dir/config.json`. Throws UserError naming the file and field when it cannot be used. */
export function loadModelInfo(dir: string, overrides: ModelInfoOverrides = {}): ModelInfo {
  const abs = resolve(dir);
  const file = join(abs, "config.json");
  if (!existsSync(file))
    throw new UserError(`${file}: not found (--model must name an InternVL2 model folder)`);
  let config: Obj;
  try {
    const parsed = JSON.parse(readFileSync(file, "utf8"));
    if (!isObj(parsed)) throw new Error("not a JSON object");
    config = parsed;
  } catch (e) {
    throw new UserError(`${file}: cannot parse: ${(e as Error).message}`);
  }
  const vision = isObj(config.vision_config) ? config.vision_config : {};
  const llm = isObj(config.llm_config)
    ? config.llm_config
    : isObj(config.text_config)
      ? config.text_config
      : {};

  const template =
    overrides.template ?? (typeof config.template === "string" ? config.template : undefined);
  if (!template)
    throw new UserError(
      `${file}: field "template" is missing; pass the chat template explicitly (e.g. --template Hermes-2)`,
    );

  const tileSize = num(config.force_image_size) ?? num(vision.image_size);
  if (!tileSize)
    throw new UserError(
      `${file}: neither "force_image_size" nor "vision_config.image_size" is set`,
    );
  const patchSize = num(vision.patch_size);
  if (!patchSize) throw new UserError(`${file}: field "vision_config.patch_size" is missing`);
  const downsampleRatio = num(config.downsample_ratio) ?? 0.5;
  const side = (tileSize / patchSize) * downsampleRatio;
  const tokensPerTile = side * side;
  if (!Number.isInteger(tokensPerTile) || tokensPerTile <= 0)
    throw new UserError(
      `${file}: (image size ${tileSize} / patch size ${patchSize})² × downsample_ratio ${downsampleRatio}² = ${tokensPerTile} is not a whole number of tokens per tile`,
    );

  const minDynamicPatch = overrides.minDynamicPatch ?? num(config.min_dynamic_patch) ?? 1;
  const maxDynamicPatch = overrides.maxDynamicPatch ?? num(config.max_dynamic_patch) ?? 12;
  if (!(Number.isInteger(minDynamicPatch) && minDynamicPatch >= 1))
    throw new UserError(
      `${file}: "min_dynamic_patch" must be a whole number >= 1, got ${minDynamicPatch}`,
    );
  if (!(Number.isInteger(maxDynamicPatch) && maxDynamicPatch >= minDynamicPatch))
    throw new UserError(
      `max_dynamic_patch must be a whole number >= min_dynamic_patch (${minDynamicPatch}), got ${maxDynamicPatch}`,
    );

  const arch =
    Array.isArray(llm.architectures) && typeof llm.architectures[0] === "string"
      ? llm.architectures[0]
      : undefined;
  return {
    dir: abs,
    template,
    tileSize,
    patchSize,
    downsampleRatio,
    tokensPerTile,
    minDynamicPatch,
    maxDynamicPatch,
    useThumbnail:
      overrides.useThumbnail ??
      (typeof config.use_thumbnail === "boolean" ? config.use_thumbnail : true),
    dynamicImageSize:
      overrides.dynamicImageSize ??
      (typeof config.dynamic_image_size === "boolean" ? config.dynamic_image_size : true),
    llmFamily: familyOf(llm, template),
    llmArchitecture: arch,
    psVersion: typeof config.ps_version === "string" ? config.ps_version : undefined,
    selectLayer: typeof config.select_layer === "number" ? config.select_layer : undefined,
    config,
  };
}
