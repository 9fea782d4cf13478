/** An error meant for the user: printed as its message alone, without a stack. */
export class UserError extends Error {
  constructor(
    message: string,
    readonly exitCode = 1,
  ) {
    super(message);
    this.name = "UserError";
  }
}

/**
 * A write that failed for lack of room, as the user should read it: "disk full while writing
 * PATH" (Node's own message names no path). Other errors are returned unchanged.
 */
export function namedWriteError(e: unknown, path: string): unknown {
  const code = (e as NodeJS.ErrnoException | undefined)?.code;
  if (code === "ENOSPC") return new UserError(`disk full while writing ${path}`);
  if (code === "EDQUOT") return new UserError(`disk quota exceeded while writing ${path}`);
  return e;
}
