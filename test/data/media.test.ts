import { mkdirSync, mkdtempSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { MediaPathError, MediaResolver, resolveMediaPath } from "../../src/data/media.ts";

/** The outcome of one resolution: the path, or the kind of refusal. */
function outcome(f: () => string): string {
  try {
    return f();
  } catch (e) {
    if (e instanceof MediaPathError) return `refused: ${e.kind}`;
    throw e;
  }
}

describe("MediaResolver", () => {
  it("answers exactly as resolveMediaPath, before and after it lists a busy directory", () => {
    const base = mkdtempSync(join(tmpdir(), "tessera-media-"));
    const root = join(base, "root");
    const outside = join(base, "outside");
    mkdirSync(join(root, "img"), { recursive: true });
    mkdirSync(join(root, "few"), { recursive: true });
    mkdirSync(outside);
    writeFileSync(join(outside, "secret.jpg"), "");
    for (let i = 0; i < 200; i++) writeFileSync(join(root, "img", `${i}.jpg`), "");
    writeFileSync(join(root, "few", "a.jpg"), "");
    // Symlinks: one leading out, one staying inside, a directory leading out.
    symlinkSync(join(outside, "secret.jpg"), join(root, "img", "out.jpg"));
    symlinkSync(join(root, "img", "3.jpg"), join(root, "img", "in.jpg"));
    symlinkSync(outside, join(root, "elsewhere"));
    const spec = { mediaRoot: root };
    const paths = [
      ...Array.from({ length: 200 }, (_, i) => `img/${i}.jpg`),
      "img/out.jpg",
      "img/in.jpg",
      "img/missing.jpg",
      "few/a.jpg",
      "few/../img/out.jpg",
      "elsewhere/secret.jpg",
      "elsewhere/missing.jpg",
      "nodir/x.jpg",
      "../outside/secret.jpg",
      "/etc/passwd",
    ];
    const resolver = new MediaResolver(spec);
    // Twice over: the second pass is answered from the directory listings.
    for (const pass of [1, 2])
      for (const p of paths)
        expect(
          outcome(() => resolver.resolve(p)),
          `pass ${pass}: ${p}`,
        ).toBe(outcome(() => resolveMediaPath(spec, p)));
    expect(outcome(() => resolver.resolve("img/out.jpg"))).toBe("refused: symlink-escapes");
    expect(outcome(() => resolver.resolve("elsewhere/secret.jpg"))).toBe(
      "refused: symlink-escapes",
    );
    expect(resolver.resolve("img/in.jpg")).toBe(join(root, "img", "in.jpg"));
    // The escape hatch is passed through.
    const open = new MediaResolver(spec, { allowOutside: true });
    expect(open.resolve("img/out.jpg")).toBe(join(root, "img", "out.jpg"));
    expect(open.resolve("/etc/passwd")).toBe("/etc/passwd");
  });
});
