/** Worker thread body (bench/fake.ts): a CONTINUE fake milter; posts its port, stops on any message. */
import { parentPort } from 'node:worker_threads'

import { FakeMilter } from '../test/helpers/fake-milter'

async function main(): Promise<void> {
  const port = parentPort
  if (!port) return
  const fake = await FakeMilter.start(undefined, { record: false })
  port.postMessage({ port: fake.port })
  port.once('message', () => {
    void fake.close().then(() => port.close())
  })
}

void main()
