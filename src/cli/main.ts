/** The `tessera` command line: one entry point, one file per command beside this one. */
import { Command, CommanderError } from "commander";
import { EngineError } from "../engine/protocol.ts";
import { UserError } from "../util/errors.ts";
import { registerCommands } from "./commands.ts";

const program = new Command("tessera")
  .description("Fine-tune InternVL2 vision-language models on your own data mixes.")
  .version("0.1.0")
  .showHelpAfterError()
  .exitOverride();

registerCommands(program);

try {
  await program.parseAsync(process.argv);
} catch (e) {
  if (e instanceof CommanderError) process.exit(e.exitCode);
  if (e instanceof UserError) {
    process.stderr.write(`tessera: ${e.message}\n`);
    process.exit(e.exitCode);
  }
  if (e instanceof EngineError) {
    process.stderr.write(`tessera: ${e.message}\n`);
    process.exit(e.exitCode && e.exitCode > 0 ? e.exitCode : 1);
  }
  throw e;
}
