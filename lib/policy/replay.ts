/**
 * What the client said before a milter joined, kept so it can be told
 * again: CONNECT and HELO to a milter opened late (message conditions, or
 * reopened after a failure with failure_scope = message), and MAIL and the
 * recipients accepted so far to a rule milter joining at a later RCPT. Each
 * step carries the macros it had then. The chain runs the steps like any
 * other (same verdict and failure handling); this module decides only what
 * is replayed, in which order, and when a replay stops.
 */
import type { ConnectAddress } from '../protocol/commands'
import type { MacroLookup } from '../session/macros'
import type { MilterSession } from '../session/session'
import type { Verdict } from '../session/types'
import type { Outcome } from './smtp-replies'

/** One step to replay: its stage and the call that makes it. */
export interface ReplayStep {
  stage: 'connect' | 'helo' | 'mail' | 'rcpt'
  run: (s: MilterSession) => Promise<Verdict>
  /**
   * Whether a refusal here ends the replay: true for CONNECT, HELO and MAIL;
   * false for a recipient already accepted (union policy), which the milter
   * learns of but can no longer refuse.
   */
  decides: boolean
}

/** The steps of the connection and of the current message, as the client sent them. */
export class Replay {
  private connectStep: ReplayStep | undefined
  private heloStep: ReplayStep | undefined
  private mailStep: ReplayStep | undefined
  private rcptSteps: ReplayStep[] = []

  /** CONNECT, kept for the connection. */
  connect(hostname: string, addr: ConnectAddress, macros: MacroLookup | undefined): void {
    this.connectStep = {
      stage: 'connect',
      run: (s) => s.connect(hostname, addr, macros),
      decides: true,
    }
  }

  /** HELO/EHLO, kept for the connection (the last one given). */
  helo(helo: string, macros: MacroLookup | undefined): void {
    this.heloStep = { stage: 'helo', run: (s) => s.helo(helo, macros), decides: true }
  }

  /** MAIL, kept for the current message. */
  mail(args: readonly string[], macros: MacroLookup | undefined): void {
    this.mailStep = { stage: 'mail', run: (s) => s.mail(args, macros), decides: true }
  }

  /** A recipient the chain accepted (continue or discard), kept for the current message. */
  rcpt(args: readonly string[], macros: MacroLookup | undefined): void {
    this.rcptSteps.push({ stage: 'rcpt', run: (s) => s.rcpt(args, macros), decides: false })
  }

  /** A new message: MAIL and the recipients are forgotten, CONNECT and HELO kept. */
  newMessage(): void {
    this.mailStep = undefined
    this.rcptSteps = []
  }

  /** CONNECT then HELO, for a milter opened after them. */
  get client(): ReplayStep[] {
    return [this.connectStep, this.heloStep].filter((s) => s !== undefined)
  }

  /** MAIL then every recipient accepted so far, for a rule milter joining the message. */
  get message(): ReplayStep[] {
    return [...(this.mailStep ? [this.mailStep] : []), ...this.rcptSteps]
  }
}

/**
 * Runs replay steps in order through `ask` (the chain's dispatch of one
 * step): the first refusal of a deciding step ends the replay and is its
 * outcome; continue when none refused.
 */
export async function replaySteps(
  steps: readonly ReplayStep[],
  ask: (step: ReplayStep) => Promise<Outcome>,
): Promise<Outcome> {
  for (const step of steps) {
    const o = await ask(step)
    if (step.decides && o.action !== 'continue') return o
  }
  return { action: 'continue' }
}
