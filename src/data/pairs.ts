/**
 * Preference records (the official MPO layout): `question`, `chosen`, `rejected` beside the
 * usual `image` (one or a list) or `video`, and optional `image_wh` or `width`/`height`.
 * A pair is validated here and becomes a record whose conversation is the chosen one
 * (question, chosen) with the rejected answer beside it, so every tool that reads records
 * sees the chosen side; `pairConversations` gives both.
 */
import { type DataIssue, describe, issue } from "./issues.ts";

export interface PairAnswers {
  chosen: string;
  rejected: string;
}

/** Keys of a preference record that are not kept in `extra`. */
export const PAIR_KEYS = ["question", "chosen", "rejected", "width", "height"] as const;

/** True when the line is written as a preference record. */
export function looksLikePair(o: Record<string, unknown>): boolean {
  return (
    o.chosen !== undefined ||
    o.rejected !== undefined ||
    (o.question !== undefined && o.conversations === undefined)
  );
}

/**
 * Checks the pair fields and returns the chosen conversation (question, chosen) and the
 * answers, or nothing when a field is wrong (each problem is in `issues`).
 */
export function validatePairFields(
  o: Record<string, unknown>,
  file: string,
  line: number,
  issues: DataIssue[],
): { turns: { from: "human" | "gpt"; value: string }[]; pair: PairAnswers } | undefined {
  let ok = true;
  if (o.conversations !== undefined) {
    issues.push(
      issue(
        file,
        line,
        "conversations",
        "pair-and-conversations",
        "a preference record has question, chosen and rejected instead of conversations",
        { expected: "no conversations", found: describe(o.conversations) },
      ),
    );
    ok = false;
  }
  for (const k of ["question", "chosen", "rejected"] as const) {
    const v = o[k];
    if (typeof v !== "string") {
      issues.push(
        issue(
          file,
          line,
          k,
          v === undefined ? "missing-field" : "wrong-type",
          `a preference record needs ${k} as a string`,
          { expected: "a string", found: describe(v) },
        ),
      );
      ok = false;
    } else if (k !== "question" && v.trim() === "") {
      issues.push(
        issue(file, line, k, "empty-answer", `${k} is empty: there is nothing to compare`, {
          expected: "a non-empty answer",
          found: JSON.stringify(v),
        }),
      );
      ok = false;
    }
  }
  if (ok && o.chosen === o.rejected)
    issues.push(
      issue(
        file,
        line,
        "rejected",
        "same-answers",
        "chosen and rejected are the same text: the pair teaches nothing",
        { severity: "warning", expected: "two different answers", found: "the same text twice" },
      ),
    );
  if (!ok) return undefined;
  const question = o.question as string;
  return {
    turns: [
      { from: "human", value: question },
      { from: "gpt", value: o.chosen as string },
    ],
    pair: { chosen: o.chosen as string, rejected: o.rejected as string },
  };
}

/** The two conversations of a pair: (question, chosen) and (question, rejected). */
export function pairConversations<T extends { conversations: { from: string; value: string }[] }>(
  record: T & { pair?: PairAnswers },
): [T, T] {
  const p = record.pair;
  if (!p) throw new Error("not a preference record");
  const human = record.conversations[0];
  return [
    { ...record, conversations: [human, { from: "gpt", value: p.chosen }] },
    { ...record, conversations: [human, { from: "gpt", value: p.rejected }] },
  ];
}
