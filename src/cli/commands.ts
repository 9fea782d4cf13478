/** Every sub-command, registered in the order `tessera --help` lists them. */
import type { Command } from "commander";
import { registerDoctor } from "./doctor.ts";
import { registerSetup } from "./setup.ts";

export function registerCommands(program: Command): void {
  registerSetup(program);
  registerDoctor(program);
}
