/** Every sub-command, registered in the order `tessera --help` lists them. */
import type { Command } from "commander";
import { registerChat } from "./chat.ts";
import { registerDashboard } from "./dashboard.ts";
import { registerDataCheck } from "./data-check.ts";
import { registerDataExplore } from "./data-explore.ts";
import { registerDataFillWh } from "./data-fill-wh.ts";
import { registerDataPlan } from "./data-plan.ts";
import { registerDataPrepare } from "./data-prepare.ts";
import { registerDataPreview } from "./data-preview.ts";
import { registerDataStats } from "./data-stats.ts";
import { registerDemo } from "./demo.ts";
import { registerDoctor } from "./doctor.ts";
import { registerEval } from "./eval.ts";
import { registerExport } from "./export.ts";
import { registerSetup } from "./setup.ts";
import { registerTrain } from "./train.ts";

export function registerCommands(program: Command): void {
  registerDemo(program);
  registerSetup(program);
  registerDoctor(program);

  // `tessera data <sub>`: one file per sub-command (data-*.ts).
  const data = program
    .command("data")
    .description("check, fix, inspect, prepare and plan datasets");
  registerDataCheck(data);
  registerDataFillWh(data);
  registerDataStats(data);
  registerDataPreview(data);
  registerDataExplore(data);
  registerDataPrepare(data);
  registerDataPlan(data);

  registerTrain(program);
  registerEval(program);
  registerExport(program);
  registerChat(program);
  registerDashboard(program);
}
