/**
 * Per-milter debug lines on one SMTP connection (`debug` in milter.ini),
 * at INFO so an operator sees them without Haraka's global DEBUG:
 *
 *   1: one line per step: `milter debug NAME (ENDPOINT) STAGE: VERDICT N ms`
 *   2: also every packet both ways: `milter trace NAME > SMFIC_MAIL args=[...]`
 *      (the wording of `haraka-milter check --trace`; bodies: first 64 bytes)
 *
 * The level is looked up when a line could be written, in the configuration
 * in force, so a reload switches it for open connections too; below the
 * level nothing is built.
 */
import type { DebugLevel } from '../config'
import type { Step, StepResult } from '../policy/chain'
import { describePacket, packetText } from '../debug/packet-trace'
import type { Frame } from '../protocol/frame'
import { formatSmtpReply } from '../protocol/replycode'
import type { SessionObserver } from '../session/types'

/** Where the lines go (the connection's logger). */
export interface DebugLog {
  info(text: string): void
  warn(text: string): void
}

/** A step's result as a word or two: `continue`, `replycode 550 5.7.1 ...`, `failed CODE`. */
function resultText(r: StepResult): string {
  switch (r.kind) {
    case 'failed':
      return `failed ${r.code}`
    case 'replycode':
      return `replycode ${formatSmtpReply(r.reply).join(' / ')}`
    default:
      return r.kind
  }
}

/** `milter debug NAME (ENDPOINT) STAGE: VERDICT N ms` (no time when nothing was waited for). */
export function stepLine(s: Step): string {
  const time = s.ms === undefined ? '' : ` ${s.ms.toFixed(1)} ms`
  return `milter debug ${s.milter} (${s.endpoint}) ${s.stage}: ${resultText(s.result)}${time}`
}

/** `milter trace NAME > PACKET fields` (sent) or `< ...` (received). */
export function traceLine(milter: string, dir: 'send' | 'recv', frame: Frame): string {
  return `milter trace ${milter} ${dir === 'send' ? '>' : '<'} ${packetText(describePacket(dir, frame))}`
}

/** The debug output of the milters of one SMTP connection. */
export class ConnectionDebug {
  /** @param level the level in force for a milter now (read at every line) */
  constructor(
    private readonly level: (milter: string) => DebugLevel,
    private readonly log: DebugLog,
  ) {}

  /** What one milter's session reports to: packets (level 2) and warnings. */
  observer(milter: string): SessionObserver {
    return {
      trace: (dir, frame) => {
        if (this.level(milter) >= 2) this.log.info(traceLine(milter, dir, frame))
      },
      tracing: () => this.level(milter) >= 2,
      warn: (message) => this.log.warn(message),
    }
  }

  /** One step's line (level 1 and up). */
  step(s: Step): void {
    if (this.level(s.milter) >= 1) this.log.info(stepLine(s))
  }
}
