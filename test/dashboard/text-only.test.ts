/**
 * The dashboard builds its page from metrics, run names and error messages that come from
 * files: its script must only ever set them as text. A guard on the script itself, beside the
 * browser tests that show markup as characters.
 */
import { describe, expect, it } from "vitest";
import { DASHBOARD_HTML } from "../../src/dashboard/page.ts";

describe("dashboard page script", () => {
  it("never parses strings as markup (no innerHTML, outerHTML, insertAdjacentHTML, document.write)", () => {
    const script = [...DASHBOARD_HTML.matchAll(/<script>([\s\S]*?)<\/script>/g)]
      .map((m) => m[1])
      .join("\n");
    expect(script.length).toBeGreaterThan(1000);
    for (const sink of [
      "innerHTML",
      "outerHTML",
      "insertAdjacentHTML",
      "document.write",
      "DOMParser",
      "createContextualFragment",
      "eval(",
      "new Function",
    ])
      expect(script, sink).not.toContain(sink);
  });
});
