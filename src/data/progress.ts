/** A byte-based progress bar with rate and ETA, on stderr and only when it is a terminal. */
import cliProgress from "cli-progress";

export interface ByteProgress {
  update(done: number, total: number): void;
  stop(): void;
}

function mib(n: number): string {
  return (n / (1 << 20)).toFixed(1);
}

export function byteProgress(label: string, enabled = process.stderr.isTTY === true): ByteProgress {
  if (!enabled) return { update() {}, stop() {} };
  const t0 = Date.now();
  const bar = new cliProgress.SingleBar(
    {
      format: `${label} [{bar}] {percentage}% | {doneMiB}/{totalMiB} MiB | {rate} MiB/s | ETA {eta_formatted}`,
      stream: process.stderr,
      hideCursor: true,
      etaBuffer: 50,
      fps: 5,
    },
    cliProgress.Presets.shades_classic,
  );
  let started = false;
  return {
    update(done, total) {
      const payload = {
        doneMiB: mib(done),
        totalMiB: mib(total),
        rate: mib(done / Math.max(1e-3, (Date.now() - t0) / 1000)),
      };
      if (!started) {
        started = true;
        bar.start(Math.max(1, total), done, payload);
      } else bar.update(done, payload);
    },
    stop() {
      if (started) bar.stop();
    },
  };
}
