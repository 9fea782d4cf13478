/**
 * Preference training settings (`--method dpo|mpo`): the loss terms, their weights, beta,
 * rpo_alpha, label smoothing and where the reference log-probabilities come from. The
 * official MPO script's flags (`--loss_type`, `--sigmoid_loss_weight`, ...) map onto them.
 */
import { z } from "zod";
import { UserError } from "../util/errors.ts";

export const LOSS_TERMS = ["sigmoid", "bco_pair", "ipo", "hinge"] as const;
export type LossTerm = (typeof LOSS_TERMS)[number];

/** Keys spread into the training config schema. */
export const PREFERENCE_CONFIG_SHAPE = {
  method: z
    .enum(["sft", "dpo", "mpo"])
    .default("sft")
    .describe("sft | dpo | mpo (preference methods train on question/chosen/rejected pairs)"),
  loss_type: z
    .string()
    .optional()
    .describe(
      "preference loss terms, comma-separated: sigmoid, bco_pair, ipo, hinge (default: mpo sigmoid,bco_pair; dpo sigmoid)",
    ),
  loss_weights: z
    .array(z.coerce.number().nonnegative())
    .optional()
    .describe("weight of each loss term, in loss_type order (default: mpo 0.8,0.2; else 1 each)"),
  sigmoid_loss_weight: z.number().nonnegative().optional().describe("weight of the sigmoid term"),
  bco_pair_loss_weight: z.number().nonnegative().optional().describe("weight of the bco_pair term"),
  beta: z.number().positive().default(0.1).describe("preference beta (KL strength)"),
  rpo_alpha: z
    .number()
    .nonnegative()
    .optional()
    .describe("weight of the SFT (NLL) term on the chosen answers (default: mpo 1, dpo 0)"),
  label_smoothing: z
    .number()
    .min(0)
    .max(0.5)
    .default(0)
    .describe("label smoothing of the sigmoid term (conservative DPO)"),
  reference: z
    .enum(["precomputed", "frozen"])
    .default("precomputed")
    .describe(
      "reference log-probabilities: precomputed (one pass before training, stored next to the cache) | frozen (a frozen copy in memory)",
    ),
};

/** The official MPO script's flags, spelled with underscores, onto the settings. */
export const OFFICIAL_PREFERENCE_FLAGS: {
  flags: string;
  description: string;
  apply: (v: unknown) => Record<string, unknown>;
}[] = [
  {
    flags: "--loss_type <list>",
    description: "official spelling of --loss-type",
    apply: (v) => ({ loss_type: String(v) }),
  },
  {
    flags: "--sigmoid_loss_weight <w>",
    description: "official spelling of --sigmoid-loss-weight",
    apply: (v) => ({ sigmoid_loss_weight: number(v, "--sigmoid_loss_weight") }),
  },
  {
    flags: "--bco_pair_loss_weight <w>",
    description: "official spelling of --bco-pair-loss-weight",
    apply: (v) => ({ bco_pair_loss_weight: number(v, "--bco_pair_loss_weight") }),
  },
  {
    flags: "--rpo_alpha <a>",
    description: "official spelling of --rpo-alpha",
    apply: (v) => ({ rpo_alpha: number(v, "--rpo_alpha") }),
  },
];

function number(v: unknown, flag: string): number {
  const n = Number(v);
  if (!Number.isFinite(n))
    throw new UserError(`${flag}: expected a number, got ${JSON.stringify(v)}`);
  return n;
}

export interface PreferenceFields {
  method: "sft" | "dpo" | "mpo";
  loss_type?: string;
  loss_weights?: number[];
  sigmoid_loss_weight?: number;
  bco_pair_loss_weight?: number;
  beta: number;
  rpo_alpha?: number;
  label_smoothing: number;
}

/**
 * Fill the method's defaults (the official MPO recipe for `mpo`: sigmoid 0.8 + bco_pair 0.2,
 * rpo_alpha 1, beta 0.1) and check the terms and weights. Mutates and returns `c`.
 */
export function resolvePreference<T extends PreferenceFields>(c: T, where: string): T {
  if (c.method === "sft") return c;
  const mpo = c.method === "mpo";
  c.loss_type ??= mpo ? "sigmoid,bco_pair" : "sigmoid";
  const terms = c.loss_type
    .split(",")
    .map((s) => s.trim())
    .filter(Boolean);
  if (!terms.length) throw new UserError(`${where}: loss_type names no loss term`);
  for (const t of terms)
    if (!(LOSS_TERMS as readonly string[]).includes(t))
      throw new UserError(
        `${where}: loss_type: unknown term "${t}" (known: ${LOSS_TERMS.join(", ")})`,
      );
  if (new Set(terms).size !== terms.length)
    throw new UserError(`${where}: loss_type names a term twice: ${c.loss_type}`);
  if (c.loss_weights && c.loss_weights.length !== terms.length)
    throw new UserError(
      `${where}: loss_weights has ${c.loss_weights.length} value(s) for ${terms.length} loss term(s) (${terms.join(", ")})`,
    );
  const recipe: Record<string, number> = mpo ? { sigmoid: 0.8, bco_pair: 0.2 } : {};
  const own: Record<string, number | undefined> = {
    sigmoid: c.sigmoid_loss_weight,
    bco_pair: c.bco_pair_loss_weight,
  };
  const weights = terms.map(
    (t, i) => c.loss_weights?.[i] ?? own[t] ?? (terms.length > 1 ? (recipe[t] ?? 1) : 1),
  );
  if (weights.every((w) => w === 0)) throw new UserError(`${where}: every loss weight is 0`);
  c.loss_type = terms.join(",");
  c.loss_weights = weights;
  c.rpo_alpha ??= mpo ? 1 : 0;
  if (c.label_smoothing > 0 && !terms.includes("sigmoid"))
    throw new UserError(
      `${where}: label_smoothing applies to the sigmoid term, which loss_type lacks`,
    );
  return c;
}
