/** Exact-match scoring: per question type and overall. */

export interface Scored {
  type: string;
  answer: string;
  prediction: string;
  correct: boolean;
}

export interface Accuracy {
  correct: number;
  total: number;
  accuracy: number;
}

export interface ScoreReport {
  overall: Accuracy;
  byType: Record<string, Accuracy>;
}

/**
 * The form both sides are compared in: case, surrounding whitespace and punctuation, and
 * inner runs of whitespace do not count; everything else does.
 */
export function normalizeAnswer(s: string): string {
  return s
    .normalize("NFKC")
    .toLowerCase()
    .replace(/\s+/g, " ")
    .replace(/^[\s\p{P}]+|[\s\p{P}]+$/gu, "");
}

export function isExactMatch(prediction: string, answer: string): boolean {
  return normalizeAnswer(prediction) === normalizeAnswer(answer);
}

function acc(correct: number, total: number): Accuracy {
  return { correct, total, accuracy: total ? correct / total : 0 };
}

/** Accuracy per type (in first-seen order) and overall. */
export function scoreAnswers(items: { type: string; answer: string; prediction: string }[]): {
  report: ScoreReport;
  scored: Scored[];
} {
  const counts = new Map<string, [number, number]>();
  let right = 0;
  const scored = items.map((it) => {
    const correct = isExactMatch(it.prediction, it.answer);
    const c = counts.get(it.type) ?? [0, 0];
    c[0] += correct ? 1 : 0;
    c[1] += 1;
    counts.set(it.type, c);
    right += correct ? 1 : 0;
    return { ...it, correct };
  });
  const byType: Record<string, Accuracy> = {};
  for (const [t, [c, n]] of counts) byType[t] = acc(c, n);
  return { report: { overall: acc(right, items.length), byType }, scored };
}
