/**
 * Test fixture: the smallest InternVL2-layout model with weights the engine trains in seconds
 * (28-pixel tiles, one vision and one language layer), built by the engine's build-tiny job.
 *
 *   await buildTinyModel(python, join(root, "model"), { maxDynamicPatch: 2 });
 */
import { runEngine } from "../../src/engine/protocol.ts";

export async function buildTinyModel(
  python: string,
  out: string,
  opts: { maxDynamicPatch?: number } = {},
): Promise<void> {
  await runEngine(
    {
      kind: "build-tiny",
      out,
      tile_size: 28,
      vision_hidden: 16,
      vision_layers: 1,
      llm_hidden: 32,
      llm_layers: 1,
      ...(opts.maxDynamicPatch === undefined ? {} : { max_dynamic_patch: opts.maxDynamicPatch }),
    },
    { python },
  );
}
