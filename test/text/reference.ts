/** Ask the engine's Python reference (transformers, SentencePiece, the official preprocessing) many questions in one process. */
import { runEngine } from "../../src/engine/protocol.ts";
import { venvDir, venvPython } from "../../src/engine/venv.ts";

export type Question = { op: string; [k: string]: unknown };

export async function askPython(questions: Question[]): Promise<unknown[]> {
  const r = await runEngine(
    { kind: "text_reference", questions },
    { python: venvPython(venvDir()) },
  );
  return r.answers as unknown[];
}
