import { resolve } from "node:path";
import type { Command } from "commander";
import { startDashboard } from "../dashboard/server.ts";

export function registerDashboard(program: Command): void {
  program
    .command("dashboard")
    .description(
      "serve a live web dashboard (loss, evaluation, throughput, packing) for one run's work dir, or several overlaid",
    )
    .argument("<workdirs...>", "the runs' work dirs (where metrics.jsonl is written)")
    .option(
      "--host <host>",
      "address to listen on (beyond loopback, the address printed carries a token every request needs)",
      "127.0.0.1",
    )
    .option("--port <n>", "port (0 picks a free one)", "8686")
    .action(async (workDirs: string[], o) => {
      const d = await startDashboard({
        workDirs: workDirs.map((w) => resolve(w)),
        host: o.host,
        port: Number(o.port),
      });
      process.stderr.write(`dashboard: ${d.url} (Ctrl-C to stop)\n`);
      await new Promise<void>((res) => process.once("SIGINT", res));
      await d.close();
    });
}
